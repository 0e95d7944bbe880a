"""Keeping a CPU run's resident memory close to what it uses.

glibc serves a freed block of up to 32 MB to later allocations instead of returning it to the
system: after the first large ``free`` it raises its mmap threshold to that block's size, so
the activations of a training step (tens of MB each) stay in the heap, and the heap only grows
as rollouts, evaluations and steps of other shapes interleave. :func:`release_freed_memory`
fixes the threshold at 4 MiB: every tensor that large gets its own mapping, returned when it is
freed. On the quickstart this took the peak from 5.9 to 4.5-4.8 GB (with gradient
checkpointing; ``docs/quickstart_run.md``). Elsewhere than glibc it does nothing.

Example::

    >>> release_freed_memory() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter: the size from which ``malloc`` maps memory of its own (glibc's malloc.h)."""
MMAP_THRESHOLD_BYTES = 4 << 20


def release_freed_memory(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (see the module doc); True when it was set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold)))
    except (OSError, AttributeError) as e:  # a libc without mallopt
        log.debug("mallopt unavailable: %s", e)
        return False
