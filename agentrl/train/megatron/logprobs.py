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


class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, vocab_start: int, vocab_valid: int,
                temperature: float, group, with_entropy: bool, entropy_grad: bool):
        # logits [N, Vp] (this rank's vocabulary slice), targets [N] global ids
        z = logits.float()
        if temperature != 1.0:
            z = z / temperature
        elif z.data_ptr() == logits.data_ptr():
            z = z.clone()  # float32 input: do not modify the caller's tensor in place
        vp = z.shape[-1]
        if vocab_valid < vp:
            z[:, max(vocab_valid, 0):] = _PAD_LOGIT
        zmax = z.max(dim=-1).values  # [N]
        _all_reduce(zmax, dist.ReduceOp.MAX, group)
        z.sub_(zmax.unsqueeze(-1))
        local = targets - vocab_start  # [N]
        inside = (local >= 0) & (local < vp)
        idx = local.clamp(0, vp - 1).unsqueeze(-1)
        target_z = z.gather(-1, idx).squeeze(-1) * inside  # [N]
        p = z.exp()  # [N, Vp], unnormalised
        sumexp = p.sum(dim=-1)
        stats = torch.stack([sumexp, target_z])  # one all-reduce for both
        _all_reduce(stats, dist.ReduceOp.SUM, group)
        sumexp, target_z = stats[0], stats[1]
        log_z = sumexp.log()
        logprobs = target_z - log_z
        p.div_(sumexp.unsqueeze(-1))
        entropy = None
        if with_entropy:
            pz = (p * z).sum(dim=-1)
            _all_reduce(pz, dist.ReduceOp.SUM, group)
            entropy = log_z - pz
        ctx.temperature = temperature
        if with_entropy and entropy_grad and ctx.needs_input_grad[0]:
            ctx.save_for_backward(p, idx, inside, z, log_z, entropy)
        else:
            ctx.save_for_backward(p, idx, inside)
        if entropy is None:
            entropy = torch.zeros_like(logprobs)
        if not (with_entropy and entropy_grad):
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, grad_entropy: Tensor):
        saved = ctx.saved_tensors
        p, idx, inside = saved[:3]
        grad = p * (-grad_logprobs.unsqueeze(-1))  # [N, Vp]
        grad.scatter_add_(-1, idx, (grad_logprobs * inside).unsqueeze(-1))
        if grad_entropy is not None and len(saved) > 3:
            z, log_z, entropy = saved[3:]
            shift = (z - log_z.unsqueeze(-1)).add_((entropy).unsqueeze(-1))  # log p_v + H
            grad.sub_(p * shift * grad_entropy.unsqueeze(-1))
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad, None, None, None, None, None, None, None


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
