"""Checkpoints: the model in Hugging Face format plus everything needed to resume exactly.

Layout of ``--save DIR``::

    DIR/rollout_00004/model/        HF model folder (transformers / SGLang can load it)
    DIR/rollout_00004/trainer.pt    optimiser, scheduler, RNG states (the trainer's)
    DIR/rollout_00004/state.json    next rollout, data position, weight version, config
    DIR/latest                      name of the newest complete checkpoint

A checkpoint is written to a temporary folder and renamed when complete, so ``latest`` never
points at half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class CheckpointConfig:
    """Checkpoints: the model in HF format plus the full training state."""

    FLAGS: ClassVar[dict[str, str]] = {"--save": "save", "--save-interval": "save_interval", "--load": "load"}

    save: str | None = None
    """Folder for checkpoints (HF model + full training state)."""
    save_interval: int | None = None
    """Save every this many rollouts (and at the end)."""
    load: str | None = None
    """Resume from a checkpoint folder (or the latest one inside a --save folder)."""

    def problems(self) -> list[str]:
        out = []
        if self.save_interval is not None and self.save_interval < 1:
            out.append(f"--save-interval must be >= 1; got {self.save_interval}")
        if self.save_interval and not self.save:
            out.append("--save-interval needs --save DIR")
        if self.load is not None and not Path(self.load).expanduser().exists():
            out.append(f"--load {self.load}: no such checkpoint folder")
        elif self.load is not None:
            try:
                find_checkpoint(self.load)
            except FileNotFoundError as e:  # a folder, but neither a checkpoint nor one with a 'latest'
                out.append(f"--load: {e}")
        return out


def save_checkpoint(root: str | Path, rollout_id: int, trainer: Any, state: dict[str, Any]) -> Path:
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"rollout_{rollout_id:05d}"
    tmp = root / f".tmp_rollout_{rollout_id:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainer.save(tmp)
    (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (root / "latest").write_text(final.name)
    return final


def delete_checkpoints(root: str | Path) -> int:
    """Delete the checkpoints in ``root`` (``rollout_*`` folders, unfinished ones, ``latest``); other files
    stay. Returns how many checkpoints were deleted."""
    root = Path(root).expanduser()
    folders = [p for p in (*root.glob("rollout_[0-9]*"), *root.glob(".tmp_rollout_[0-9]*")) if p.is_dir()]
    for folder in folders:
        shutil.rmtree(folder)
    (root / "latest").unlink(missing_ok=True)
    return len(folders)


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the one ``path/latest`` names."""
    path = Path(path).expanduser()
    if (path / "state.json").exists():
        return path
    latest = path / "latest"
    if latest.exists():
        ckpt = path / latest.read_text().strip()
        if (ckpt / "state.json").exists():
            return ckpt
    raise FileNotFoundError(f"{path} holds no checkpoint (no state.json and no 'latest' file)")


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "state.json").read_text())
