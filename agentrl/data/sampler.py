"""Seeded, resumable iteration over prompts, epoch after epoch.

The order of epoch ``e`` is a permutation drawn from ``seed + e``, so the position
``(epoch, offset)`` is all the state there is: :meth:`state_dict` / :meth:`load_state_dict`
resume exactly where a run stopped.

Example::

    >>> s = PromptSampler(list(range(5)), seed=1)
    >>> first = s.next_batch(3); state = s.state_dict()
    >>> rest = s.next_batch(4)
    >>> s2 = PromptSampler(list(range(5)), seed=1); s2.load_state_dict(state)
    >>> s2.next_batch(4) == rest
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


class PromptSampler(Generic[T]):
    def __init__(self, items: Sequence[T], *, seed: int = 0, shuffle: bool = True):
        if not items:
            raise ValueError("PromptSampler needs at least one item")
        self.items = items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.items))
        return np.random.default_rng(self.seed + epoch).permutation(len(self.items))

    def next_batch(self, n: int) -> list[T]:
        """The next ``n`` items, crossing into the next epoch (reshuffled) when needed."""
        out: list[T] = []
        while len(out) < n:
            if self.offset >= len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(out), len(self._order) - self.offset)
            out.extend(self.items[int(i)] for i in self._order[self.offset : self.offset + take])
            self.offset += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "shuffle": self.shuffle,
                "size": len(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("size") not in (None, len(self.items)):
            raise ValueError(f"cannot resume: the data had {state['size']} rows, now {len(self.items)}")
        self.seed, self.shuffle = state["seed"], state["shuffle"]
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation(self.epoch)
