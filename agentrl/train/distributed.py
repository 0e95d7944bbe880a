"""Several processes, one model: ``torch.distributed`` set-up, FSDP2 sharding, and the data
parallelism of :class:`~agentrl.train.torch_trainer.TorchTrainer` (``data_parallel=True``).

Launch one process per GPU with ``torchrun``. Every rank builds the same trainer and is handed
the *same* :class:`~agentrl.train.batch.RolloutBatch`; each rank then runs only its share of the
samples (split so that token counts are balanced) and the result is the full-batch one:

* the policy, the reference model and the critic are sharded with FSDP2 (``fully_shard`` per
  decoder layer, then the root); on CUDA they keep float32 master weights and compute in bf16
  (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32)``);
* the loss denominator (tokens or episodes, see :mod:`agentrl.algo.aggregate`) is summed over
  the ranks, every micro-batch loss is divided by that global count, and FSDP2 is told to *sum*
  gradients in its reduce-scatter instead of averaging them; so the gradient is exactly the
  single-process full-batch gradient, whatever the split;
* every rank runs the same number of forward/backward passes (FSDP2's all-gathers and
  reduce-scatters are collectives): a rank with fewer micro-batches splits its largest ones, or
  runs padding passes that contribute nothing;
* metrics are summed over ranks (``*_max`` / ``*_min`` take the extreme), logprobs and values
  come back as the full ``[N, R]`` on every rank, ``weights()`` gathers full tensors, and
  checkpoints are written by rank 0 from full state dicts.

Example (``torchrun --nproc-per-node 2 train_dp.py``)::

    from agentrl.train.distributed import broadcast_object, init_distributed, teardown_distributed
    env = init_distributed()                       # NCCL on CUDA (one GPU per rank), gloo on CPU
    trainer = TorchTrainer("smollm2-135m-instruct", TrainConfig(lr=1e-6), data_parallel=True)
    batch = broadcast_object(make_batch() if env.is_main else None)   # the same batch on every rank
    metrics = trainer.train_step(batch)            # the same metrics on every rank
    weights = dict(trainer.weights())              # every rank iterates: the gathers are collective
    teardown_distributed()

Not covered: meta-device initialisation (each rank loads the full model on its CPU before
sharding), hybrid sharding over several hosts, and tensor/pipeline parallelism (the Megatron
backend has those).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from agentrl.algo import aggregation_denominator, merge_metric_parts
from agentrl.train.batch import RolloutBatch, micro_batches

log = logging.getLogger(__name__)


# -- process group -------------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """Where this process sits. ``backend`` is None in a plain process (no process group)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistEnv:
    """Initialise ``torch.distributed`` from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    NCCL with one GPU per rank (``cuda:LOCAL_RANK``) when CUDA is available, gloo otherwise.
    Outside torchrun (no ``RANK`` in the environment) nothing is initialised and a world of one
    is returned. Calling it again returns the current state.
    """
    if dist.is_initialized():
        return current_env()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv(rank=0, world_size=1, local_rank=0, backend=None)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group(backend)
    env = current_env()
    log.info("torch.distributed: %s, rank %d of %d", backend, env.rank, env.world_size)
    return env


def current_env() -> DistEnv:
    if not dist.is_initialized():
        return DistEnv(rank=0, world_size=1, local_rank=0, backend=None)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)), backend=str(dist.get_backend()))


def teardown_distributed() -> None:
    """Destroy the default process group (no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def comm_device() -> torch.device:
    """The device collectives need: this rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for batches and small records)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# -- FSDP2 -----------------------------------------------------------------------------------
def make_mesh(device_type: str | None = None):
    """A one-dimensional device mesh over all ranks (``"cuda"`` under NCCL, else ``"cpu"``)."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = device_type or comm_device().type
    return init_device_mesh(device_type, (get_world_size(),), mesh_dim_names=("dp",))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a Hugging Face model (the classes in its ``_no_split_modules``),
    outermost only, in order. Works through wrappers such as a peft ``PeftModel``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers: list[nn.Module] = []
    taken: list[str] = []
    for path, m in model.named_modules():
        if type(m).__name__ in names and not any(path.startswith(t + ".") for t in taken):
            layers.append(m)
            taken.append(path)
    return layers


M = TypeVar("M", bound=nn.Module)


def shard_model(model: M, mesh, *, mixed_precision: bool | None = None,
                param_dtype: torch.dtype = torch.bfloat16, reshard_after_forward: bool = True) -> M:
    """Shard ``model`` in place with FSDP2: ``fully_shard`` on each decoder layer, then the root.

    Args:
        model: a Hugging Face model (or a module holding one), on the CPU or on this rank's
            device, identical on every rank; its parameters are moved to ``mesh``'s device.
            Enable activation checkpointing (``gradient_checkpointing_enable``) before sharding.
        mesh: from :func:`make_mesh`.
        mixed_precision: compute in ``param_dtype`` and reduce gradients in float32 while the
            sharded master weights keep their own dtype; default on for CUDA meshes.
        reshard_after_forward: free the gathered layer after forward (ZeRO-3); False keeps it
            until backward (ZeRO-2: faster, more memory).

    Gradients are **summed** over ranks, not averaged (the trainer divides every loss by the
    global denominator, so the sum is the full-batch gradient).
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if mixed_precision is None:
        mixed_precision = mesh.device_type == "cuda"
    mp = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if mixed_precision
          else MixedPrecisionPolicy())
    layers = decoder_layers(model)
    if not layers:
        log.warning("no decoder layers found in %s (no _no_split_modules): sharding the root only",
                    type(model).__name__)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            if hasattr(m, "set_force_sum_reduction_for_comms"):  # plain SUM, no PREMUL_SUM (gloo lacks it)
                m.set_force_sum_reduction_for_comms(True)
    return model


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor behind a (sharded) DTensor; collective, so call it on every rank."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_weights(model: Any, *, lora: bool = False, dtype: torch.dtype | None = None
                 ) -> Iterator[tuple[str, Tensor]]:
    """Hugging Face-named full tensors of a sharded model, one at a time, on every rank.

    With ``lora`` (a peft model) the adapters are merged, ``W + scale * B @ A``
    (LoRA, arXiv 2106.09685, Eq. 3), and the names are those of the base model.
    """
    if not lora:
        for name, t in model.state_dict().items():
            t = full_tensor(t)
            yield name, t if dtype is None else t.to(dtype)
        return
    base = model.get_base_model()
    adapted = {path: m for path, m in base.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    for name, t in base.state_dict().items():
        if "lora_" in name:
            continue
        t = full_tensor(t)
        owner = name.rsplit(".base_layer.", 1)[0] if name.endswith(".base_layer.weight") else None
        if owner in adapted:
            m = adapted[owner]
            for adapter in m.active_adapters:
                if adapter not in m.lora_A:
                    continue
                delta = full_tensor(m.lora_B[adapter].weight).float() @ full_tensor(m.lora_A[adapter].weight).float()
                t = (t.float() + delta * m.scaling[adapter]).to(t.dtype)
        yield name.replace(".base_layer", ""), t if dtype is None else t.to(dtype)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, *, with_model: bool = True):
    """``(model_state | None, optimizer_state)`` as full CPU tensors on rank 0 (empty elsewhere).
    The optimizer state is keyed by parameter name (``torch.distributed.checkpoint`` style)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if with_model:
        return get_state_dict(model, optimizer, options=options)
    return None, get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                          model_state: dict | None = None, optimizer_state: dict | None = None,
                          strict: bool = True):
    """Load full (unsharded) state dicts into a sharded or plain ``model``/``optimizer``.

    ``optimizer_state`` may be keyed by parameter name (:func:`full_state_dicts`) or by
    position (``optimizer.state_dict()`` of one process); returns the model's incompatible keys.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=strict)
    keys = None
    if model_state is not None:
        keys = set_model_state_dict(model, model_state, options=options)
    if optimizer is not None and optimizer_state is not None:
        if not keyed_by_name(optimizer_state):
            optimizer_state = _positions_to_names(model, optimizer, optimizer_state)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    return keys


def keyed_by_name(optimizer_state: dict | None) -> bool:
    """Whether an optimiser state dict names its parameters (``full_state_dicts``) rather than
    numbering them (``optimizer.state_dict()``)."""
    groups = (optimizer_state or {}).get("param_groups") or [{}]
    return any(isinstance(p, str) for p in groups[0].get("params", []))


def _positions_to_names(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


# -- data parallelism --------------------------------------------------------------------------
def split_by_tokens(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Sample indices per rank, token loads balanced: longest first, each to the least-loaded
    rank (LPT; the largest load is at most 4/3 of the best possible). Deterministic; every rank
    gets a sample while there are at least ``world_size``.

    Example::

        >>> split_by_tokens([10, 3, 7, 4], 2)
        [[0, 1], [2, 3]]
    """
    loads = [0] * world_size
    parts: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], len(parts[r]), r))
        parts[r].append(i)
        loads[r] += lengths[i]
    return [sorted(p) for p in parts]


def pad_micro_batches(batches: list[list[int]], count: int, lengths: Sequence[int],
                      filler: int) -> list[tuple[list[int], bool]]:
    """Make exactly ``count`` micro-batches ``(indices, live)``: split the largest (padded
    tokens) until there are enough, then add padding passes ``([filler], False)``.

    Example::

        >>> pad_micro_batches([[0, 1, 2]], 4, [5, 5, 5], filler=0)
        [([0], True), ([1], True), ([2], True), ([0], False)]
    """
    out = [list(b) for b in batches]
    while len(out) < count:
        splittable = [k for k in range(len(out)) if len(out[k]) > 1]
        if not splittable:
            break
        k = max(splittable, key=lambda k: len(out[k]) * max(lengths[i] for i in out[k]))
        b = out.pop(k)
        out[k:k] = [b[:len(b) // 2], b[len(b) // 2:]]
    return [(b, True) for b in out] + [([filler], False)] * (count - len(out))


class DataParallel:
    """The trainer's side of data parallelism over the default process group."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("data_parallel=True needs torch.distributed: launch with torchrun and call "
                               "agentrl.train.distributed.init_distributed() first")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = comm_device()
        self.mesh = make_mesh(self.device.type)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, model: M, dtype: torch.dtype) -> M:
        """FSDP2 over all ranks; computes in ``dtype`` (float32 master weights) on CUDA."""
        return shard_model(model, self.mesh, mixed_precision=self.device.type == "cuda" and dtype != torch.float32,
                           param_dtype=dtype)

    def barrier(self) -> None:
        dist.barrier()

    def sum(self, t: Tensor) -> Tensor:
        """All-reduce (sum) a copy of ``t``; same device and dtype as ``t``."""
        x = t.detach().clone().to(self.device)
        dist.all_reduce(x)
        return x.to(t.device)

    def micro_batches(self, samples: Sequence, max_tokens: int) -> list[tuple[list[int], bool]]:
        """This rank's micro-batches ``(indices into samples, live)``, as many as on every
        other rank. Raises if the ranks were handed different batches."""
        lengths = [len(s.tokens) for s in samples]
        mine = split_by_tokens(lengths, self.world_size)[self.rank]
        local = [[mine[j] for j in mb] for mb in micro_batches([samples[i] for i in mine], max_tokens)] if mine else []
        n, total = len(samples), sum(lengths)
        stats = torch.tensor([len(local), n, total, -n, -total], dtype=torch.float64, device=self.device)
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        count, hi_n, hi_t, lo_n, lo_t = stats.tolist()
        if (hi_n, hi_t) != (-lo_n, -lo_t):
            raise RuntimeError(f"ranks hold different batches: expected the same samples on every rank, got "
                               f"{-lo_n:.0f} to {hi_n:.0f} samples and {-lo_t:.0f} to {hi_t:.0f} tokens; "
                               "broadcast the batch from rank 0 (broadcast_object)")
        return pad_micro_batches(local, int(count), lengths, filler=mine[0] if mine else 0)

    def global_counts(self, batch: RolloutBatch, plan: list[tuple[list[int], bool]], mode: str
                      ) -> tuple[Tensor, float]:
        """The loss denominator and the number of loss tokens, each counted over this rank's
        rows and summed over ranks: the full-batch values."""
        rows = sorted({i for idx, live in plan if live for i in idx})
        mask = batch.loss_mask[torch.as_tensor(rows, dtype=torch.long)]  # [n_local, R]
        local = torch.stack([aggregation_denominator(mask, mode), mask.sum()]).double()
        denom, n_tokens = self.sum(local).tolist()
        expected = float(aggregation_denominator(batch.loss_mask, mode))
        if denom != expected:
            raise RuntimeError(f"the ranks' shares do not cover the batch: denominator {denom} summed over "
                               f"ranks, expected {expected}")
        return torch.tensor(denom, dtype=batch.loss_mask.dtype), n_tokens

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics over ranks: ``*_max`` the largest, ``*_min`` the smallest, the rest summed
        (each rank's values are already its share of the full-batch value)."""
        gathered: list[dict[str, float] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, dict(metrics))
        return merge_metric_parts([g or {} for g in gathered])

    def export_hf(self, model: Any, weights: Iterator[tuple[str, Tensor]], tokenizer: Any,
                  path, *, lora: bool = False) -> None:
        """Gather ``weights`` (every rank) and write a Hugging Face folder from rank 0.
        Tied weights (``lm_head`` = embeddings) are written once, as ``save_pretrained`` does."""
        target = model.get_base_model() if lora else model
        first: dict[int, str] = {}
        for name, p in target.named_parameters(remove_duplicate=False):
            first.setdefault(id(p), name)
        tied = {n.replace(".base_layer", "") for n, p in target.named_parameters(remove_duplicate=False)
                if first[id(p)] != n}
        state = {}
        for name, t in weights:
            if self.is_main and name not in tied:
                state[name] = t.detach().to("cpu", copy=True)
        if self.is_main:
            target.save_pretrained(path, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(path)
        self.barrier()
