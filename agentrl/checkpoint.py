"""Checkpoints: the model in Hugging Face format plus everything needed to resume exactly.

Layout of ``--save DIR``::

    DIR/rollout_00004/model/        HF model folder (transformers / SGLang can load it)
    DIR/rollout_00004/trainer.pt    optimiser, scheduler, RNG states (the trainer's)
    DIR/rollout_00004/state.json    next rollout, data position, weight version, config
    DIR/latest                      name of the newest complete checkpoint

A checkpoint is written to a temporary folder and renamed when complete, and ``latest`` is replaced
atomically, so a run killed while saving leaves the checkpoints it had; a save that fails (a full disk, a second
Ctrl-C) removes its unfinished folder, and a failed write is one line (:class:`CheckpointWriteError`). A ``latest`` that is missing,
empty or names no complete checkpoint (a copy that lost it) is not fatal: the newest complete
``rollout_*`` folder is used, with a warning. A checkpoint whose ``state.json`` cannot be read is
refused at start-up with one line (:class:`CheckpointError`), before any model loads.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agentrl.utils.files import write_text_atomically
from agentrl.utils.flags import blank_path

log = logging.getLogger(__name__)


class CheckpointError(FileNotFoundError):
    """A ``--load`` (or ``--model-path``) folder that holds no usable checkpoint: says which file and why."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a read-only folder): says which, why and the space
    left; its unfinished folder is removed and the checkpoints before it are kept."""


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
        out += [p for p in (blank_path("--save", self.save), blank_path("--load", self.load)) if p]
        if self.load and self.load.strip():
            out += _load_problems(self.load)
        return out


def _load_problems(load: str) -> list[str]:
    """What is wrong with ``--load`` (a folder that exists, holding a checkpoint with its state and model)."""
    if not Path(load).expanduser().exists():
        return [f"--load {load}: no such checkpoint folder"]
    try:
        ckpt = find_checkpoint(load)
        read_state(ckpt)
    except CheckpointError as e:  # a folder, but no checkpoint in it, or one whose state is unreadable
        return [f"--load: {e}"]
    if not (ckpt / "model").is_dir():
        return [f"--load: {ckpt} has no model/ folder (an incomplete checkpoint); load an earlier one"]
    return []


def save_checkpoint(root: str | Path, rollout_id: int, trainer: Any, state: dict[str, Any]) -> Path:
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"rollout_{rollout_id:05d}"
    tmp = root / f".tmp_rollout_{rollout_id:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        trainer.save(tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
    except BaseException as e:  # a full disk, a read-only folder, a second Ctrl-C: the half-written copy goes
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):
            raise
        raise _write_error(final, e) from e
    old = root / f".old_rollout_{rollout_id:05d}"
    if final.exists():  # saving the same rollout again: the old copy goes only once the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    write_text_atomically(root / "latest", final.name)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_error(final: Path, e: Exception) -> CheckpointWriteError:
    """One line for a checkpoint that could not be written; ``torch.save`` on a full disk raises a RuntimeError
    that does not say so, hence the free space."""
    try:
        free = f"; {shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    first = (str(e).splitlines() or [""])[0]
    error = CheckpointWriteError(f"{final}: the checkpoint cannot be written ({type(e).__name__}: {first}{free}); "
                                 "the earlier checkpoints are kept")
    error.errno = getattr(e, "errno", None)
    return error


def delete_checkpoints(root: str | Path) -> int:
    """Delete the checkpoints in ``root`` (``rollout_*`` folders, unfinished ones, ``latest``); other files
    stay. Returns how many checkpoints were deleted."""
    root = Path(root).expanduser()
    folders = [p for p in (*root.glob("rollout_[0-9]*"), *root.glob(".tmp_rollout_[0-9]*"),
                           *root.glob(".old_rollout_[0-9]*")) if p.is_dir()]
    for folder in folders:
        shutil.rmtree(folder)
    (root / "latest").unlink(missing_ok=True)
    return len(folders)


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the one ``path/latest`` names, else (``latest`` missing or
    broken) the newest ``rollout_*`` folder inside ``path`` that holds a ``state.json``."""
    path = Path(path).expanduser()
    if (path / "state.json").is_file():
        return path
    latest, named = path / "latest", ""
    if latest.is_file():
        try:
            named = latest.read_text(errors="replace").strip()
        except OSError:
            named = ""
        if named and "/" not in named and named not in (".", "..") and (path / named / "state.json").is_file():
            return path / named
    complete = sorted((int(m[1]), p) for p in path.glob("rollout_*")
                      if (m := re.fullmatch(r"rollout_(\d+)", p.name)) and (p / "state.json").is_file())
    if not complete:
        raise CheckpointError(f"{path} holds no checkpoint (no state.json, and no rollout_* folder with one)")
    why = f"names {named!r}, which holds no state.json" if named else "is missing or empty"
    log.warning("%s: 'latest' %s; using the newest complete checkpoint, %s", path, why, complete[-1][1].name)
    return complete[-1][1]


def last_checkpoint(save: str | Path | None) -> Path | None:
    """The newest complete checkpoint in the ``--save`` folder ``save``; None without one."""
    if not save:
        return None
    try:
        return find_checkpoint(save)
    except OSError:  # CheckpointError included: none there
        return None


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``state.json``, checked enough to resume from: a JSON object with ``next_rollout``."""
    file = checkpoint / "state.json"
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON (line {e.lineno}: {e.msg}); the checkpoint is damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("next_rollout"), int):
        raise CheckpointError(f"{file}: not a checkpoint's state (a JSON object with an integer 'next_rollout')")
    return state
