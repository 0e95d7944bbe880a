"""The async multi-turn rollout: one episode loop, group fan-out, filters and hooks."""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.rollout.episode import (EpisodeRequest, RolloutConfig, engine_failed, run_episode, timed_out)
    from agentrl.rollout.filters import (default_filters, drop_failed, drop_zero_variance, overlong_mask,
                                         overlong_penalty)
    from agentrl.rollout.generate import (Rollout, RolloutProgress, RolloutResult, rollout_metrics)
    from agentrl.rollout.hooks import (load_generate_fn, load_reward_fn)

MODULES = {
    ".episode": ["EpisodeRequest", "RolloutConfig", "engine_failed", "run_episode", "timed_out"],
    ".filters": ["default_filters", "drop_failed", "drop_zero_variance", "overlong_mask", "overlong_penalty"],
    ".generate": ["Rollout", "RolloutProgress", "RolloutResult", "rollout_metrics"],
    ".hooks": ["load_generate_fn", "load_reward_fn"],
}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
