"""The advantage estimator a run uses, and its parameters (imported without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class AlgoConfig:
    """Algorithm: the advantage estimator."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--advantage-estimator": "advantage_estimator", "--normalize-advantage-std": "normalize_advantage_std",
        "--gamma": "gamma", "--lambd": "lambd",
    }

    advantage_estimator: str = "grpo"
    """grpo | dr_grpo | rloo | reinforce_plus_plus | reinforce_plus_plus_baseline | gae (agentrl.algo.ADVANTAGE_ESTIMATORS)."""
    normalize_advantage_std: bool = True
    """Divide group-relative advantages by the group std (off: Dr. GRPO)."""
    gamma: float = 1.0
    """Discount of gae."""
    lambd: float = 1.0
    """GAE lambda."""

    @property
    def group_relative(self) -> bool:
        """Whether the estimator compares the episodes of one prompt (then a group needs two or more)."""
        return self.advantage_estimator in ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline")

    def problems(self) -> list[str]:
        from agentrl.algo.registry import get_advantage_estimator

        out = []
        try:
            get_advantage_estimator(self.advantage_estimator)
        except ValueError as e:
            out.append(f"--advantage-estimator: {e}")
        for flag, value in (("--gamma", self.gamma), ("--lambd", self.lambd)):
            if not 0 <= value <= 1:
                out.append(f"{flag} must be in [0, 1]; got {value}")
        return out
