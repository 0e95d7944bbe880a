"""Optimisers for the Megatron backend: megatron-core's (distributed) optimizer, or torch AdamW.

``megatron``: the model is wrapped in megatron-core's ``DistributedDataParallel`` (contiguous
fp32 gradient buffers) and optimised by ``get_megatron_optimizer`` -- fp32 main weights for
bf16 models, gradient clipping, and with ``use_distributed_optimizer`` the ZeRO-1 sharding of
optimizer state over data-parallel ranks. Gradients are *summed* over data-parallel ranks
(``calculate_per_token_loss``): each rank's loss is already divided by the global denominator.

``torch``: plain ``torch.optim.AdamW`` on the unwrapped model, for a single process where
megatron-core's optimizer cannot run (it assumes CUDA).

Both expose the same small interface, used by :class:`~agentrl.train.megatron.trainer.MegatronTrainer`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from agentrl.train.base import TrainConfig

OPTIMIZERS = ("auto", "megatron", "torch")


def resolve_optimizer(kind: str, replicas: int = 1) -> str:
    """``auto``: megatron-core's optimizer on CUDA or with data / pipeline parallelism (``replicas`` = DP x PP > 1,
    which the torch fallback cannot run), else torch's AdamW."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {kind!r}")
    if kind == "auto":
        return "megatron" if torch.cuda.is_available() or replicas > 1 else "torch"
    return kind


class MegatronOptimizer:
    """megatron-core DDP + ``get_megatron_optimizer``. ``self.model`` is the DDP-wrapped model."""

    kind = "megatron"

    def __init__(self, model: torch.nn.Module, config: TrainConfig, *, lr: float,
                 distributed: bool = True) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from megatron.core.transformer import TransformerConfig

        tcfg = model.config
        assert isinstance(tcfg, TransformerConfig)  # a megatron-core GPTModel's
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=distributed,
            check_for_nan_in_grad=False)
        self.model = DistributedDataParallel(config=tcfg, ddp_config=ddp_config, module=model)
        opt_config = OptimizerConfig(
            optimizer="adam", lr=lr, min_lr=0.0, weight_decay=config.weight_decay,
            adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2, adam_eps=config.adam_eps,
            clip_grad=config.clip_grad if config.clip_grad > 0 else 0.0,
            bf16=tcfg.bf16, fp16=tcfg.fp16, params_dtype=tcfg.params_dtype,
            use_distributed_optimizer=distributed)
        self.optimizer = get_megatron_optimizer(opt_config, [self.model])

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> float:
        """Reduce gradients over data-parallel ranks, clip, update; the gradient norm."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.model])
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            return math.nan
        return float(grad_norm) if grad_norm is not None else math.nan

    def reload_from_model(self) -> None:
        """After weights were copied into the model: refresh the fp32 main copies."""
        self.optimizer.reload_model_params()

    def save(self, path: Path, tag: str, write: bool = True) -> None:
        """Every rank writes its own shard: the moments and step counts of the torch optimizers
        inside megatron-core's (version-independent, and valid for torch's AdamW fallback, whose
        per-parameter ``step`` megatron-core's own ``save_parameter_state`` drops)."""
        state = [inner.optimizer.state_dict() for inner in self._inner()]
        torch.save(state, path / f"optimizer_{tag}_rank{torch.distributed.get_rank()}.pt")

    def load(self, path: Path, tag: str) -> None:
        """Load this rank's shard; the main weights come from the model (``reload_from_model``)."""
        state = torch.load(path / f"optimizer_{tag}_rank{torch.distributed.get_rank()}.pt",
                           map_location="cpu", weights_only=False)
        inners = self._inner()
        if len(state) != len(inners):
            raise ValueError(f"optimizer checkpoint has {len(state)} parts; this model has {len(inners)} "
                             f"(was it saved with another parallel layout?)")
        for inner, part in zip(inners, state):
            inner.optimizer.load_state_dict(part)

    def _inner(self) -> list:
        return list(getattr(self.optimizer, "chained_optimizers", None) or [self.optimizer])

    def param_states(self) -> dict[torch.nn.Parameter, dict[str, Any]] | None:
        """Each model parameter's optimizer state (moments of its main copy, the parameter's shape), or None with
        the distributed optimizer (its state is a slice of flat buffers per data-parallel rank)."""
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

        out: dict[torch.nn.Parameter, dict[str, Any]] = {}
        for inner in self._inner():
            if isinstance(inner, DistributedOptimizer):
                return None
            if hasattr(inner, "float16_groups"):  # 16-bit model params, float32 main copies
                pairs = [(m, main) for g, mg in zip(inner.float16_groups, inner.fp32_from_float16_groups)
                         for m, main in zip(g, mg)]
                pairs += [(p, p) for g in inner.fp32_from_fp32_groups for p in g]
            else:  # float32 params are their own main copies
                pairs = [(p, p) for g in inner.optimizer.param_groups for p in g["params"]]
            for model_param, main in pairs:
                out[model_param] = inner.optimizer.state[main]
        return out


class TorchOptimizer:
    """``torch.optim.AdamW`` over the model's trainable parameters (one process, no DDP)."""

    kind = "torch"

    def __init__(self, model: torch.nn.Module, config: TrainConfig, *, lr: float, **_: Any) -> None:
        from megatron.core import parallel_state as ps

        if ps.get_data_parallel_world_size() > 1 or ps.get_pipeline_model_parallel_world_size() > 1:
            raise ValueError("optimizer='torch' runs one data-parallel replica without pipelining; "
                             "use optimizer='megatron' for data or pipeline parallelism")
        self.model = model
        self.config = config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(config.adam_beta1, config.adam_beta2),
                                           eps=config.adam_eps, weight_decay=config.weight_decay)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> float:
        from megatron.core import parallel_state as ps

        _allreduce_replicated_grads(self.model, ps.get_tensor_model_parallel_group(),
                                    ps.get_tensor_model_parallel_world_size())
        clip = self.config.clip_grad if self.config.clip_grad > 0 else float("inf")
        norm = float(_clip_grad_norm(self.params, clip))
        self.optimizer.step()
        return norm

    def reload_from_model(self) -> None:
        pass  # AdamW updates the model's own tensors

    def param_states(self) -> dict[torch.nn.Parameter, dict[str, Any]]:
        return {p: self.optimizer.state[p] for p in self.params}

    def save(self, path: Path, tag: str, write: bool = True) -> None:
        if write:
            torch.save(self.optimizer.state_dict(), path / f"optimizer_{tag}.pt")

    def load(self, path: Path, tag: str) -> None:
        self.optimizer.load_state_dict(torch.load(path / f"optimizer_{tag}.pt", map_location="cpu",
                                                  weights_only=False))


def lr_factor(config: TrainConfig, step: int, total_steps: int | None) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based), as the torch backend's:
    linear warm-up over ``lr_warmup_steps``, then constant / cosine / linear decay to ``min_lr``
    over ``lr_decay_steps`` (default ``total_steps``)."""
    warmup, decay_steps = config.lr_warmup_steps, config.lr_decay_steps or total_steps
    if config.lr_decay_style not in ("constant", "cosine", "linear"):
        raise ValueError(f"lr_decay_style must be constant, cosine or linear; got {config.lr_decay_style!r}")
    if warmup and step < warmup:
        return (step + 1) / warmup
    if config.lr_decay_style == "constant" or not decay_steps:
        return 1.0
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    progress = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
    if config.lr_decay_style == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def _allreduce_replicated_grads(model: torch.nn.Module, group, tp: int) -> None:
    """Sum grads of TP-replicated params that see different heads per rank (Qwen3 q/k norms)."""
    if tp == 1:
        return
    for name, p in model.named_parameters():
        if p.grad is not None and ("q_layernorm" in name or "k_layernorm" in name
                                   or getattr(p, "sequence_parallel", False)):
            torch.distributed.all_reduce(p.grad, group=group)


def _clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global grad norm over tensor-parallel shards (replicated params counted once), clipped."""
    from megatron.core import parallel_state as ps

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    tp = ps.get_tensor_model_parallel_world_size()
    sq = torch.zeros((), dtype=torch.float32, device=grads[0].device)
    for p in params:
        if p.grad is None:
            continue
        g2 = p.grad.float().pow(2).sum()
        sharded = getattr(p, "tensor_model_parallel", False) or ps.get_tensor_model_parallel_rank() == 0
        sq += g2 if sharded else 0.0
    if tp > 1:
        torch.distributed.all_reduce(sq, group=ps.get_tensor_model_parallel_group())
    norm = sq.sqrt()
    if math.isfinite(max_norm):
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return norm
