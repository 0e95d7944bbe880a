"""What this CPU can run: the instruction-set features behind the fast CPU paths.

Two paths depend on the CPU beyond plain x86-64 (or AArch64):

* bf16 weights packed for oneDNN (the embedded engine's ``pack_weights`` in bfloat16): oneDNN's
  bf16 kernels need AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX on x86 (BF16 on Arm). A CPU with AVX2
  alone has none; PyTorch then refuses to pack (``mkldnn_reorder_linear_weight: bf16 path needs the
  cpu support avx_ne_convert or avx512bw...``). :func:`bf16_packing_unsupported` asks oneDNN itself
  by packing a small matrix, so it also honours ``ONEDNN_MAX_CPU_ISA`` (set before torch loads:
  ``ONEDNN_MAX_CPU_ISA=AVX2`` makes an AVX-512 machine behave as an AVX2 one).
* the C decode-attention kernel (:mod:`agentrl.engine.embedded.cpu_attention`), compiled with
  ``-march=native`` for the CPU that builds it: :func:`cpu_signature` names that CPU, so a cached
  build is only loaded on a CPU with the same features.

Everything else runs through PyTorch's own kernels, which pick their instruction set at run time.

Example::

    >>> reason = bf16_packing_unsupported()
    >>> reason is None or "bf16" in reason
    True
"""

from __future__ import annotations

import functools
import os
import platform

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``avx2``, ``avx512bw``, ``amx_bf16``...); empty
    where they cannot be read (another OS, no ``/proc``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, Arm
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_signature() -> str | None:
    """The machine, CPU model and sorted feature flags: code compiled with ``-march=native`` on one
    CPU runs on another of the same signature. None where the flags cannot be read."""
    flags = cpu_flags()
    if not flags:
        return None
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{' '.join(sorted(flags))}"


@functools.cache
def bf16_packing_unsupported() -> str | None:
    """Why oneDNN cannot pack bf16 weights on this CPU, or None when it can (asked once, by packing
    a 16 x 16 bf16 matrix, the operation the engine performs)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return "this PyTorch build has no oneDNN (mkldnn) linear"
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), 1)
    except RuntimeError as e:
        limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
        known = "bf16 path needs" in str(e)  # PyTorch's own check: say it in our words
        return ("oneDNN has no bf16 kernels for this CPU (they need AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX"
                + (f"; ONEDNN_MAX_CPU_ISA={limit} is set" if limit else "") + ")"
                + ("" if known else f": {str(e).splitlines()[0]}"))
    return None
