"""Weights from the trainer to the engine.

* engines in this process (the embedded engine, an engine pool, Ray engine proxies) take the
  trainer's weights as :meth:`~agentrl.engine.base.Engine.update_weights` accepts them;
* engines in other processes (:class:`~agentrl.engine.base.LoadsWeightsFromDisk`: SGLang servers,
  ``agentrl serve``) load an HF folder the trainer writes (``/update_weights_from_disk``); the
  folder of the previous version is removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agentrl.engine.base import Engine, LoadsWeightsFromDisk


async def sync_weights(engine: Engine, trainer: Any, *, staging_dir: str | Path | None = None,
                       version: int | None = None) -> int:
    """Push the trainer's current weights to ``engine``; return the engine's new weight version
    (``version`` when given, else the engine's previous version + 1)."""
    if not isinstance(engine, LoadsWeightsFromDisk):  # in-process engines take the tensors themselves
        return await engine.update_weights(trainer.weights(), version=version)
    if staging_dir is None:
        raise ValueError("an out-of-process engine loads weights from disk: give staging_dir")
    staging = Path(staging_dir)
    version = engine.weight_version + 1 if version is None else version
    target = staging / f"weights_v{version}"
    try:
        trainer.export_hf(target)
    except BaseException:  # a full disk: no half-written folder left behind to fill it further
        shutil.rmtree(target, ignore_errors=True)
        raise
    new_version = await engine.update_weights_from_disk(str(target), version=version)
    for old in staging.glob("weights_v*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return new_version
