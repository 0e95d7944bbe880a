"""The trainer as a Ray actor, and a driver-side proxy with the :class:`~agentrl.train.base.Trainer` API.

:class:`RayTrainerActor` builds the configured trainer (``--trainer torch`` or ``megatron``, as
:func:`agentrl.components.build_trainer` does) inside its own process, seeded like the
single-process run. :class:`RayTrainer` forwards every call (``compute_logprobs``,
``train_step``, ``save``...) and blocks until it returns; the training loop runs these calls on a
worker thread, so its event loop keeps serving episodes meanwhile.

Weights for the engines: :meth:`RayTrainer.weights` returns a Ray object reference to a state
dict of HF-named CPU tensors, made once per sync and read by every engine actor from the object
store (:class:`~agentrl.cluster.EnginePool` keeps the reference for engines restarted later).
On GPUs the faster path is a collective broadcast from the trainer's GPU to the engines' GPUs
(:mod:`agentrl.cluster.weight_broadcast`, NCCL).

Checkpoints (``save``/``load``/``export_hf``) are written by the actor: on several nodes the
``--save`` folder must be on storage every node sees.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


class RayTrainerActor:
    """Runs inside a Ray worker: the run's trainer."""

    def __init__(self, cfg: Any, num_threads: int | None = None) -> None:
        import dataclasses

        import torch

        from agentrl.components import build_trainer, seed_everything

        if num_threads:
            torch.set_num_threads(num_threads)
        seed_everything(cfg.seed)
        # Ray shows the actor only its own GPUs (as cuda:0...): let the trainer pick, CPU when there are none
        self.trainer = build_trainer(dataclasses.replace(cfg, device=None))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.trainer, method)(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """HF-named weights as contiguous CPU tensors (the object the engines load)."""
        return {name: t.detach().to("cpu").contiguous() for name, t in self.trainer.weights()}

    def device(self) -> str:
        return str(self.trainer.device)

    # --- weight broadcast (agentrl.cluster.weight_broadcast) ---
    def rendezvous(self) -> tuple[str, int]:
        from agentrl.cluster.weight_broadcast import rendezvous

        return rendezvous()

    def join_broadcast(self, address: str, port: int, rank: int, world_size: int, backend: str) -> None:
        from agentrl.cluster.weight_broadcast import BroadcastGroup

        self.group = BroadcastGroup(address, port, rank, world_size, backend)

    def broadcast_meta(self) -> list:
        from agentrl.cluster.weight_broadcast import weights_meta

        return weights_meta(self.trainer.weights())

    def send_broadcast(self) -> int:
        from agentrl.cluster.weight_broadcast import send_weights

        return send_weights(self.group, self.trainer.weights())

    def where(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.trainer.device)}


class RayTrainer:
    """Driver-side proxy of a :class:`RayTrainerActor` with the ``Trainer`` methods the loop uses."""

    def __init__(self, actor: Any, tokenizer: Any, *, weight_sync: str = "object_store") -> None:
        if weight_sync not in ("object_store", "nccl", "gloo"):
            raise ValueError(f"weight_sync must be object_store, nccl or gloo; got {weight_sync!r}")
        self.actor = actor
        self.tokenizer = tokenizer
        self.weight_sync = weight_sync
        self.broadcast_state: dict[str, Any] = {}
        """Group members and tensor list of the broadcast path (see weight_broadcast)."""
        self.device = None
        """The trainer's device lives in the actor; the driver binds none."""

    @classmethod
    def spawn(cls, cfg: Any, *, options: dict[str, Any] | None = None, num_threads: int | None = None,
              weight_sync: str = "object_store") -> "RayTrainer":
        import ray

        from agentrl.models import load_tokenizer

        remote = ray.remote(max_restarts=0)(RayTrainerActor)
        actor = remote.options(**(options or {})).remote(cfg, num_threads)
        return cls(actor, load_tokenizer(cfg.model_path), weight_sync=weight_sync)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        return ray.get(self.actor.call.remote(method, *args, **kwargs))

    def compute_logprobs(self, batch: Any) -> Any:
        return self._call("compute_logprobs", batch)

    def compute_ref_logprobs(self, batch: Any) -> Any:
        return self._call("compute_ref_logprobs", batch)

    def compute_values(self, batch: Any) -> Any:
        return self._call("compute_values", batch)

    def needs_old_logprobs(self, num_steps: int) -> bool:
        return self._call("needs_old_logprobs", num_steps)

    def train_step(self, batch: Any, num_steps: int = 1) -> dict[str, float]:
        return self._call("train_step", batch, num_steps=num_steps)

    def weights(self) -> Any:
        """A Ray object reference to the HF-named CPU state dict (see the module doc), or with
        ``weight_sync`` nccl/gloo a :class:`~agentrl.cluster.weight_broadcast.BroadcastWeights`."""
        if self.weight_sync != "object_store":
            from agentrl.cluster.weight_broadcast import BroadcastWeights

            return BroadcastWeights(self, self.weight_sync)
        return self.actor.state_dict.remote()

    def save(self, path: Any) -> None:
        self._call("save", str(path))

    def load(self, path: Any) -> None:
        self._call("load", str(path))

    def export_hf(self, path: Any) -> None:
        self._call("export_hf", str(path))

    def where(self) -> dict[str, Any]:
        import ray

        return ray.get(self.actor.where.remote())

    def close(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
