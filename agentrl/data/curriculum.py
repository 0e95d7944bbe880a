"""A curriculum: the environment's difficulty follows the training success rate.

A task the model never solves teaches it nothing, and one it always solves teaches it nothing either.
With ``--curriculum-option NAME --curriculum-levels L0 L1 ...`` every training episode gets the reset
option ``NAME = L_k`` (FrozenLake's ``map_size``, say), starting at ``L0``. After each rollout, its
success rate (the share of its finished episodes whose task reward, :func:`agentrl.env.shaping.task_reward`,
reaches 1) moves the level: up one at ``--curriculum-promote-at`` or more, down one below
``--curriculum-demote-at`` (when given). Held-out evaluation never gets the option: it measures the task
as its rows and the environment define it. The level is part of the data position in checkpoints, so
``--load`` resumes at the level the run had reached.

Metrics: ``curriculum/level`` (the index of the level the next rollout plays) and
``curriculum/success`` (the rollout's success rate).

Example::

    >>> from agentrl.data import PromptRow, PromptSampler
    >>> rows = [PromptRow(index=i, prompt=None) for i in range(4)]
    >>> c = CurriculumSampler(PromptSampler(rows), CurriculumConfig("map_size", [2, 3], promote_at=0.5))
    >>> c.next_batch(1)[0].options
    {'map_size': 2}
    >>> c.update_level(0.75)["curriculum/level"], c.next_batch(1)[0].options
    (1.0, {'map_size': 3})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class CurriculumConfig:
    """Curriculum: an environment option that follows the training success rate."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--curriculum-option": "option", "--curriculum-levels": "levels",
        "--curriculum-promote-at": "promote_at", "--curriculum-demote-at": "demote_at",
    }

    option: str | None = None
    """The reset option a curriculum sets on every training episode (e.g. map_size for FrozenLake)."""
    levels: list[Any] = field(default_factory=list)
    """The option's values from easiest to hardest; training starts at the first."""
    promote_at: float = 0.6
    """Move to the next level after a rollout whose success rate is at least this."""
    demote_at: float | None = None
    """Move back one level after a rollout whose success rate is below this (none: never)."""

    @property
    def enabled(self) -> bool:
        return self.option is not None

    def problems(self) -> list[str]:
        out = []
        if (self.option is None) != (not self.levels):
            out.append("--curriculum-option and --curriculum-levels go together: name the reset option and its "
                       "values from easiest to hardest")
        if not 0 < self.promote_at <= 1:
            out.append(f"--curriculum-promote-at must be in (0, 1]; got {self.promote_at}")
        if self.demote_at is not None and not 0 <= self.demote_at < self.promote_at:
            out.append(f"--curriculum-demote-at must be in [0, --curriculum-promote-at); got {self.demote_at}")
        return out


def _value(level: Any) -> Any:
    """A level given on the command line arrives as text: numbers become numbers."""
    if isinstance(level, str):
        for kind in (int, float):
            try:
                return kind(level)
            except ValueError:
                pass
    return level


class CurriculumSampler:
    """A prompt sampler whose rows carry the curriculum's current option (module doc)."""

    def __init__(self, sampler: Any, config: CurriculumConfig) -> None:
        self.sampler = sampler
        self.config = config
        self.levels = [_value(v) for v in config.levels]
        self.level = 0

    def next_batch(self, n: int) -> list[Any]:
        option = {self.config.option: self.levels[self.level]}
        return [dataclasses.replace(row, options={**row.options, **option}) for row in self.sampler.next_batch(n)]

    def update(self, groups: Sequence[Any]) -> dict[str, float]:
        """Move the level after a rollout of ``groups`` (their finished, non-failed episodes)."""
        from agentrl.env.shaping import task_reward

        samples = [s for g in groups for s in g.samples if s.trainable]
        if not samples:
            return {"curriculum/level": float(self.level)}
        return self.update_level(sum(task_reward(s) >= 1.0 for s in samples) / len(samples))

    def update_level(self, success: float) -> dict[str, float]:
        if success >= self.config.promote_at and self.level + 1 < len(self.levels):
            self.level += 1
        elif self.config.demote_at is not None and success < self.config.demote_at and self.level > 0:
            self.level -= 1
        return {"curriculum/level": float(self.level), "curriculum/success": success}

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "curriculum_level": self.level}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        level = int(state.get("curriculum_level", 0))
        if not 0 <= level < len(self.levels):
            raise ValueError(f"cannot resume at curriculum level {level}: --curriculum-levels has {len(self.levels)}")
        self.sampler.load_state_dict({k: v for k, v in state.items() if k != "curriculum_level"})
        self.level = level
