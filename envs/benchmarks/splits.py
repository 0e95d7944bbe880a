"""Train / held-out splits of a benchmark's items, fixed by a hash of each item's id.

A benchmark ships one list of items (BFCL's test cases, HumanEval's 164 problems). Training on
some of them and evaluating on the rest needs a split that does not move when the package adds
items or reorders a file: an item is held out when the SHA-256 of its id, read as a number, is
divisible by :data:`EVAL_EVERY` (one item in five). ``split="all"`` keeps every item, which is
what the benchmark's own leaderboard scores.

Example::

    >>> ids = [f"simple_python_{i}" for i in range(10)]
    >>> held_out = select(ids, "eval")
    >>> trained = select(ids, "train")
    >>> sorted(held_out + trained) == sorted(ids) and not set(held_out) & set(trained)
    True
    >>> select(ids, "all") == ids
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["EVAL_EVERY", "SPLITS", "check_split", "in_split", "select"]

EVAL_EVERY = 5
"""One item in ``EVAL_EVERY`` (by hash) is held out."""
SPLITS = ("all", "train", "eval")
"""Valid ``split`` arguments."""


def check_split(split: str) -> str:
    """``split`` itself, or a ValueError naming the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}; got {split!r}")
    return split


def in_split(item_id: str, split: str) -> bool:
    """Whether the item ``item_id`` belongs to ``split``."""
    if check_split(split) == "all":
        return True
    held_out = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") % EVAL_EVERY == 0
    return held_out == (split == "eval")


def select(ids: Sequence[str], split: str) -> list[str]:
    """The ids of ``split``, in their order."""
    return [i for i in ids if in_split(i, split)]
