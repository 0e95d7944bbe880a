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


# -- SGLang's in-memory weight update: /init_weights_update_group + /update_weights_from_distributed --------
# The trainer (rank 0) and every server (ranks rank_offset..) join a process group made the way SGLang makes it
# (``init_custom_process_group`` in sglang/srt/utils: a ``tcp://`` rendezvous, a ``PrefixStore`` named after the
# group, torch's process-group helper), so a real SGLang server and ``agentrl serve`` join the same group. Each
# bucket of weights is one ``/update_weights_from_distributed`` request (``names``, ``dtypes``, ``shapes``) answered
# after the server has received the tensors that follow it, broadcast from rank 0 in that order.
def init_update_group(address: str, port: int, rank: int, world_size: int, group_name: str = "weight_update_group",
                      backend: str = "nccl", timeout_s: float = 600.0) -> Any:
    """Join the weight-update group ``group_name`` as ``rank`` (blocks until all ``world_size`` ranks joined)."""
    import inspect

    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(f"tcp://{address}:{port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    options = "backend_options" if "backend_options" in inspect.signature(_new_process_group_helper).parameters \
        else "pg_options"
    pg, _ = _new_process_group_helper(world_size, rank, [], Backend(backend), store,
                                      group_name=group_name, timeout=timeout, **{options: None})  # type: ignore[arg-type]
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def destroy_update_group(pg: Any) -> None:
    import torch.distributed as dist

    dist.destroy_process_group(pg)


def receive_bucket(pg: Any, names: list[str], dtypes: list[str], shapes: list[list[int]], device: Any) -> dict[str, Any]:
    """A server's side of one ``/update_weights_from_distributed``: the tensors rank 0 broadcasts, in order."""
    import torch
    import torch.distributed as dist

    out = {}
    for name, dtype, shape in zip(names, dtypes, shapes):
        buf = torch.empty(shape, dtype=getattr(torch, dtype.removeprefix("torch.")), device=device)
        dist.broadcast(buf, src=0, group=pg)
        out[name] = buf
    return out


def buckets(named_tensors: Any, max_bytes: int) -> Any:
    """``[(name, tensor)]`` lists of at most ``max_bytes`` (a larger tensor is a bucket of its own).

    Example::

        >>> import torch
        >>> ts = [("a", torch.zeros(4)), ("b", torch.zeros(4)), ("c", torch.zeros(8))]
        >>> [[n for n, _ in b] for b in buckets(ts, max_bytes=32)]
        [['a', 'b'], ['c']]
    """
    bucket: list[tuple[str, Any]] = []
    size = 0
    for name, t in named_tensors:
        n = t.numel() * t.element_size()
        if bucket and size + n > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += n
    if bucket:
        yield bucket


def push_to_servers(named_tensors: Any, urls: list[str], pg: Any, *, group_name: str = "weight_update_group",
                    bucket_bytes: int = 512 * 1024**2, weight_version: str | None = None,
                    timeout_s: float = 600.0) -> dict[str, float]:
    """Rank 0: send ``named_tensors`` (HF names, full tensors) to the servers at ``urls`` bucket by bucket; only
    one bucket is held at a time. Returns ``{"seconds", "bytes", "buckets"}``."""
    import concurrent.futures as cf
    import time

    import httpx
    import torch.distributed as dist

    start, sent, count = time.perf_counter(), 0, 0
    with httpx.Client(timeout=timeout_s) as client, cf.ThreadPoolExecutor(max(len(urls), 1)) as pool:
        for bucket in buckets(named_tensors, bucket_bytes):
            body = {"names": [n for n, _ in bucket], "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                    "shapes": [list(t.shape) for _, t in bucket], "group_name": group_name, "flush_cache": True,
                    "weight_version": weight_version}
            answers = [pool.submit(client.post, f"{u.rstrip('/')}/update_weights_from_distributed", json=body)
                       for u in urls]
            for _, t in bucket:
                t = t.detach().contiguous()
                dist.broadcast(t if pg_backend(pg) != "gloo" else t.cpu(), src=0, group=pg)
                sent += t.numel() * t.element_size()
            for url, answer in zip(urls, answers):
                reply = answer.result()
                if reply.status_code != 200 or not reply.json().get("success", False):
                    raise RuntimeError(f"{url}/update_weights_from_distributed failed: {reply.text[:300]}")
            count += 1
    return {"seconds": time.perf_counter() - start, "bytes": float(sent), "buckets": float(count)}


def pg_backend(pg: Any) -> str:
    import torch.distributed as dist

    return str(dist.get_backend(pg))
