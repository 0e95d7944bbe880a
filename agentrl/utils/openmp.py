"""Give back the calling thread's OpenMP worker threads, so another thread's parallel work runs at full speed.

PyTorch's CPU operators run on OpenMP (GNU libgomp in the Linux wheels), and libgomp keeps one pool
of worker threads per thread that has started parallel work. Once the process holds more such
threads than it has CPUs, libgomp makes every idle worker sleep almost at once instead of spinning,
and each parallel region (every matmul, every large element-wise operation) then waits for its
workers to wake. The embedded engine decodes on its own thread while the caller's thread (a trainer,
``generate()``, the model loading) has usually built a pool of its own: on two CPUs a float32 decode
step on the engine's thread took 127.7 ms instead of 99.4 for it
(``bench/results/engine_cpu_thread_float32.md``).

:func:`release_thread_pool` ends the calling thread's workers (OpenMP 5.0's
``omp_pause_resource_all(omp_pause_soft)``, which libgomp applies to the calling thread's pool
only). Nothing else changes: the thread's next parallel region starts new workers, which costs
about as much as one small operation. Other OpenMP runtimes (LLVM's libomp, Intel's libiomp5) pause
every thread of the process instead, so they are left alone, as are systems without ``/proc``.

Example::

    release_thread_pool()   # this thread is about to wait while another one runs parallel work
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

_OMP_PAUSE_SOFT = 1
_LOCK = threading.Lock()
_PAUSE: list[Any] | None = None  # omp_pause_resource_all of each libgomp loaded in this process


def _loaded_libgomp() -> list[str]:
    """Paths of the libgomp copies mapped into this process (PyTorch bundles its own)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libgomp" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def torch_libgomp() -> str | None:
    """Path of the GNU libgomp PyTorch runs its CPU operators on (the copy it bundles, or the
    system's), or None when PyTorch uses another OpenMP runtime or none is found."""
    torch = importlib.import_module("torch")
    paths = _loaded_libgomp()
    prefix = os.path.dirname(torch.__file__) + os.sep if torch.__file__ else None
    inside = [p for p in paths if prefix is not None and p.startswith(prefix)]
    if inside:
        return inside[0]
    return paths[0] if len(paths) == 1 else None


def _pause_functions() -> list[Any]:
    global _PAUSE
    with _LOCK:
        if _PAUSE is None:
            importlib.import_module("torch")  # its OpenMP runtime must be loaded before looking for it

            found = []
            for path in _loaded_libgomp():
                try:
                    fn = ctypes.CDLL(path).omp_pause_resource_all
                except (OSError, AttributeError):  # not loadable, or older than OpenMP 5.0
                    continue
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                found.append(fn)
            log.debug("libgomp runtimes that can release a thread's pool: %d", len(found))
            _PAUSE = found
        return _PAUSE


def release_thread_pool() -> bool:
    """End the OpenMP worker threads the calling thread started, if any. True when a libgomp
    runtime took the request (whether or not the thread had workers), False when there is none
    or the call came from inside a parallel region. Cheap when the thread has no workers."""
    ok = False
    for fn in _pause_functions():
        ok = fn(_OMP_PAUSE_SOFT) == 0 or ok
    return ok
