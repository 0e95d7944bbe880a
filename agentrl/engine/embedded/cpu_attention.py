"""Decode attention on the CPU in one pass over each row's keys and values (float32, in C).

A decode step attends one new query per request to the request's cached keys and values. PyTorch's
CPU attention (``scaled_dot_product_attention``) runs it as many small matrix products, one pair
per (request, KV head), with a mask over the padded length; on two cores that took ~2.5x the time
of just reading the keys and values once (SmolLM2-135M, batch 32, 128 positions: 20-27 ms against
9-11 ms for 30 layers). This kernel reads them once: for each (request, KV head), in parallel, the
scores of the query heads that share the KV head, their softmax over the request's own positions
(no mask, nothing read past them), then the weighted sum of the values.

It is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
``$AGENTRL_CACHE/kernels/``, once per source, compiler and CPU: built with ``-march=native``, it is
named by a hash that includes the CPU's feature flags, so a build made on another CPU is never
loaded (:func:`compile_flags`). It links against PyTorch's own OpenMP runtime (GNU libgomp), so it
runs on the calling thread's worker threads like any PyTorch operator. Each (request, KV head) is computed by one thread in a fixed order, so a row's result
does not depend on its batch neighbours or the thread count. Without a compiler, or with a PyTorch
that does not use libgomp, :func:`unavailable` says why and the engine keeps SDPA.

Example::

    >>> import torch
    >>> if unavailable() is None:
    ...     q = torch.randn(2, 1, 3, 8)                       # [batch, kv heads, query heads per kv head, dim]
    ...     k, v = torch.randn(2, 1, 16, 8), torch.randn(2, 1, 16, 8)
    ...     out = decode_attention(q, k, v, torch.tensor([4, 15]), 8 ** -0.5)
    ...     ref = torch.softmax(q[0] @ k[0, :, :5].transpose(-1, -2) * 8 ** -0.5, -1) @ v[0, :, :5]
    ...     assert torch.allclose(out[0], ref, atol=1e-6)
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from agentrl.utils import cpu_features

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* q [B, H, G, D] contiguous (G query heads share KV head h); the key of row b, KV head h, position l
   is at k + b*sk_b + h*sk_h + l*sk_l (its D values contiguous), values alike. Row b attends to
   positions [0, pos[b]]. out [B, H, G, D]. Returns 0, or 1 when scratch memory ran out. */
int agentrl_decode_attention_f32(const float *q, const float *k, const float *v,
                                 int64_t sk_b, int64_t sk_h, int64_t sk_l,
                                 int64_t sv_b, int64_t sv_h, int64_t sv_l,
                                 const int64_t *pos, int64_t B, int64_t H, int64_t G, int64_t D,
                                 int64_t max_len, float scale, float *out, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *p = (float *)malloc(sizeof(float) * G * max_len);
        if (!p) failed = 1;
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            if (!p) continue;
            const int64_t b = bh / H, h = bh % H, n = pos[b] + 1;
            const float *qb = q + bh * G * D;
            const float *kb = k + b * sk_b + h * sk_h;
            const float *vb = v + b * sv_b + h * sv_h;
            float *ob = out + bh * G * D;
            for (int64_t l = 0; l < n; l++) {
                const float *kl = kb + l * sk_l;
                for (int64_t g = 0; g < G; g++) {
                    const float *qg = qb + g * D;
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t d = 0; d < D; d++) s += qg[d] * kl[d];
                    p[g * max_len + l] = s * scale;
                }
            }
            for (int64_t g = 0; g < G; g++) {
                float *pg = p + g * max_len;
                float m = pg[0];
                for (int64_t l = 1; l < n; l++) m = pg[l] > m ? pg[l] : m;
                float sum = 0.f;
#pragma omp simd reduction(+ : sum)
                for (int64_t l = 0; l < n; l++) {
                    pg[l] = expf(pg[l] - m);
                    sum += pg[l];
                }
                const float inv = 1.f / sum;
#pragma omp simd
                for (int64_t l = 0; l < n; l++) pg[l] *= inv;
                float *og = ob + g * D;
                for (int64_t d = 0; d < D; d++) og[d] = 0.f;
            }
            for (int64_t l = 0; l < n; l++) {
                const float *vl = vb + l * sv_l;
                for (int64_t g = 0; g < G; g++) {
                    const float w = p[g * max_len + l];
                    float *og = ob + g * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) og[d] += w * vl[d];
                }
            }
        }
        free(p);
    }
    return failed;
}
"""

# -ffast-math lets the exponentials vectorise (glibc's libmvec); every value the kernel reads is
# finite (positions past a row's length are never read), which is what fast-math assumes.
_FLAGS = ["-O3", "-ffast-math", "-fopenmp", "-fPIC", "-shared"]

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def unavailable() -> str | None:
    """Why the kernel cannot run here, or None when it is built (on the first call) and checked."""
    with _LOCK:
        if "reason" not in _STATE:
            try:
                _STATE["fn"] = _load()
                _STATE["reason"] = None
            except _Unavailable as e:
                _STATE["reason"] = str(e)
                log.info("CPU decode attention kernel not used: %s", e)
        return _STATE["reason"]


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the kernel cannot serve a model on ``device`` in ``dtype``, or None when it can."""
    if device.type != "cpu" or dtype != torch.float32:
        return f"the CPU kernel takes float32 on the CPU, not {dtype} on {device}"
    return unavailable()


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     scale: float, *, check_positions: bool = True) -> torch.Tensor:
    """Attention of one query per row over its cached keys/values.

    q [B, H, G, D] (G query heads per KV head), k/v [B, H, L, D] views (D contiguous, e.g. a block
    of the slot cache), positions [B] int64: row b attends to positions ``0..positions[b]`` (< L).
    float32 on the CPU. Returns [B, H, G, D]. ``check_positions=False`` skips the range check (a
    caller that checked once for all layers); a position out of range would read out of bounds."""
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(f"CPU decode attention kernel: {reason}")
    b, h, g, d = q.shape
    length = k.shape[2]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"decode_attention takes float32 CPU tensors; {name} is {t.dtype} on {t.device}")
    if k.shape != (b, h, length, d) or v.shape != k.shape or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError(f"keys/values must be [B, H, L, D] with D contiguous; got {tuple(k.shape)} "
                         f"strides {k.stride()} and {tuple(v.shape)} strides {v.stride()} for q {tuple(q.shape)}")
    pos = positions.to(torch.int64).contiguous()
    if pos.shape != (b,):
        raise ValueError(f"positions must have shape [{b}]; got {tuple(pos.shape)}")
    if check_positions and b and not 0 <= int(pos.min()) <= int(pos.max()) < length:
        raise ValueError(f"positions must be in [0, {length}); got {pos.tolist()}")
    q = q.contiguous()
    out = torch.empty_like(q)
    failed = _STATE["fn"](q.data_ptr(), k.data_ptr(), v.data_ptr(), *k.stride()[:3], *v.stride()[:3],
                          pos.data_ptr(), b, h, g, d, length, float(scale), out.data_ptr(),
                          torch.get_num_threads())
    if failed:
        raise MemoryError(f"CPU decode attention: no memory for {g * length} scores per thread")
    return out


class _Unavailable(Exception):
    """Why the kernel cannot be built or trusted here (becomes :func:`unavailable`'s answer)."""


def _load() -> Any:
    from agentrl.models import cache_dir
    from agentrl.utils.openmp import torch_libgomp

    if platform.system() != "Linux":
        raise _Unavailable(f"built only on Linux (this is {platform.system()})")
    gomp = torch_libgomp()
    if gomp is None:
        raise _Unavailable("PyTorch's OpenMP runtime here is not GNU libgomp")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise _Unavailable("no C compiler (set CC, or install gcc)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unavailable(f"the C compiler {cc!r} does not run: {e}") from None
    flags, cpu = compile_flags()
    key = hashlib.sha256("\0".join([_SOURCE, cc, version, *flags, gomp, cpu]).encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"decode_attention_{key}.so"
    if not path.exists():
        _build(cc, flags, gomp, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise _Unavailable(f"cannot load {path} (delete it to rebuild): {e}") from None
    fn = lib.agentrl_decode_attention_f32
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ptr, i64, i64, i64, i64, i64, ctypes.c_float,
                   ptr, ctypes.c_int]
    fn.restype = ctypes.c_int
    _check(fn)
    return fn


def compile_flags() -> tuple[list[str], str]:
    """The compiler flags and the CPU they target. ``-march=native`` (AVX2, AVX-512... whatever this
    CPU has) only where the CPU's features can be read: they are part of the cache key, so a build
    made on another CPU (a shared ``$AGENTRL_CACHE``, a copied folder) is never loaded here. Where
    they cannot be read, the build targets the compiler's baseline for the machine and runs anywhere."""
    signature = cpu_features.cpu_signature()
    if signature is None:
        return list(_FLAGS), f"{platform.machine()}|baseline"
    return [*_FLAGS, "-march=native"], signature


def _build(cc: str, flags: list[str], gomp: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, out = Path(tmp) / "decode_attention.c", Path(tmp) / path.name
        src.write_text(_SOURCE)
        cmd = [cc, *flags, str(src), "-o", str(out), gomp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise _Unavailable(f"compiling failed: {e}") from None
        if done.returncode != 0:
            raise _Unavailable(f"compiling failed ({' '.join(cmd)}): {done.stderr.strip()[-2000:]}")
        os.replace(out, path)  # atomic: another process may be building the same file
    log.info("built the CPU decode attention kernel: %s", path)


def _check(fn: Any) -> None:
    """The built kernel against PyTorch's attention on a small case with uneven lengths."""
    gen = torch.Generator().manual_seed(0)
    b, h, g, d, length = 3, 2, 3, 16, 20
    cache = torch.randn(b, 2, h, length + 4, d, generator=gen)
    k, v = cache[:, 0, :, :length], cache[:, 1, :, :length]  # strided views, as the slot cache gives
    q = torch.randn(b, h, g, d, generator=gen)
    pos = torch.tensor([0, 7, length - 1])
    out = torch.empty_like(q)
    fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), *k.stride()[:3], *v.stride()[:3], pos.data_ptr(), b, h, g, d,
       length, d**-0.5, out.data_ptr(), 1)
    mask = torch.arange(length)[None] <= pos[:, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=d**-0.5)
    err = (out - ref).abs().max().item()
    if not err < 1e-5:
        raise _Unavailable(f"the built kernel disagrees with PyTorch's attention (max error {err:.2e})")

