"""When and how a training run evaluates its held-out sets (imported without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass
class EvalSchedule:
    """Held-out evaluation during training."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--eval-prompt-data": "eval_prompt_data", "--eval-interval": "eval_interval",
        "--n-samples-per-eval-prompt": "n_samples_per_eval_prompt", "--eval-temperature": "eval_temperature",
        "--eval-max-prompts": "eval_max_prompts",
    }

    eval_prompt_data: list[str] = field(default_factory=list)
    """Held-out sets as NAME PATH pairs (each row may name its env)."""
    eval_interval: int | None = None
    """Evaluate every this many rollouts (and before the first and after the last); 0: never (the held-out sets
    are not even loaded)."""
    n_samples_per_eval_prompt: int = 1
    """Episodes per held-out prompt (n of avg@n and of the pass@k estimator)."""
    eval_temperature: float = 0.0
    """Sampling temperature of evaluation episodes (0: greedy)."""
    eval_max_prompts: int | None = None
    """At most this many prompts of each held-out set."""

    @property
    def sets(self) -> list[tuple[str, str]]:
        """``(name, path)`` of each held-out set."""
        return list(zip(self.eval_prompt_data[::2], self.eval_prompt_data[1::2]))

    def problems(self) -> list[str]:
        out = []
        if len(self.eval_prompt_data) % 2:
            out.append(f"--eval-prompt-data takes NAME PATH pairs; got {self.eval_prompt_data}")
        else:
            for name, path in self.sets:
                if not path.startswith("hf:") and not Path(path).expanduser().exists():
                    out.append(f"--eval-prompt-data {name}: no such file {path}")
        for flag, value, low in (("--eval-interval", self.eval_interval, 0),
                                 ("--n-samples-per-eval-prompt", self.n_samples_per_eval_prompt, 1),
                                 ("--eval-max-prompts", self.eval_max_prompts, 1)):
            if value is not None and value < low:
                out.append(f"{flag} must be >= {low}; got {value}")
        if not self.eval_temperature >= 0:
            out.append(f"--eval-temperature must be >= 0; got {self.eval_temperature}")
        return out
