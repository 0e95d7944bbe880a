"""Token log-probabilities and entropies from vocabulary-parallel logits, without gathering them.

Each tensor-parallel rank holds logits for a slice of the vocabulary, ``[..., V/tp]``. The
log-softmax needs only three all-reduces of ``[...]``-sized tensors (max, sum of exponentials,
the target's logit), and the entropy one more (``sum p z``); the ``[..., V]`` logits are never
assembled. Formulas, with ``z`` the logits divided by the temperature and ``Z = sum_v exp z_v``::

    log p(t) = z_t - log Z
    H        = log Z - sum_v p_v z_v
    d log p(t) / d z_v = 1[v = t] - p_v
    d H / d z_v        = -p_v (z_v - log Z + H)

(the same decomposition as Megatron-LM's ``vocab_parallel_cross_entropy``; Shoeybi et al. 2019,
arXiv 1909.08053, section 3). The backward needs no communication. Vocabulary padding rows
(``vocab_size`` < ``tp * V/tp``) are excluded from the softmax.

Example::

    >>> logits = torch.randn(2, 5, 11)
    >>> targets = torch.randint(0, 11, (2, 5))
    >>> lp, ent = vocab_parallel_logprobs(logits, targets, with_entropy=True)
    >>> torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0], atol=1e-6)
    True
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from agentrl.utils.compile import MaybeCompiled

_PAD_LOGIT = -1e30  # finite: p * z stays 0 * finite for padded vocabulary rows
_CHUNK_ELEMENTS = 1 << 26  # eager: rows are processed in chunks of about this many logits (256 MB in fp32)
_COMPILED_CHUNK_ELEMENTS = 1 << 30  # compiled (CUDA): fused kernels keep no float32 copy; 32-bit indexing


class _VocabParallelLogprobs(torch.autograd.Function):
    """Per chunk of rows, one pass computes the local max ``m``, ``sum_v exp(z_v - m)`` and
    ``sum_v exp(z_v - m) z_v``; ranks combine them after rescaling to the global max (two
    all-reduces). The backward recomputes the softmax from the saved (bf16) logits and writes the
    gradient in their dtype. On CUDA both are ``torch.compile``d into fused kernels that read the
    bf16 logits without a float32 copy; elsewhere (and if compiling fails) they run eagerly on
    row chunks, so no full-size float32 copy exists either way."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, vocab_start: int, vocab_valid: int,
                temperature: float, group, with_entropy: bool, entropy_grad: bool):
        # logits [N, Vp] (this rank's vocabulary slice), targets [N] global ids
        n, vp = logits.shape
        dtype = torch.promote_types(logits.dtype, torch.float32)
        local = targets - vocab_start  # [N]
        inside = (local >= 0) & (local < vp)
        idx = local.clamp(0, vp - 1).unsqueeze(-1)  # [N, 1]
        stats_fn = _kernel("stats", logits)
        # local[0]: max m; local[1]: sum_v exp(z_v - m); local[2]: sum_v exp(z_v - m) z_v (with entropy)
        local_stats = torch.empty(3, n, dtype=dtype, device=logits.device)
        for rows in _row_chunks(n, vp, stats_fn):
            out = stats_fn(logits[rows], dtype, temperature, vocab_valid, with_entropy)
            for i in range(3):
                local_stats[i, rows] = out[i]
        zmax = local_stats[0].clone()
        _all_reduce(zmax, dist.ReduceOp.MAX, group)
        rescale = (local_stats[0] - zmax).exp_()
        target_z = logits.gather(-1, idx).squeeze(-1).to(dtype) / temperature
        # sums[0]: sum_v exp(z_v - max); sums[1]: z_target (0 on ranks without it); sums[2]: sum_v exp(z_v - max) z_v
        sums = torch.stack((local_stats[1] * rescale, torch.where(inside, target_z, torch.zeros_like(target_z)),
                            local_stats[2] * rescale))
        _all_reduce(sums, dist.ReduceOp.SUM, group)
        log_z = sums[0].log() + zmax  # [N], log sum_v exp z_v
        logprobs = sums[1] - log_z
        entropy = log_z - sums[2] / sums[0] if with_entropy else torch.zeros_like(logprobs)  # log Z - sum_v p_v z_v
        ctx.meta = (temperature, vocab_valid, with_entropy and entropy_grad)
        ctx.save_for_backward(logits, idx, inside, log_z, entropy)
        if not (with_entropy and entropy_grad):
            ctx.mark_non_differentiable(entropy)
        return logprobs.to(torch.float32), entropy.to(torch.float32)

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, grad_entropy: Tensor):
        logits, idx, inside, log_z, entropy = ctx.saved_tensors
        temperature, vocab_valid, entropy_grad = ctx.meta
        n, vp = logits.shape
        dtype = log_z.dtype
        g_lp = grad_logprobs.to(dtype) * inside  # the target's one-hot term lives on one rank
        g_h = grad_entropy.to(dtype) if entropy_grad and grad_entropy is not None else None
        grad_fn = _kernel("grad", logits)
        chunks = _row_chunks(n, vp, grad_fn)
        if len(chunks) == 1:
            return (grad_fn(logits, idx, log_z, entropy, grad_logprobs.to(dtype), g_lp, g_h, temperature, vocab_valid),
                    None, None, None, None, None, None, None)
        grad = torch.empty_like(logits)
        for rows in chunks:
            grad[rows] = grad_fn(logits[rows], idx[rows], log_z[rows], entropy[rows], grad_logprobs[rows].to(dtype),
                                 g_lp[rows], None if g_h is None else g_h[rows], temperature, vocab_valid)
        return grad, None, None, None, None, None, None, None


def _scaled(logits: Tensor, dtype: torch.dtype, temperature: float, vocab_valid: int) -> Tensor:
    """The chunk's logits in ``dtype``, divided by the temperature, vocabulary padding masked."""
    z = logits.to(dtype)
    if temperature != 1.0:
        z = z / temperature
    if vocab_valid < z.shape[-1]:
        cols = torch.arange(z.shape[-1], device=z.device)
        z = torch.where(cols < vocab_valid, z, torch.full_like(z, _PAD_LOGIT))
    return z


def _chunk_stats(logits: Tensor, dtype: torch.dtype, temperature: float, vocab_valid: int, with_pz: bool):
    """Per row: max ``m``, ``sum_v exp(z_v - m)`` and ``sum_v exp(z_v - m) z_v`` (zeros without ``with_pz``)."""
    z = _scaled(logits, dtype, temperature, vocab_valid)
    m = z.amax(dim=-1)
    e = torch.exp(z - m[:, None])
    return m, e.sum(dim=-1), (e * z).sum(dim=-1) if with_pz else torch.zeros_like(m)


def _chunk_grad(logits: Tensor, idx: Tensor, log_z: Tensor, entropy: Tensor, g_all: Tensor, g_target: Tensor,
                g_h: Tensor | None, temperature: float, vocab_valid: int) -> Tensor:
    """d loss / d logits of a chunk, in the logits' dtype:
    ``(1[v = t] g_target - p_v g_all - p_v (log p_v + H) g_h) / temperature``."""
    z = _scaled(logits, log_z.dtype, temperature, vocab_valid)
    shift = z - log_z[:, None]  # log p_v
    p = torch.exp(shift)
    g = -p * g_all[:, None]
    if g_h is not None:  # d H / d z_v = -p_v (log p_v + H)
        g = g - p * (shift + entropy[:, None]) * g_h[:, None]
    cols = torch.arange(z.shape[-1], device=z.device)
    g = g + torch.where(cols[None, :] == idx, g_target[:, None], torch.zeros_like(g))  # idx [n, 1]
    if temperature != 1.0:
        g = g / temperature
    return g.to(logits.dtype)


_KERNELS: dict[str, MaybeCompiled] = {}


def _kernel(name: str, logits: Tensor) -> Callable:
    """The fused (compiled) chunk function on CUDA, the eager one elsewhere."""
    chunk_fns: dict[str, Callable] = {"stats": _chunk_stats, "grad": _chunk_grad}
    fn = chunk_fns[name]
    if not logits.is_cuda:
        return fn
    if name not in _KERNELS:
        _KERNELS[name] = MaybeCompiled(fn, enabled=True)
    kernel = _KERNELS[name]
    return kernel if kernel.active else fn


def _row_chunks(n: int, vp: int, fn: Callable) -> list[slice]:
    budget = _COMPILED_CHUNK_ELEMENTS if isinstance(fn, MaybeCompiled) else _CHUNK_ELEMENTS
    step = max(1, budget // max(vp, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def vocab_parallel_logprobs(
    logits: Tensor,
    targets: Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    group: dist.ProcessGroup | None = None,
    tp_rank: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(logprobs, entropy)``, float32, shaped like ``targets``, from vocabulary-sharded logits.

    Args:
        logits: ``[..., V/tp]`` this rank's slice (rank ``r`` holds ids ``[r*V/tp, (r+1)*V/tp)``).
        targets: ``[...]`` token ids in the full vocabulary.
        vocab_size: the real vocabulary size; ids at or above it are padding (excluded).
        temperature: logits are divided by it first (the engine's sampling temperature).
        with_entropy: also return the per-position entropy (else ``None``).
        entropy_grad: whether gradients flow through the entropy (an entropy bonus); without it
            the entropy is a detached metric and the backward keeps less memory.
        group: the tensor-parallel group; ``None`` means megatron-core's when it is initialised
            and larger than one, else no communication.
        tp_rank: this rank's index in ``group`` (default: read from it).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree; "
                         f"expected logits [..., V/tp] and targets [...]")
    if group is None:
        group = _default_tp_group()
    world = dist.get_world_size(group) if group is not None else 1
    rank = tp_rank if tp_rank is not None else (dist.get_rank(group) if group is not None else 0)
    vp = logits.shape[-1]
    start = rank * vp
    valid = vp if vocab_size is None else min(vp, vocab_size - start)
    if world == 1:
        group = None
    lead = targets.shape
    lp, ent = _VocabParallelLogprobs.apply(logits.reshape(-1, vp), targets.reshape(-1).long(), start, valid,
                                          float(temperature), group, with_entropy, entropy_grad)
    return lp.reshape(lead), ent.reshape(lead) if with_entropy else None


def _all_reduce(t: Tensor, op, group) -> None:
    if group is not None:
        dist.all_reduce(t, op=op, group=group)


def _default_tp_group():
    try:
        from megatron.core import parallel_state as ps
    except ImportError:
        return None
    if not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_world_size() == 1:
        return None
    return ps.get_tensor_model_parallel_group()
