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

import torch
import torch.distributed as dist
from torch import Tensor

_PAD_LOGIT = -1e30  # finite: p * z stays 0 * finite for padded vocabulary rows
_CHUNK_ELEMENTS = 1 << 26  # rows are processed in chunks of about this many logits (256 MB in fp32)


class _VocabParallelLogprobs(torch.autograd.Function):
    """Row-chunked: the ``[N, V/tp]`` logits are read in chunks of rows and upcast chunk by chunk,
    so no full-size float32 copy exists; the backward recomputes the softmax from the saved
    (bf16) logits and writes the gradient in their dtype."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, vocab_start: int, vocab_valid: int,
                temperature: float, group, with_entropy: bool, entropy_grad: bool):
        # logits [N, Vp] (this rank's vocabulary slice), targets [N] global ids
        n, vp = logits.shape
        dtype = torch.promote_types(logits.dtype, torch.float32)
        local = targets - vocab_start  # [N]
        inside = (local >= 0) & (local < vp)
        idx = local.clamp(0, vp - 1).unsqueeze(-1)  # [N, 1]
        chunks = _row_chunks(n, vp)
        zmax = torch.empty(n, dtype=dtype, device=logits.device)
        for rows in chunks:
            zmax[rows] = _scaled(logits[rows], dtype, temperature, vocab_valid).max(dim=-1).values
        _all_reduce(zmax, dist.ReduceOp.MAX, group)
        # stats[0]: sum_v exp(z_v - max); stats[1]: z_target - max (0 on ranks without the target)
        stats = torch.empty(2, n, dtype=dtype, device=logits.device)
        for rows in chunks:
            z = _scaled(logits[rows], dtype, temperature, vocab_valid).sub_(zmax[rows, None])
            stats[0, rows] = z.exp_().sum(dim=-1)
        target_z = logits.gather(-1, idx).squeeze(-1).to(dtype) / temperature - zmax
        stats[1] = torch.where(inside, target_z, torch.zeros_like(target_z))
        _all_reduce(stats, dist.ReduceOp.SUM, group)
        log_z = stats[0].log() + zmax  # [N], log sum_v exp z_v
        logprobs = stats[1] + zmax - log_z
        entropy = torch.zeros_like(logprobs)
        if with_entropy:
            pz = torch.empty_like(log_z)  # sum_v p_v z_v
            for rows in chunks:
                z = _scaled(logits[rows], dtype, temperature, vocab_valid)
                pz[rows] = ((z - log_z[rows, None]).exp_() * z).sum(dim=-1)
            _all_reduce(pz, dist.ReduceOp.SUM, group)
            entropy = log_z - pz
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
        g_lp = grad_logprobs.to(dtype)
        g_h = grad_entropy.to(dtype) if entropy_grad and grad_entropy is not None else None
        grad = torch.empty_like(logits)
        for rows in _row_chunks(n, vp):
            z = _scaled(logits[rows], dtype, temperature, vocab_valid)
            shift = z.sub_(log_z[rows, None])  # log p_v
            p = shift.exp()
            g = p * (-g_lp[rows, None])  # d log p(t) / d z_v = 1[v = t] - p_v
            if g_h is not None:  # d H / d z_v = -p_v (log p_v + H)
                g.sub_(p * shift.add_(entropy[rows, None]) * g_h[rows, None])
            g.scatter_add_(-1, idx[rows], (g_lp[rows] * inside[rows]).unsqueeze(-1))
            if temperature != 1.0:
                g.div_(temperature)
            grad[rows] = g.to(grad.dtype)
        return grad, None, None, None, None, None, None, None


def _row_chunks(n: int, vp: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(vp, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _scaled(logits: Tensor, dtype: torch.dtype, temperature: float, vocab_valid: int) -> Tensor:
    """A fresh ``dtype`` copy of a chunk of logits, divided by the temperature, padding masked."""
    z = logits.to(dtype, copy=True)
    if temperature != 1.0:
        z.div_(temperature)
    if vocab_valid < z.shape[-1]:
        z[:, max(vocab_valid, 0):] = _PAD_LOGIT
    return z


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
