"""The learning-signal guard: does a rollout give the policy anything to learn from?

Group-relative estimators (GRPO, RLOO, Dr. GRPO) compare the episodes of a prompt: a group whose
rewards are all equal gets advantage 0 on every token. When nearly every group of rollout after
rollout is like that (a small model that never calls the tool, never reaches the goal, never
answers in the format), the run changes nothing while it looks busy. The guard

* adds per-rollout metrics over the groups that finished (episodes that failed left out):
  ``signal/equal_reward_groups`` (the fraction whose rewards are all equal) and
  ``signal/all_zero_groups`` (the fraction whose rewards are all 0), and ``signal/flat_rollouts``, how
  many rollouts in a row had at least ``--signal-guard-fraction`` of their groups equal;
* warns once, with what to try, when that count reaches ``--signal-guard-rollouts``
  (``signal/warned`` is 1 on that rollout);
* counts the rollouts in a row whose every episode failed (``signal/failed_rollouts``: a reward function,
  environment or tool that raises on every episode) and stops the run, quoting an error, when that count
  reaches ``--stop-after-failed-rollouts`` (:class:`RolloutsFailed`).

With a batch whose every advantage is 0 the loop also skips the training step and the weight sync
(``train/skipped_no_signal``, see :func:`agentrl.loop.prepare_batch`).

Example::

    >>> from agentrl.types import Group, Sample
    >>> flat = [Group(i, [Sample(group_id=i, reward=0.0), Sample(group_id=i, reward=0.0)]) for i in range(2)]
    >>> guard = SignalGuard(SignalConfig(rollouts=2))
    >>> [guard.observe(flat)["signal/flat_rollouts"] for _ in range(3)], guard.warned
    ([1.0, 2.0, 3.0], True)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from agentrl.types import Group

log = logging.getLogger(__name__)

FIXES = (
    "a supervised warm start on demonstrations (--sft-data oracle, or a JSONL file of conversations), shaped "
    "rewards (the environment's shaping= weights, docs/training.md), an easier start (--curriculum-levels), more "
    "episodes per prompt (--n-samples-per-prompt) or a higher --rollout-temperature"
)
TRY = FIXES + "; `agentrl check-env --signal ID` tells in a few rollouts whether the model earns unequal rewards at all"
"""What to try, in the guard's warning."""


@dataclass
class SignalConfig:
    """Learning-signal guard: a warning when rollouts give GRPO nothing to learn from."""

    FLAGS: ClassVar[dict[str, str]] = {"--signal-guard-rollouts": "rollouts", "--signal-guard-fraction": "fraction",
                                       "--stop-after-failed-rollouts": "failed_rollouts"}

    rollouts: int = 5
    """Warn once when this many rollouts in a row had nearly every group's rewards equal (0: never warn)."""
    fraction: float = 0.9
    """A rollout counts as flat when at least this fraction of its groups had equal rewards."""
    failed_rollouts: int = 3
    """Stop the run, with the first error, when this many rollouts in a row had every episode fail (a reward
    function, environment or tool that raises each time; 0: never stop)."""

    def problems(self) -> list[str]:
        out = []
        if self.failed_rollouts is None or self.failed_rollouts < 0:
            out.append(f"--stop-after-failed-rollouts must be >= 0; got {self.failed_rollouts}")
        if self.rollouts is None or self.rollouts < 0:
            out.append(f"--signal-guard-rollouts must be >= 0; got {self.rollouts}")
        if self.fraction is None or not 0 < self.fraction <= 1:
            out.append(f"--signal-guard-fraction must be in (0, 1]; got {self.fraction}")
        return out


def group_signal(groups: Sequence[Group], tol: float = 1e-6) -> dict[str, float]:
    """``signal/equal_reward_groups`` and ``signal/all_zero_groups``: fractions of ``groups`` (their
    trainable episodes; groups with none left out)."""
    rewards = [[s.reward for s in g.samples if s.trainable] for g in groups]
    rewards = [r for r in rewards if r]
    if not rewards:
        return {}
    equal = sum(1 for r in rewards if max(r) - min(r) <= tol)
    zero = sum(1 for r in rewards if max(abs(x) for x in r) <= tol)
    return {"signal/equal_reward_groups": equal / len(rewards), "signal/all_zero_groups": zero / len(rewards)}


class RolloutsFailed(RuntimeError):
    """Every episode of ``--stop-after-failed-rollouts`` rollouts in a row failed; the message quotes the last
    rollout's first error."""


class SignalGuard:
    """Counts flat rollouts and warns once, counts failed rollouts and stops the run (module doc); its state goes
    into checkpoints."""

    def __init__(self, config: SignalConfig) -> None:
        self.config = config
        self.flat = 0
        self.warned = False
        self.failed = 0
        self.last_error: str | None = None

    def observe(self, groups: Sequence[Group], truncated: float | None = None) -> dict[str, float]:
        """This rollout's signal metrics; ``truncated`` (the fraction of truncated episodes) goes into the
        warning."""
        metrics = group_signal(groups)
        self._count_failures(groups)
        metrics["signal/failed_rollouts"] = float(self.failed)
        flat = metrics.get("signal/equal_reward_groups", 1.0) >= self.config.fraction
        self.flat = self.flat + 1 if flat else 0
        metrics["signal/flat_rollouts"] = float(self.flat)
        if self.config.rollouts and self.flat >= self.config.rollouts and not self.warned:
            self.warned = True
            metrics["signal/warned"] = 1.0
            cut = f"; {truncated:.0%} of the last rollout's episodes were truncated" if truncated else ""
            log.warning("no learning signal: in %d rollouts in a row at least %.0f%% of the groups had equal rewards "
                        "(%.0f%% of the last rollout's all 0)%s, so their advantages are 0 and the policy does not "
                        "change. Try %s.", self.flat, 100 * self.config.fraction,
                        100 * metrics.get("signal/all_zero_groups", 0.0), cut, TRY)
        return metrics

    def _count_failures(self, groups: Sequence[Group]) -> None:
        samples = [s for g in groups for s in g.samples]
        if not samples or any(s.status != "failed" for s in samples):
            self.failed = 0
            return
        self.failed += 1
        self.last_error = samples[0].error

    def stop_if_failing(self) -> None:
        """Raise :class:`RolloutsFailed` once ``--stop-after-failed-rollouts`` rollouts in a row failed whole."""
        limit = self.config.failed_rollouts
        if limit and self.failed >= limit:
            raise RolloutsFailed(f"every episode of the last {self.failed} rollouts failed (the last one's first error: "
                                 f"{self.last_error}); stopping (--stop-after-failed-rollouts {limit}; 0: never stop)")

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.flat, "warned": self.warned, "failed": self.failed, "last_error": self.last_error}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flat, self.warned = int(state.get("flat", 0)), bool(state.get("warned", False))
        self.failed, self.last_error = int(state.get("failed", 0)), state.get("last_error")


# -- agentrl check-env --signal ---------------------------------------------------------------------------
async def check_signal(cfg: Any, rollouts: int, *, engine: Any = None, template: Any = None) -> list[dict[str, float]]:
    """``rollouts`` rollouts of the run ``cfg`` (a :class:`~agentrl.config.RunConfig`: its model, environment,
    prompts, budgets and sampling) with no training in between: each one's ``rollout/`` and ``signal/`` metrics.
    Without ``--prompt-data`` the environment draws its own tasks (rows with no prompt, seeded by their index).
    ``engine`` and ``template`` replace the embedded engine and chat template the config names (test doubles)."""
    from types import SimpleNamespace

    from agentrl.components import build_engine, build_rollout, build_template
    from agentrl.data import PromptRow, PromptSampler, load_prompts
    from agentrl.models import load_tokenizer

    rows = load_prompts(cfg.prompt_data, cfg.data).rows if cfg.prompt_data else \
        [PromptRow(index=i, prompt=None) for i in range(max(64, cfg.rollout_batch_size * rollouts))]
    sampler = PromptSampler(rows, seed=cfg.seed)
    if template is None:
        template = build_template(cfg, load_tokenizer(cfg.model_path))
    if engine is None:
        engine = build_engine(cfg, SimpleNamespace(tokenizer=template.tokenizer, device=cfg.engine.device or "cpu"))
    rollout = build_rollout(cfg, engine, template)
    out = []
    for k in range(rollouts):
        result = await rollout.generate(sampler.next_batch, cfg.rollout_batch_size, sampling_seed=cfg.seed + 7_919 * k,
                                        first_group_id=k * 10_000)
        out.append(result.metrics | group_signal(result.finished))
    return out


def signal_verdict(rows: Sequence[dict[str, float]]) -> tuple[bool, str]:
    """Whether any rollout had a group with unequal rewards, and a line saying so (with what to try if not)."""
    groups = sum(r.get("rollout/groups_finished", 0.0) for r in rows)
    unequal = sum(r.get("rollout/groups_finished", 0.0) * (1 - r.get("signal/equal_reward_groups", 1.0)) for r in rows)
    if unequal > 0:
        return True, f"signal: {unequal:.0f} of {groups:.0f} groups had unequal rewards; GRPO has something to learn from"
    return False, (f"no signal: all {groups:.0f} groups had equal rewards, so every advantage would be 0. Try {FIXES}")
