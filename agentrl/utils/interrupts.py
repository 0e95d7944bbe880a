"""Ctrl-C while a command imports its libraries: deferred to the end of the import, then one line.

A KeyboardInterrupt raised inside an extension's initialisation (torch imports C++ code that calls
back into Python) can abort the process (``terminate called after throwing ... KeyboardInterrupt``,
exit 134) instead of unwinding. :func:`deferred_interrupt` records a Ctrl-C that arrives inside it
and raises the KeyboardInterrupt once the block is done, where the command reports it in one line.
Some libraries wrap a KeyboardInterrupt in an error of their own (transformers' lazy imports raise
ModuleNotFoundError from it): :func:`interrupt_in` finds it among an error's causes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Inside: a Ctrl-C (SIGINT) is recorded, not raised; on leaving, KeyboardInterrupt if one came. Only in the main
    thread (elsewhere signals cannot be handled, and it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def record(signum: int, frame: Any) -> None:
        got.append(signum)

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if got:
        raise KeyboardInterrupt


def interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among ``error``'s causes and contexts (``error`` itself included), if any."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
