"""One metrics channel: namespaced keys (``rollout/``, ``train/``, ``eval/``, ``perf/``) go to a
JSONL file, TensorBoard, and Weights & Biases when asked.

Example::

    >>> import tempfile
    >>> log = MetricsLogger(tempfile.mkdtemp(), tensorboard=False)
    >>> log.log({"rollout/reward_mean": 0.5}, step=1)
    >>> log.history[-1]["rollout/reward_mean"]
    0.5
    >>> log.close()

Each row is one line, appended whole: a write that fails (a full disk) takes its partial line back, so the
file holds only whole rows. A resumed run (``resume_at``: the rollout its checkpoint was saved after) keeps
the rows up to that rollout and drops the later ones, which the resumed run logs again; a line that is not
a row (cut off by a copy) is dropped with a warning. Values that are not finite are written (and read
back) as ``null``, so the file stays strict JSON and plots skip them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from agentrl.utils.files import write_text_atomically

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 run_config: dict[str, Any] | None = None, resume_at: int | None = None):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if resume_at is not None and self.path.exists():
            self.history = self._resume(resume_at)
        elif self.path.exists():
            self.path.unlink()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to %s only", self.path)
        self._wandb = None
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, config=run_config or {}, dir=str(self.dir),
                                     resume="allow")

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, "time": time.time(), **{k: _num(v) for k, v in metrics.items()}}
        self._append((json.dumps(row) + "\n").encode())
        self.history.append(row)
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The rollouts where ``key`` was logged with a finite number, and its values there."""
        pts = [(r["step"], r[key]) for r in self.history if _finite(r.get(key))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def _append(self, line: bytes) -> None:
        """Append ``line`` whole or not at all (a failed write is cut back off)."""
        assert self._fd is not None, "log() after close()"
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            with contextlib.suppress(OSError):  # the disk that refused the line may refuse this too
                os.ftruncate(self._fd, size)
            e.filename = e.filename or str(self.path)
            raise

    def _resume(self, resume_at: int) -> list[dict[str, Any]]:
        """The rows up to rollout ``resume_at``; the file is rewritten to hold just those."""
        rows, damaged, cleaned = [], 0, False
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for line in filter(str.strip, lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                damaged += 1
                continue
            rows.append({k: _num(v) for k, v in row.items()})
            cleaned = cleaned or rows[-1] != row  # a NaN or Infinity written by something else: null
        kept = [r for r in rows if r["step"] <= resume_at]
        if damaged:
            log.warning("%s: dropped %d line(s) that are not whole rows", self.path, damaged)
        if len(kept) < len(rows):
            log.info("%s: dropped %d row(s) logged after rollout %d (after the checkpoint this run resumes from)",
                     self.path, len(rows) - len(kept), resume_at)
        if damaged or cleaned or len(kept) < len(rows):
            write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
