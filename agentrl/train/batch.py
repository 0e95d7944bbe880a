"""The batch both trainers consume, and its split into optimiser steps and micro-batches.

A :class:`RolloutBatch` holds the samples of one rollout and their response-aligned tensors,
``[N, R]`` with ``R`` the longest response. Rows are **right-aligned** (left-padded): response
token ``j`` of a sample of length ``R_i`` sits in column ``R - R_i + j``. With left-padded
sequences every response ends in the last column, so a model's last ``R`` logits line up with
the columns without any gather (see ``TorchTrainer``). Every algorithm in ``agentrl.algo`` is
mask-aware and padding-invariant, so the alignment changes no loss value.

``turns`` carries the per-turn data of the samples (:class:`agentrl.algo.Turns`): the turn of
each response token (from ``Sample.turn_starts``), the per-turn rewards and an id per state key
(equal keys, equal ids), for the turn-level estimators. A sample that recorded no turns gets
them from its mask (each run of generated tokens is a turn) with its reward on the last one.

Example::

    >>> from agentrl.types import Sample
    >>> s = [Sample(prompt_ids=[1], response_ids=[5, 6], loss_mask=[1, 1], rollout_logprobs=[-1.0, -2.0]),
    ...      Sample(prompt_ids=[1, 2], response_ids=[7], loss_mask=[1], rollout_logprobs=[-3.0], group_id=1)]
    >>> b = RolloutBatch.from_samples(s)
    >>> b.loss_mask.tolist(), b.rollout_logprobs.tolist()
    ([[1.0, 1.0], [0.0, 1.0]], [[-1.0, -2.0], [0.0, -3.0]])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from agentrl.algo.turns import Turns
from agentrl.types import Sample


@dataclass
class RolloutBatch:
    samples: list[Sample]
    loss_mask: Tensor
    """``[N, R]`` float, 1 on engine-produced response tokens."""
    rollout_logprobs: Tensor | None
    """``[N, R]`` engine logprobs (0 where masked); None for demonstrations (no engine sampled them)."""
    rewards: Tensor
    """``[N]`` episode rewards."""
    group_ids: Tensor
    """``[N]`` long."""
    old_logprobs: Tensor | None = None
    """``[N, R]`` trainer logprobs before this rollout's updates."""
    ref_logprobs: Tensor | None = None
    """``[N, R]`` reference-model logprobs (KL loss)."""
    values: Tensor | None = None
    """``[N, R]`` critic values before the update (``gae``)."""
    advantages: Tensor | None = None
    """``[N, R]``."""
    returns: Tensor | None = None
    """``[N, R]`` value targets (``gae``)."""
    turns: Turns | None = None
    """Per-turn rewards, state ids and the turn of each column (``index`` ``[N, R]``)."""
    extra: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> "RolloutBatch":
        if not samples:
            raise ValueError("RolloutBatch needs at least one sample")
        samples = list(samples)
        width = max(1, max(len(s.response_ids) for s in samples))
        mask = torch.zeros(len(samples), width)
        logprobs = torch.zeros(len(samples), width)
        for i, s in enumerate(samples):
            n = len(s.response_ids)
            if n:
                mask[i, width - n:] = torch.tensor(s.loss_mask, dtype=torch.float32)
                logprobs[i, width - n:] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
        return cls(
            samples=samples,
            loss_mask=mask,
            rollout_logprobs=logprobs,
            rewards=torch.tensor([float(s.reward) for s in samples]),
            group_ids=torch.tensor([s.group_id for s in samples], dtype=torch.long),
            turns=turns_of(samples, width),
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def width(self) -> int:
        return self.loss_mask.shape[1]

    def select(self, idx: Sequence[int]) -> "RolloutBatch":
        """Rows ``idx``, trimmed to their own longest response (still right-aligned)."""
        rows = torch.as_tensor(list(idx), dtype=torch.long)
        width = max(1, max(len(self.samples[i].response_ids) for i in idx))

        def cut(t: Tensor) -> Tensor:
            return t[rows][:, self.width - width:]

        def cut_set(t: Tensor | None) -> Tensor | None:
            return None if t is None else cut(t)

        return RolloutBatch(
            samples=[self.samples[i] for i in idx],
            loss_mask=cut(self.loss_mask),
            rollout_logprobs=cut_set(self.rollout_logprobs),
            rewards=self.rewards[rows],
            group_ids=self.group_ids[rows],
            old_logprobs=cut_set(self.old_logprobs),
            ref_logprobs=cut_set(self.ref_logprobs),
            values=cut_set(self.values),
            advantages=cut_set(self.advantages),
            returns=cut_set(self.returns),
            turns=None if self.turns is None else Turns(
                index=cut(self.turns.index), rewards=self.turns.rewards[rows],
                states=None if self.turns.states is None else self.turns.states[rows]),
            extra={k: cut(v) for k, v in self.extra.items()},
        )


def turns_of(samples: Sequence[Sample], width: int) -> Turns:
    """The :class:`~agentrl.algo.Turns` of right-aligned samples ``width`` columns wide.

    Example::

        >>> s = Sample(response_ids=[5, 6, 7, 8], loss_mask=[1, 0, 1, 1], rollout_logprobs=[-1.0, 0, -1.0, -1.0],
        ...            num_turns=2, turn_starts=[0, 2], turn_rewards=[0.0, 1.0], state_keys=["a", None], reward=1.0)
        >>> t = turns_of([s], 5)
        >>> t.index.tolist(), t.rewards.tolist(), t.states.tolist()
        ([[-1, 0, 0, 1, 1]], [[0.0, 1.0]], [[0, -1]])
    """
    per_sample = [_sample_turns(s) for s in samples]
    k = max(1, max(len(starts) for starts, _, _ in per_sample))
    index = torch.full((len(samples), width), -1, dtype=torch.long)
    rewards = torch.zeros(len(samples), k)
    states = torch.full((len(samples), k), -1, dtype=torch.long)
    ids: dict[str, int] = {}
    for i, (s, (starts, turn_rewards, keys)) in enumerate(zip(samples, per_sample)):
        offset = width - len(s.response_ids)
        bounds = [*starts, len(s.response_ids)]
        for turn in range(len(starts)):
            index[i, offset + bounds[turn]:offset + bounds[turn + 1]] = turn
        rewards[i, :len(turn_rewards)] = torch.tensor(turn_rewards, dtype=torch.float32)
        for turn, key in enumerate(keys):
            if key is not None:
                states[i, turn] = ids.setdefault(key, len(ids))
    return Turns(index=index, rewards=rewards, states=states)


def _sample_turns(s: Sample) -> tuple[list[int], list[float], list[str | None]]:
    """``(turn starts, turn rewards, state keys)``; read off the mask when the sample recorded none."""
    starts = list(s.turn_starts) or [j for j, m in enumerate(s.loss_mask) if m and (j == 0 or not s.loss_mask[j - 1])]
    rewards = list(s.turn_rewards) or ([0.0] * (len(starts) - 1) + [float(s.reward)] if starts else [])
    return starts, rewards, list(s.state_keys)


def micro_batches(samples: Sequence[Sample], max_tokens: int) -> list[list[int]]:
    """Split sample indices into micro-batches whose padded size ``rows * longest`` stays
    within ``max_tokens`` (``--max-tokens-per-gpu``). Samples are sorted by length first so
    similar lengths share a micro-batch; a sample longer than the budget goes alone.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].tokens))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = len(samples[i].tokens)
        if current and max(longest, n) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def optimizer_steps(n: int, num_steps: int, seed: int | None = None) -> Iterator[list[int]]:
    """Split ``n`` sample indices into ``num_steps`` equal mini-batches (one optimiser step
    each), shuffled with ``seed`` when given."""
    if n % num_steps:
        raise ValueError(f"{n} samples cannot be split into {num_steps} equal optimiser steps")
    order = list(range(n))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g).tolist()
    size = n // num_steps
    for k in range(num_steps):
        yield order[k * size:(k + 1) * size]


def left_padded_inputs(samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu"):
    """``input_ids``, ``attention_mask`` and ``position_ids``, each ``[B, L]``, left-padded so
    every sequence ends in the last column."""
    length = max(len(s.tokens) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    attn = torch.zeros(len(samples), length, dtype=torch.long)
    for i, s in enumerate(samples):
        toks = s.tokens
        ids[i, length - len(toks):] = torch.tensor(toks, dtype=torch.long)
        attn[i, length - len(toks):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), attn.to(device), pos.to(device)
