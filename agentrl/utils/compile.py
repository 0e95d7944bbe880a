"""``torch.compile`` with a fallback: a compiler failure costs speed, never the run."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class MaybeCompiled:
    """``torch.compile(fn, dynamic=True)`` that falls back to ``fn`` (once, with a warning) if compiling fails.

    Example::

        >>> double = MaybeCompiled(lambda x: 2 * x, enabled=False)
        >>> double(torch.ones(2)).tolist()
        [2.0, 2.0]
    """

    def __init__(self, fn, enabled: bool) -> None:
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=True) if enabled else None

    @property
    def active(self) -> bool:
        """Whether calls still go to the compiled function."""
        return self.compiled is not None

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception:  # noqa: BLE001 - any compiler failure: run eagerly instead
                log.warning("torch.compile of %s failed; running it eagerly", getattr(self.fn, "__name__", self.fn),
                            exc_info=True)
                self.compiled = None
        return self.fn(*args)
