"""The advantage estimator a run uses, and its parameters (imported without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class AlgoConfig:
    """Algorithm: the advantage estimator."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--advantage-estimator": "advantage_estimator", "--normalize-advantage-std": "normalize_advantage_std",
        "--turn-baseline": "turn_baseline", "--gamma": "gamma", "--lambd": "lambd",
    }

    advantage_estimator: str = "grpo"
    """grpo | dr_grpo | rloo | reinforce_plus_plus | reinforce_plus_plus_baseline | gae | gigpo
    (agentrl.algo.ADVANTAGE_ESTIMATORS). gigpo adds turn-level credit from states the episodes of a group share
    (the environment names them, info["state_key"]; docs/training.md)."""
    normalize_advantage_std: bool = True
    """Divide group-relative advantages by the group std (off: Dr. GRPO)."""
    turn_baseline: bool = False
    """grpo, dr_grpo, rloo: each turn's return (its reward and the later ones) against the group's returns at the
    same turn, instead of the episode reward against the group's (unbiased; docs/training.md)."""
    gamma: float = 1.0
    """Discount: per token for gae and reinforce_plus_plus, per turn for gigpo (the paper uses 0.95) and
    --turn-baseline."""
    lambd: float = 1.0
    """GAE lambda."""

    @property
    def group_relative(self) -> bool:
        """Whether the estimator compares the episodes of one prompt (then a group needs two or more)."""
        return self.advantage_estimator in ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline", "gigpo")

    def problems(self) -> list[str]:
        from agentrl.algo.registry import TURN_BASELINE_ESTIMATORS, get_advantage_estimator

        out = []
        try:
            get_advantage_estimator(self.advantage_estimator)
        except ValueError as e:
            out.append(f"--advantage-estimator: {e}")
        if self.turn_baseline and self.advantage_estimator not in TURN_BASELINE_ESTIMATORS:
            out.append(f"--turn-baseline is for {', '.join(sorted(TURN_BASELINE_ESTIMATORS))}; "
                       f"--advantage-estimator {self.advantage_estimator} does not take it")
        for flag, value in (("--gamma", self.gamma), ("--lambd", self.lambd)):
            if not 0 <= value <= 1:
                out.append(f"{flag} must be in [0, 1]; got {value}")
        return out
