"""Where a run's outputs go and what they hold (imported without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from agentrl.utils.flags import blank_path


@dataclass
class OutputConfig:
    """Outputs: metrics, plots, logs and rollout dumps."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--output-dir": "output_dir", "--overwrite": "overwrite", "--use-wandb": "use_wandb",
        "--wandb-project": "wandb_project", "--save-debug-rollout-data": "save_debug_rollout_data",
        "--dump-max-samples-per-rollout": "dump_max_samples_per_rollout",
    }

    output_dir: str = "runs/latest"
    """Folder of the run's outputs. Metrics (JSONL, TensorBoard), plots, the run summary and dumps go here."""
    overwrite: bool = False
    """Replace the earlier run in --output-dir. Its metrics, TensorBoard logs, plots, summary, dumps and the checkpoints
    in --save are deleted; without it a run is never written over: a folder that holds one is refused (--load resumes
    it)."""
    use_wandb: bool = False
    """Also log to Weights & Biases."""
    wandb_project: str = "agentrl"
    """Weights & Biases project (with --use-wandb)."""
    save_debug_rollout_data: bool = False
    """Write every rollout's episodes (messages, token ids, loss mask, engine and trainer logprobs, advantages,
    rewards, statuses, errors) and the evaluations' episodes to --output-dir/rollout_data/, one compressed file per
    rollout; open them with `agentrl view RUN_DIR` (docs/viewer.md)."""
    dump_max_samples_per_rollout: int | None = None
    """With --save-debug-rollout-data: at most this many episodes of each rollout, the first in group order (whole
    groups when a multiple of --n-samples-per-prompt; default: all)."""

    def problems(self) -> list[str]:
        out = [p for p in (blank_path("--output-dir", self.output_dir, optional=False),) if p]
        if self.dump_max_samples_per_rollout is not None and self.dump_max_samples_per_rollout < 1:
            out.append(f"--dump-max-samples-per-rollout must be >= 1; got {self.dump_max_samples_per_rollout}")
        return out
