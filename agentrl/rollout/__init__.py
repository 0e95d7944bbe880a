"""The async multi-turn rollout: one episode loop, group fan-out, filters and hooks."""

from agentrl.rollout.episode import EpisodeRequest, RolloutConfig, engine_failed, run_episode
from agentrl.rollout.filters import (default_filters, drop_failed, drop_zero_variance, overlong_mask,
                                     overlong_penalty)
from agentrl.rollout.generate import Rollout, RolloutProgress, RolloutResult, rollout_metrics
from agentrl.rollout.hooks import load_generate_fn, load_reward_fn

__all__ = [
    "EpisodeRequest", "Rollout", "RolloutConfig", "RolloutProgress", "RolloutResult", "default_filters", "drop_failed",
    "drop_zero_variance", "engine_failed", "load_generate_fn", "load_reward_fn", "overlong_mask", "overlong_penalty",
    "rollout_metrics", "run_episode",
]
