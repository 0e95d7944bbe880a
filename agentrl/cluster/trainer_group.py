"""The trainer as a group of ranks: one Ray actor per rank, one object with the ``Trainer`` API.

``--actor-num-nodes N --actor-num-gpus-per-node G`` gives ``N x G`` ranks. Each
:class:`TrainerRankActor` sits in its own bundle of the run's placement group (one GPU each; CPU
bundles on a cluster without GPUs), initialises ``torch.distributed`` with its rank and the world
(NCCL on GPUs, gloo on CPUs; rank 0's node and a free port there are the rendezvous) and builds the
configured trainer in it:

* ``--trainer megatron``: :class:`~agentrl.train.megatron.MegatronTrainer` with the run's
  TP / PP / SP sizes; data parallel = ranks / (TP x PP);
* ``--trainer torch``: :class:`~agentrl.train.torch_trainer.TorchTrainer` sharded with FSDP2 over
  all ranks (``data_parallel=True``; data parallel = ranks).

:class:`TrainerGroup` is what the loop holds. Every call (``compute_logprobs``, reference logprobs,
values, ``train_step``, ``save``/``load``/``export_hf``) fans out to all ranks at once: the batch
goes into the object store once and every rank reads it; each data-parallel rank trains on its
share of the samples, balanced by tokens (``split_data_parallel`` / ``balanced_shares`` inside the
trainers), losses are divided by the step's global denominator and gradients summed over the
data-parallel ranks, so the metrics that come back (rank 0's; every rank holds the same reduced
values) mean what they mean on one rank. Weights leave the group as HF-named full tensors: every
rank takes part in the gathers and rank 0 hands them on (see :meth:`TrainerGroup.weights`).

A rank that dies fails the run with :class:`TrainerRankFailed`, one line naming the rank; the
other ranks, stuck in a collective with it, are killed with the group.

Example (a local 2-CPU Ray cluster, the tests' set-up)::

    ray.init(num_cpus=2)
    group = TrainerGroup.spawn(parse_args(["--model-path", "tiny-qwen2", "--actor-num-gpus-per-node", "2"]))
    metrics = group.train_step(batch)     # the one-rank metrics of this batch
    group.close()
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


class TrainerRankFailed(RuntimeError):
    """A rank actor of the trainer group died or raised."""


def check_cluster(ranks: int, resources: dict[str, float], use_gpu: bool) -> list[str]:
    """One line when the cluster cannot hold ``ranks`` trainer ranks (one GPU each), else none.

    Example::

        >>> check_cluster(8, {"GPU": 4.0, "CPU": 64.0}, use_gpu=True)  # doctest: +NORMALIZE_WHITESPACE
        ['8 trainer ranks (--actor-num-nodes x --actor-num-gpus-per-node) need 8 GPUs; the Ray cluster has 4']
        >>> check_cluster(2, {"CPU": 2.0}, use_gpu=False)
        []
    """
    if use_gpu and ranks > resources.get("GPU", 0):
        return [f"{ranks} trainer ranks (--actor-num-nodes x --actor-num-gpus-per-node) need {ranks} GPUs; the Ray "
                f"cluster has {int(resources.get('GPU', 0))}"]
    return []


class TrainerRankActor:
    """One rank of the group (runs inside a Ray worker)."""

    def __init__(self, rank: int, world: int, num_threads: int | None = None) -> None:
        import torch

        self.rank, self.world = rank, world
        self.trainer: Any = None
        if num_threads:
            torch.set_num_threads(num_threads)

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: this node's address and a free port for ``torch.distributed``."""
        from agentrl.cluster.weight_broadcast import rendezvous

        return rendezvous()

    def start(self, cfg: Any, address: str, port: int) -> dict[str, Any]:
        """Join the process group and build the trainer (every rank at the same time)."""
        import dataclasses

        from agentrl.components import seed_everything
        from agentrl.train.distributed import init_distributed

        # Ray shows the actor only its own GPU: it is cuda:0 here
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), LOCAL_RANK="0", MASTER_ADDR=address,
                          MASTER_PORT=str(port))
        init_distributed()
        seed_everything(cfg.seed)
        cfg = dataclasses.replace(cfg, device=None)
        total_steps = cfg.num_rollout * cfg.num_steps_per_rollout
        if cfg.trainer == "megatron":
            from agentrl.train.megatron import MegatronTrainer

            self.trainer = MegatronTrainer(cfg.model_path, cfg.train, cfg.megatron, total_steps=total_steps)
        else:
            from agentrl.train.torch_trainer import TorchTrainer

            self.trainer = TorchTrainer(cfg.model_path, cfg.train, total_steps=total_steps, data_parallel=True)
        return self.where()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.trainer, method)(*args, **kwargs)
        if method == "train_step" and self.last_sync:  # the sync before this step, in the step's metrics
            result = {**result, **self.last_sync}
        return result if self.rank == 0 else None  # the same on every rank: one copy travels back

    last_sync: dict[str, float] = {}  # noqa: RUF012 - replaced, never mutated

    def _timed(self, stats: dict[str, float]) -> None:
        self.last_sync = {"perf/weight_sync_s": stats["seconds"],
                          "perf/weight_sync_gb_per_s": stats["bytes"] / 1e9 / max(stats["seconds"], 1e-9)}

    def state_dict(self) -> dict[str, Any] | None:
        """Rank 0: the HF-named weights as CPU tensors; the other ranks take part in the gathers only."""
        import time

        start, size, out = time.perf_counter(), 0, {}
        for name, t in self.trainer.weights():
            if self.rank == 0:
                out[name] = t.detach().to("cpu").contiguous()
                size += t.numel() * t.element_size()
        self._timed({"seconds": time.perf_counter() - start, "bytes": float(size)})
        return out if self.rank == 0 else None

    # --- weight broadcast to engine actors (agentrl.cluster.weight_broadcast): rank 0 sends ---
    def join_broadcast(self, address: str, port: int, rank: int, world_size: int, backend: str) -> None:
        from agentrl.cluster.weight_broadcast import BroadcastGroup

        self.group = BroadcastGroup(address, port, rank, world_size, backend)

    def broadcast_meta(self) -> list | None:
        from agentrl.cluster.weight_broadcast import weights_meta

        meta = weights_meta(self.trainer.weights())
        return meta if self.rank == 0 else None

    def send_broadcast(self) -> int:
        import time

        from agentrl.cluster.weight_broadcast import send_weights

        if self.rank != 0:
            return sum(1 for _ in self.trainer.weights())
        start, size = time.perf_counter(), 0

        def counted():
            nonlocal size
            for name, t in self.trainer.weights():
                size += t.numel() * t.element_size()
                yield name, t

        n = send_weights(self.group, counted())
        self._timed({"seconds": time.perf_counter() - start, "bytes": float(size)})
        return n

    # --- SGLang's in-memory path to servers (agentrl.cluster.weight_broadcast.push_to_servers): rank 0 sends ---
    def join_update_group(self, address: str, port: int, world_size: int, group_name: str, backend: str) -> None:
        from agentrl.cluster.weight_broadcast import init_update_group

        self.update_group = init_update_group(address, port, 0, world_size, group_name, backend)

    def leave_update_group(self) -> None:
        from agentrl.cluster.weight_broadcast import destroy_update_group

        group, self.update_group = getattr(self, "update_group", None), None
        if group is not None:
            destroy_update_group(group)

    def push_to_servers(self, urls: list[str], group_name: str, bucket_bytes: int, version: int) -> dict | None:
        from agentrl.cluster.weight_broadcast import push_to_servers

        if self.rank == 0:
            stats = push_to_servers(self.trainer.weights(), urls, self.update_group, group_name=group_name,
                                    bucket_bytes=bucket_bytes, weight_version=str(version))
            self._timed(stats)
            return stats
        for _ in self.trainer.weights():  # the gathers are collective; only rank 0 holds the full tensors
            pass
        return None

    def where(self) -> dict[str, Any]:
        return {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(getattr(self.trainer, "device", None))}


class _Head:
    """``group.actor`` for :class:`~agentrl.cluster.weight_broadcast.BroadcastWeights`: ``head.m.remote(...)``
    runs ``m`` on every rank when it is collective and returns rank 0's reference."""

    COLLECTIVE = ("state_dict", "broadcast_meta", "send_broadcast")

    def __init__(self, group: "TrainerGroup") -> None:
        self._group = group

    def __getattr__(self, method: str) -> Any:
        group = self._group

        class _Method:
            @staticmethod
            def remote(*args: Any, **kwargs: Any) -> Any:
                if method not in _Head.COLLECTIVE:
                    return getattr(group.actors[0], method).remote(*args, **kwargs)
                refs = [getattr(a, method).remote(*args, **kwargs) for a in group.actors]
                group.pending = refs[1:]  # checked at the next call: a rank that died here is reported then
                return refs[0]

        return _Method()


class TrainerGroup:
    """Driver side: the ``Trainer`` methods the loop uses, fanned out to every rank (see the module doc)."""

    def __init__(self, actors: list[Any], tokenizer: Any, *, weight_sync: str = "object_store") -> None:
        if weight_sync not in ("object_store", "nccl", "gloo"):
            raise ValueError(f"weight_sync must be object_store, nccl or gloo; got {weight_sync!r}")
        self.actors = actors
        self.tokenizer = tokenizer
        self.weight_sync = weight_sync
        self.broadcast_state: dict[str, Any] = {}
        self.pending: list[Any] = []
        self.servers: list[str] = []  # in the weight-update group of connect_servers
        self.group_name = "weight_update_group"
        self.actor = _Head(self)
        self.device = None
        """The ranks' devices live in their actors; the driver binds none."""

    @classmethod
    def spawn(cls, cfg: Any, *, options: list[dict[str, Any]] | None = None,
              num_threads: int | None = None) -> "TrainerGroup":
        """Start ``cfg.group.world_size`` rank actors (``options[r]``: rank r's placement) and build the trainer."""
        import ray

        from agentrl.models import load_tokenizer

        world = cfg.group.world_size
        remote: Any = ray.remote(max_restarts=0)(TrainerRankActor)
        actors: list[Any] = [remote.options(**((options or [{}] * world)[r])).remote(r, world, num_threads) for r in range(world)]
        group = cls(actors, load_tokenizer(cfg.model_path), weight_sync=cfg.cluster.ray_weight_sync)
        try:
            address, port = group._get([actors[0].rendezvous.remote()], "start")[0]
            where = group._get([a.start.remote(cfg, address, port) for a in actors], "start")
        except BaseException:  # the ranks that started wait in a collective for the one that did not
            group.close()
            raise
        log.info("trainer group: %d ranks at %s:%d: %s", world, address, port, where)
        return group

    # --- fan-out -------------------------------------------------------------------------------
    def _get(self, refs: list[Any], what: str) -> list[Any]:
        """Every rank's result; the first rank that fails raises :class:`TrainerRankFailed` (one line)."""
        import ray

        index = {ref: rank for rank, ref in enumerate(refs)}
        remaining, results = list(refs), {}
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            ref = done[0]
            try:
                results[index[ref]] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as e:
                raise TrainerRankFailed(f"trainer rank {index[ref]} of {len(refs)} died during {what}: "
                                        f"{_first_line(e)}") from None
            except ray.exceptions.RayTaskError as e:
                raise TrainerRankFailed(f"trainer rank {index[ref]} of {len(refs)} failed in {what}: "
                                        f"{_first_line(e.cause if e.cause is not None else e)}") from e
        return [results[r] for r in range(len(refs))]

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        if self.pending:  # the other ranks' share of the last weight sync
            pending, self.pending = self.pending, []
            self._get(pending, "the weight sync")
        args = tuple(ray.put(a) if hasattr(a, "loss_mask") else a for a in args)  # a batch: one copy for all
        return self._get([a.call.remote(method, *args, **kwargs) for a in self.actors], method)[0]

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
        """A Ray object reference to rank 0's HF-named CPU state dict (the other ranks join the gathers), or with
        ``weight_sync`` nccl/gloo a :class:`~agentrl.cluster.weight_broadcast.BroadcastWeights` whose sender is
        rank 0."""
        if self.weight_sync != "object_store":
            from agentrl.cluster.weight_broadcast import BroadcastWeights

            return BroadcastWeights(self, self.weight_sync)
        return self.actor.state_dict.remote()

    def connect_servers(self, urls: list[str], *, group_name: str = "weight_update_group",
                        backend: str = "gloo") -> None:
        """Form SGLang's weight-update group: rank 0 of the trainer and the servers at ``urls`` (one rank each,
        ``rank_offset`` 1, 2, ...) through their ``/init_weights_update_group``."""
        import concurrent.futures as cf

        import httpx

        address, port = self._get([self.actors[0].rendezvous.remote()], "the weight update group")[0]
        world = len(urls) + 1
        join = self.actors[0].join_update_group.remote(address, port, world, group_name, backend)
        body = {"master_address": address, "master_port": port, "world_size": world, "group_name": group_name,
                "backend": backend}
        with cf.ThreadPoolExecutor(len(urls)) as pool:
            answers = [pool.submit(httpx.post, f"{u.rstrip('/')}/init_weights_update_group",
                                   json={**body, "rank_offset": i + 1}, timeout=600) for i, u in enumerate(urls)]
            self._get([join], "the weight update group")
            for url, answer in zip(urls, answers):
                reply = answer.result()
                if reply.status_code != 200 or not reply.json().get("success", False):
                    raise RuntimeError(f"{url}/init_weights_update_group failed: {reply.text[:300]}")
        self.servers = list(urls)
        self.group_name = group_name

    def disconnect_servers(self) -> None:
        """Leave the weight-update group of :meth:`connect_servers`: each server still up drops its end
        (``/destroy_weights_update_group``; one that is gone is skipped), then rank 0 drops its own."""
        import httpx

        for url in self.servers:
            try:
                httpx.post(f"{url.rstrip('/')}/destroy_weights_update_group", json={"group_name": self.group_name},
                           timeout=30)
            except httpx.HTTPError as e:
                log.info("%s/destroy_weights_update_group: %s", url, e)
        self._get([self.actors[0].leave_update_group.remote()], "the weight update group")
        self.servers = []

    def update_servers(self, version: int, *, bucket_bytes: int = 512 * 1024**2) -> dict[str, float]:
        """Push the weights to the connected servers (:meth:`connect_servers`) bucket by bucket through
        ``/update_weights_from_distributed``; ``perf/`` metrics of the sync (seconds, GB/s)."""
        refs = [a.push_to_servers.remote(self.servers, self.group_name, bucket_bytes, version) for a in self.actors]
        stats = self._get(refs, "the weight sync")[0]
        return {"perf/weight_sync_s": stats["seconds"], "perf/weight_sync_gb_per_s":
                stats["bytes"] / 1e9 / max(stats["seconds"], 1e-9), "perf/weight_sync_buckets": stats["buckets"]}

    def save(self, path: Any) -> None:
        self._call("save", str(path))

    def load(self, path: Any) -> None:
        self._call("load", str(path))

    def export_hf(self, path: Any) -> None:
        self._call("export_hf", str(path))

    def where(self) -> list[dict[str, Any]]:
        return self._get([a.where.remote() for a in self.actors], "where")

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
