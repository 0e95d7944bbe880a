"""Batched token sampling with per-request parameters and reproducible per-request seeds.

Each row of a logits batch has its own temperature, top-p, top-k and seed. The returned
log-probability is always the one the trainer recomputes: ``log_softmax(logits / T)[token]``
over the *whole* vocabulary (top-k/top-p only restrict which token is drawn), and the plain
``log_softmax(logits)[token]`` for greedy rows (``T == 0``).

Randomness is counter-based: the uniform number that picks the k-th token of a request is
``U(seed, k)`` (splitmix64, Steele et al. 2014, "Fast splittable pseudorandom number
generators"), and the token is found by inverse-CDF lookup. A request's draws therefore do not
depend on which other requests share its batch, on the batch order, or on the device; only on
its seed, its step and its own probabilities.

Example::

    >>> import numpy as np, torch
    >>> rows = SamplingRows.from_lists(temperature=[0.0, 1.0], top_p=[1.0, 1.0], top_k=[-1, -1],
    ...                                seed=[1, 2], step=[0, 0])
    >>> ids, logprobs = sample(torch.tensor([[0.0, 5.0, 1.0], [0.0, 0.0, 0.0]]), rows)
    >>> int(ids[0])
    1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agentrl.engine.base import GREEDY_BELOW

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniforms(seed: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``U(seed, step)`` in [0, 1), float64, element-wise. [n] uint64, [n] int -> [n]."""
    with np.errstate(over="ignore"):
        key = splitmix64(seed.astype(np.uint64)) ^ (step.astype(np.uint64) * _M2)
        bits = splitmix64(key) >> np.uint64(11)  # 53 random bits
    return bits.astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class SamplingRows:
    """Per-row sampling parameters of one batch (host arrays, all of length n)."""

    temperature: np.ndarray
    """[n] float; 0 = greedy."""
    top_p: np.ndarray
    """[n] float in (0, 1]."""
    top_k: np.ndarray
    """[n] int; <= 0 = off."""
    u: np.ndarray
    """[n] float64 uniforms in [0, 1) that pick each row's token."""

    @classmethod
    def from_lists(cls, *, temperature, top_p, top_k, seed, step) -> "SamplingRows":
        temperature = np.asarray(temperature, dtype=np.float64)
        return cls(
            temperature=np.where(temperature < GREEDY_BELOW, 0.0, temperature),  # SGLang: greedy
            top_p=np.asarray(top_p, dtype=np.float64),
            top_k=np.asarray(top_k, dtype=np.int64),
            u=uniforms(np.asarray(seed, dtype=np.uint64), np.asarray(step, dtype=np.int64)),
        )

    def __len__(self) -> int:
        return len(self.temperature)

    @property
    def all_greedy(self) -> bool:
        return bool((self.temperature <= 0).all())

    @property
    def filtered(self) -> np.ndarray:
        """[n] bool: sampled rows that use top-k or top-p."""
        return (self.temperature > 0) & ((self.top_p < 1.0) | (self.top_k > 0))

    def packed(self) -> np.ndarray:
        """[3, n] float64: effective temperature (1 for greedy rows), greedy flag, uniform."""
        greedy = self.temperature <= 0
        return np.stack([np.where(greedy, 1.0, self.temperature), greedy.astype(np.float64), self.u])


def sample(logits: torch.Tensor, rows: SamplingRows) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row. ``logits`` [n, V] float32 -> (ids [n] int64, logprobs [n] float32)."""
    n, vocab = logits.shape
    if n != len(rows):
        raise ValueError(f"logits have {n} rows but sampling parameters have {len(rows)}")
    device = logits.device
    if rows.all_greedy:
        return sample_greedy(logits)
    filtered = rows.filtered
    params = torch.from_numpy(rows.packed().astype(np.float32)).to(device)
    if not filtered.any():  # the host knows which work the batch needs (sample_plain in a graph cannot)
        greedy_rows = rows.temperature <= 0
        return sample_plain(logits, params, scaled=bool((rows.temperature[~greedy_rows] != 1.0).any()),
                            any_greedy=bool(greedy_rows.any()))
    temp, greedy, u = params[0], params[1] > 0, params[2]
    z = logits / temp[:, None]
    lse = torch.logsumexp(z, -1, keepdim=True)
    probs = torch.exp(z - lse)
    ids = _inverse_cdf(probs, u)
    f_idx = np.flatnonzero(filtered)
    f_t = torch.from_numpy(f_idx).to(device)
    ids[f_t] = _sample_filtered(probs[f_t], u[f_t], rows.top_p[f_idx], rows.top_k[f_idx])
    ids = torch.where(greedy, logits.argmax(-1), ids)
    return ids, z.gather(1, ids[:, None]).squeeze(1) - lse.squeeze(1)


def sample_greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and its plain log-softmax. [n, V] -> ([n], [n]); no host sync (CUDA-graph safe)."""
    logits = logits.float()
    ids = logits.argmax(-1)
    return ids, logits.gather(1, ids[:, None]).squeeze(1) - _logsumexp(logits).squeeze(1)


def sample_plain(logits: torch.Tensor, params: torch.Tensor, *, scaled: bool = True,
                 any_greedy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature sampling without top-k/top-p; ``params`` [3, n] from :meth:`SamplingRows.packed`.

    No host sync, so it runs inside a CUDA graph. Vocabularies that split into blocks are handled
    block-wise (per-block max and sum of exponentials, then the block holding the target, then
    the token inside it), so the whole [n, V] row is read a few times and never prefix-summed.
    ``scaled=False`` (every effective temperature is 1) skips the division and ``any_greedy=False``
    the argmax; both give the same results with two fewer passes over the logits.
    """
    logits = logits.float()
    temp, greedy, u = params[0], params[1] > 0, params[2]
    z = logits / temp[:, None] if scaled else logits  # [n, V]
    n, vocab = z.shape
    block = _block_size(vocab)
    if block is None:
        lse = torch.logsumexp(z, -1, keepdim=True)
        ids = _inverse_cdf(torch.exp(z - lse), u)
    else:
        nb = vocab // block
        zb = z.view(n, nb, block)
        peak, sumexp = _block_stats(zb)  # [n, nb] each
        lse = _combine_lse(peak, sumexp)  # [n, 1]
        mass = sumexp * torch.exp(peak - lse)  # probability of each block
        cdf = mass.cumsum(-1)
        target = u[:, None] * cdf[:, -1:]
        j = torch.searchsorted(cdf, target, right=True).clamp_(max=nb - 1)  # [n, 1]
        rest = target - (cdf.gather(1, j) - mass.gather(1, j))
        inner = torch.exp(zb.gather(1, j[:, :, None].expand(n, 1, block)).squeeze(1) - lse).cumsum(-1)  # [n, B]
        k = torch.searchsorted(inner, rest, right=True).clamp_(max=block - 1)
        ids = (j * block + k).squeeze(1)
    if any_greedy:
        ids = torch.where(greedy, logits.argmax(-1), ids)
    return ids, z.gather(1, ids[:, None]).squeeze(1) - lse.squeeze(1)


def _block_size(vocab: int) -> int | None:
    return next((b for b in (1024, 512, 256, 128) if vocab % b == 0 and vocab > b), None)


def _block_stats(zb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block max and sum of exp(z - max). zb [n, nb, B] -> [n, nb], [n, nb]."""
    peak = zb.amax(-1)
    return peak, torch.exp(zb - peak[..., None]).sum(-1)


def _combine_lse(peak: torch.Tensor, sumexp: torch.Tensor) -> torch.Tensor:
    top = peak.amax(-1, keepdim=True)
    return top + torch.log((sumexp * torch.exp(peak - top)).sum(-1, keepdim=True))  # [n, 1]


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp [n, V] -> [n, 1], block-wise where the vocabulary allows it."""
    n, vocab = x.shape
    block = _block_size(vocab)
    if block is None:
        return torch.logsumexp(x, -1, keepdim=True)
    return _combine_lse(*_block_stats(x.view(n, vocab // block, block)))


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index i with cdf[i-1] <= u * total < cdf[i]. probs [n, V] (unnormalised ok), u [n].

    Two levels when V splits into blocks: block sums, the block holding the target, then the
    position inside it. This reads ``probs`` once instead of writing a whole [n, V] prefix sum.
    """
    n, vocab = probs.shape
    block = next((b for b in (1024, 512, 256, 128) if vocab % b == 0 and vocab > b), None)
    if block is None:
        cdf = probs.cumsum(-1)  # [n, V]
        ids = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(1)
        return ids.clamp_(max=vocab - 1)
    blocks = probs.view(n, vocab // block, block)  # [n, nb, B]
    sums = blocks.sum(-1)  # [n, nb]
    cdf = sums.cumsum(-1)
    target = u[:, None] * cdf[:, -1:]  # [n, 1]
    j = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab // block - 1)  # [n, 1]
    rest = target - (cdf.gather(1, j) - sums.gather(1, j))  # mass to cover inside block j
    inner = blocks.gather(1, j[:, :, None].expand(n, 1, block)).squeeze(1).cumsum(-1)  # [n, B]
    k = torch.searchsorted(inner, rest, right=True).clamp_(max=block - 1)
    return (j * block + k).squeeze(1)


def _sample_filtered(probs: torch.Tensor, u: torch.Tensor, top_p: np.ndarray, top_k: np.ndarray) -> torch.Tensor:
    """Top-k then top-p (renormalised after top-k, as transformers' warpers do), then inverse CDF.

    Top-p keeps the smallest prefix of the sorted distribution whose mass reaches ``top_p``
    (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").
    """
    n, vocab = probs.shape
    device = probs.device
    k = np.where(top_k > 0, np.minimum(top_k, vocab), vocab)
    kmax = int(k.max())
    if kmax < vocab:
        sorted_p, order = probs.topk(kmax, dim=-1)  # [n, kmax], descending
    else:
        sorted_p, order = probs.sort(-1, descending=True)
    ranks = torch.arange(sorted_p.shape[-1], device=device)
    keep = ranks[None] < torch.from_numpy(k).to(device)[:, None]
    sorted_p = sorted_p * keep
    if (top_p < 1.0).any():
        mass = sorted_p.sum(-1, keepdim=True)
        before = sorted_p.cumsum(-1) - sorted_p
        p = torch.from_numpy(top_p.astype(np.float32)).to(device)[:, None]
        sorted_p = sorted_p * (before < p * mass)
    pick = _inverse_cdf(sorted_p, u)
    return order.gather(1, pick[:, None]).squeeze(1)
