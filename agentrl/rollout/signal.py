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
  (``signal/warned`` is 1 on that rollout).

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

TRY = (
    "a supervised warm start on demonstrations (--sft-data oracle, or a JSONL file of conversations), shaped "
    "rewards (the environment's shaping= weights, docs/training.md), an easier start (--curriculum-levels), more "
    "episodes per prompt (--n-samples-per-prompt) or a higher --rollout-temperature; `agentrl check-env --signal ID` "
    "tells in a few rollouts whether the model earns unequal rewards at all"
)


@dataclass
class SignalConfig:
    """Learning-signal guard: a warning when rollouts give GRPO nothing to learn from."""

    FLAGS: ClassVar[dict[str, str]] = {"--signal-guard-rollouts": "rollouts", "--signal-guard-fraction": "fraction"}

    rollouts: int = 5
    """Warn once when this many rollouts in a row had nearly every group's rewards equal (0: never warn)."""
    fraction: float = 0.9
    """A rollout counts as flat when at least this fraction of its groups had equal rewards."""

    def problems(self) -> list[str]:
        out = []
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


class SignalGuard:
    """Counts flat rollouts and warns once (module doc); its state goes into checkpoints."""

    def __init__(self, config: SignalConfig) -> None:
        self.config = config
        self.flat = 0
        self.warned = False

    def observe(self, groups: Sequence[Group], truncated: float | None = None) -> dict[str, float]:
        """This rollout's signal metrics; ``truncated`` (the fraction of truncated episodes) goes into the
        warning."""
        metrics = group_signal(groups)
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

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.flat, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flat, self.warned = int(state.get("flat", 0)), bool(state.get("warned", False))
