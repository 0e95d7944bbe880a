"""Progress bars for every long phase, in one style: the rollout bar's.

A run shows a bar while it converts a model, builds a retrieval index, evaluates held-out sets and
rolls out; ``agentrl eval`` shows one over its prompts. Bars go to stderr (tqdm), so a run's
stdout stays its summary.

Example::

    >>> import io
    >>> with progress(2, "converting", unit="step", file=io.StringIO()) as bar:
    ...     bar.update()
    ...     bar.update()
    >>> bar.n
    2
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(total: int | None, desc: str, *, unit: str = "it", iterable: Iterable[Any] | None = None,
             **kwargs: Any) -> tqdm:
    """A tqdm bar of ``total`` ``unit``s labelled ``desc`` (``initial=``, ``disable=`` and the like pass through)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)
