"""Weights from the trainer actor to the engine actors by a collective broadcast.

The object-store path (the default) copies the state dict to host memory once and every engine
reads it from there: simple, works on CPUs and across nodes, but costs two host copies per sync.
On GPUs the production path is a broadcast from the trainer's GPU straight into the engines'
GPUs over NCCL (NVLink / InfiniBand), as slime and verl do: ``--ray-weight-sync nccl``.

How it works: the trainer (rank 0) and the engines (ranks 1..n) form a process group of their
own (a ``TCPStore`` at the trainer's address and a fresh port, then ``ProcessGroupNCCL`` or
``ProcessGroupGloo`` built directly on it, so it never touches a trainer's own
``torch.distributed`` world). Each sync, the engines allocate receive buffers from the trainer's
list of names, dtypes and shapes, every rank broadcasts the tensors in that order from rank 0,
and each engine loads them (``EmbeddedEngine.update_weights``).

When the set of engines changes (an engine died and was restarted) the group is formed again
at the next full sync; a single restarted engine catching up between syncs loads the weights
from the object store instead (so one restart never re-forms the group).

Tested on the CPU with gloo (``tests/cluster/test_ray.py``); the NCCL variant is the same code
with ``backend="nccl"`` and is not exercised on the CPU-only test machines.
"""

from __future__ import annotations

import datetime
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


class BroadcastGroup:
    """One rank's membership in a weight-broadcast group (lives in an actor)."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, backend: str = "nccl",
                 timeout_s: float = 600.0) -> None:
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        tcp = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout)
        store = dist.PrefixStore(f"agentrl-weights-{port}", tcp)
        self.pg: Any  # a gloo or NCCL process group of its own (torch's stubs declare no broadcast on it)
        if backend == "gloo":
            self.pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        elif backend == "nccl":
            nccl = getattr(dist, "ProcessGroupNCCL", None)
            if nccl is None:
                raise RuntimeError("--ray-weight-sync nccl needs a CUDA build of torch with NCCL")
            options = nccl.Options()
            options._timeout = timeout
            self.pg = nccl(store, rank, world_size, options)
        else:
            raise ValueError(f"backend must be 'nccl' or 'gloo'; got {backend!r}")
        self.rank, self.world_size, self.backend = rank, world_size, backend

    def broadcast(self, tensor: Any) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        self.pg.broadcast([tensor], opts).wait()


def weights_meta(named_tensors: Any) -> list[tuple[str, str, list[int]]]:
    """``[(name, dtype, shape)]`` in broadcast order."""
    return [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in named_tensors]


def send_weights(group: BroadcastGroup, named_tensors: Any) -> int:
    """Rank 0: broadcast every tensor (in the order of :func:`weights_meta`); return the count."""
    n = 0
    for _, t in named_tensors:
        t = t.detach().contiguous()
        if group.backend == "gloo":
            t = t.cpu()
        group.broadcast(t)
        n += 1
    return n


def receive_weights(group: BroadcastGroup, meta: list[tuple[str, str, list[int]]], device: Any) -> dict[str, Any]:
    """Ranks > 0: receive the tensors ``meta`` names (on ``device``; gloo goes through the CPU)."""
    import torch

    out = {}
    for name, dtype, shape in meta:
        buf = torch.empty(shape, dtype=getattr(torch, dtype), device="cpu" if group.backend == "gloo" else device)
        group.broadcast(buf)
        out[name] = buf
    return out


def rendezvous() -> tuple[str, int]:
    """This node's address and a free port on it (where rank 0 opens the group's store)."""
    import ray

    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class BroadcastWeights:
    """What ``RayTrainer.weights()`` returns with ``--ray-weight-sync nccl|gloo``: the
    :class:`~agentrl.cluster.EnginePool` hands it every engine at once (``push_to``)."""

    def __init__(self, trainer: Any, backend: str) -> None:
        self.trainer = trainer
        self.backend = backend

    async def push_to(self, engines: list[Any], version: int) -> None:
        """Broadcast to ``engines`` (re-forming the group when they changed); a lone engine that
        is not in the group (a restart) loads from the object store instead."""
        state = self.trainer.broadcast_state
        members = state.get("members", [])
        if [id(e) for e in engines] != [id(e) for e in members]:
            if len(engines) == 1 and members:
                await engines[0].update_weights(self.trainer.actor.state_dict.remote(), version=version)
                return
            await self._form(engines)
        meta = state["meta"]
        sends = self.trainer.actor.send_broadcast.remote()
        await _gather(*(e.receive_broadcast(meta, version) for e in engines))
        await sends

    async def _form(self, engines: list[Any]) -> None:
        state = self.trainer.broadcast_state
        address, port = await self.trainer.actor.rendezvous.remote()  # rank 0's node and a free port there
        world = len(engines) + 1
        joins = [self.trainer.actor.join_broadcast.remote(address, port, 0, world, self.backend)]
        joins += [e.join_broadcast(address, port, i + 1, world, self.backend) for i, e in enumerate(engines)]
        await _gather(*joins)
        state["members"] = list(engines)
        state["meta"] = await self.trainer.actor.broadcast_meta.remote()
        log.info("weight broadcast group formed (%s): trainer + %d engine(s) at %s:%d", self.backend, len(engines),
                 address, port)


async def _gather(*aws: Any) -> list[Any]:
    import asyncio

    return await asyncio.gather(*aws)
