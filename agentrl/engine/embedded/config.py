"""Settings of the embedded engine, and the errors it raises for bad requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from agentrl.engine.base import EngineError

Backend = Literal["auto", "fast", "hf"]
DecodeAttention = Literal["sdpa", "efficient", "matmul", "cpu", "triton"]


class InvalidRequest(EngineError, ValueError):
    """A request the engine cannot serve as given (token id out of range, prompt too long...).

    It is both an :class:`~agentrl.engine.base.EngineError` and a ``ValueError``, so callers
    catching either see it; an HTTP front maps it to status 400.
    """


@dataclass
class EngineConfig:
    """Embedded engine: how it runs (none: chosen from the device at start-up)."""

    FLAGS: ClassVar[dict[str, str]] = {f"--engine-{name.replace('_', '-')}": name for name in (
        "max_batch_size", "max_seq_len", "backend", "cuda_graphs", "compile", "fuse_weights", "pack_weights",
        "decode_attention", "overlap", "admit_ahead", "prefill_token_budget", "mixed_prefill", "prefix_cache", "admit_wait_steps",
        "high_priority_stream", "kv_memory_fraction", "seed")}

    max_batch_size: int | None = None
    """Requests decoded together (KV-cache slots). Default: 64 in training; elsewhere 32 on CPU, and on CUDA 256, or
    fewer when the cache would not fit in ``kv_memory_fraction`` of the free GPU memory."""
    max_seq_len: int | None = None
    """Longest prompt + completion of one request, in tokens. Default: the model's
    ``max_position_embeddings`` capped at 4096 (CPU) or 8192 (CUDA)."""
    backend: Backend = "auto"
    """``fast``: the engine's own forward pass for Llama/Mistral/Qwen2/Qwen3 (slot KV cache, CUDA
    graphs); ``hf``: the HF model's own forward with one ``DynamicCache`` per request (any causal
    LM, slower); ``auto``: ``fast`` when the architecture allows it, else ``hf``."""
    cuda_graphs: bool | None = None
    """Capture the decode step in CUDA graphs, one per (batch bucket, length bucket), or with the
    Triton decode kernel one per (batch bucket, split count). Default: on for CUDA."""
    compile: bool | None = None
    """``torch.compile`` the small element-wise blocks (RMSNorm + residual, RoPE, SwiGLU) of the
    fast path. Default: on for CUDA with CUDA graphs, off on CPU."""
    fuse_weights: bool | None = None
    """Keep fused copies of q/k/v and gate/up projections (one matmul instead of three/two).
    Costs memory equal to those weights; refreshed by ``update_weights``. Default: on for CUDA."""
    pack_weights: bool | None = None
    """CPU, fast path: keep every projection matrix and the LM head also as a copy in oneDNN's
    blocked layout, packed once (and again at each ``update_weights``) instead of at every matmul.
    A float32 decode step of SmolLM2-135M at batch 32 took 100 ms instead of 155 on two cores
    (bench/results/engine_throughput_cpu_variants.md).
    Costs memory equal to the weights; the logits agree with the unpacked ones to float rounding,
    not bit for bit. Default: on for the CPU (float32, bfloat16) when PyTorch has oneDNN and
    ``compile`` is off."""
    decode_attention: DecodeAttention | None = None
    """Decode attention of the fast path: ``scaled_dot_product_attention`` with a length mask
    (``sdpa``: PyTorch picks the kernel; ``efficient``: the memory-efficient kernel), explicit
    matmul + softmax (``matmul``), or ``cpu``: a float32 CPU kernel in C that reads each row's keys
    and values once (:mod:`agentrl.engine.embedded.cpu_attention`, built on first use with the
    system C compiler), or ``triton``: one Triton kernel per layer on CUDA that applies RoPE, writes the
    new keys/values and attends over each row's own positions (:mod:`agentrl.engine.embedded.gpu_attention`).
    Default: ``cpu`` for float32 on the CPU when the kernel builds, ``triton`` on CUDA when Triton
    compiles it and the head size is a power of two of at least 32, else ``sdpa``."""
    overlap: bool | None = None
    """Launch decode step t+1 before reading step t's tokens (they stay on the device), so the GPU
    works while the host does bookkeeping; a request that finishes at step t is computed once more
    and that token dropped. Default: on for CUDA (fast path), off on CPU, where it gains nothing."""
    admit_ahead: bool = False
    """With ``overlap`` and ``mixed_prefill``: launch a mixed (admission) step while the decode step
    before it is still in flight, so that the host's admission work (prefix matching, moving parked
    keys/values, recording) runs while the GPU computes; and, with CUDA graphs, a default
    ``prefill_token_budget`` of the largest mixed graph's 2048 tokens, so that admissions replay graphs.
    Off by default: its CPU tests pass, but it has not yet been measured on a GPU (docs/engine.md)."""
    prefill_token_budget: int | None = None
    """Prompt tokens prefilled in one engine step. With ``mixed_prefill`` a longer prompt is cut into
    chunks over several steps; without, it goes alone. With mixed steps in CUDA graphs and a budget of
    at most the largest graph's 2048 tokens, a step's running rows count too, so that every step
    replays a graph (a larger budget asks for larger steps, which run eagerly). Default: 2048 on CUDA
    with ``admit_ahead``, mixed steps and CUDA graphs, else 4096 on CPU and 8192 on CUDA."""
    mixed_prefill: bool | None = None
    """Prefill inside the decode step: one forward pass over the running requests' next tokens and
    the new prompt tokens of waiting ones (up to ``prefill_token_budget``, long prompts in chunks),
    with a variable-length attention kernel over the slot cache; with the prefix cache, the samples
    of one prompt admitted together compute it once. Default: on for CUDA where the Triton kernel
    runs (:mod:`agentrl.engine.embedded.prefill_attention`), off on the CPU (prefills stay a forward
    pass of their own, whose results are bit-exact from run to run)."""
    prefix_cache: bool | None = None
    """Keep a finished request's keys/values in a free slot; a later prompt that starts with the same
    tokens (the next turn of an episode, another sample of the same prompt) copies them instead of
    prefilling them again. Parked entries are evicted oldest first when slots run out, and dropped at
    every weight update. Reused keys/values differ from recomputed ones in the last bits, which can flip
    a seeded draw near a tie: default on for CUDA (where bf16 results already depend on the batch), off
    on the CPU (runs repeat bit for bit). The HF backend has no slot cache."""
    admit_wait_steps: int | None = None
    """While requests are decoding, a new request may wait up to this many decode steps so that
    several arrivals share one prefill (each prefill is a separate forward pass and also breaks the
    step overlap); it is admitted at once when an eighth of the slots' worth of requests (or every
    free slot's) is waiting, or when nothing is decoding. 0: admit at every step (lowest latency).
    Default: 8 on CUDA (a decode step is a few ms there; in a multi-turn rollout on an H100 this cut
    engine time by ~15%, bench/results/engine_multiturn_h100_admit0.md and _admit8.md), 0 on the CPU, where a step
    takes tens of ms."""
    high_priority_stream: bool = False
    """CUDA: decode and prefill on a stream of the highest priority, so that when a trainer shares
    the GPU (async training on one device) the GPU's scheduler starts the engine's pending thread
    blocks before the trainer's. Off: the engine runs on the default stream."""
    kv_memory_fraction: float = 0.4
    """Share of free GPU memory the KV cache may take when ``max_batch_size`` is not given."""
    seed: int | None = None
    """Seeds the seeds of requests that do not set one (``None``: fresh entropy)."""

    def problems(self) -> list[str]:
        """:meth:`validate`'s complaint with the flag's name, or nothing."""
        try:
            self.validate()
        except ValueError as e:
            name, _, rest = str(e).partition(" ")
            flag = f"--engine-{name.replace('_', '-')}"
            return [f"{flag} {rest}" if flag in self.FLAGS else str(e)]
        return []

    def validate(self) -> None:
        if self.backend not in ("auto", "fast", "hf"):
            raise ValueError(f"backend must be 'auto', 'fast' or 'hf'; got {self.backend!r}")
        if self.decode_attention not in (None, "sdpa", "efficient", "matmul", "cpu", "triton"):
            raise ValueError("decode_attention must be 'sdpa', 'efficient', 'matmul', 'cpu' or 'triton'; "
                             f"got {self.decode_attention!r}")
        for name in ("max_batch_size", "max_seq_len", "prefill_token_budget"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if self.admit_wait_steps is not None and self.admit_wait_steps < 0:
            raise ValueError(f"admit_wait_steps must be >= 0; got {self.admit_wait_steps}")
        if not 0 < self.kv_memory_fraction <= 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1]; got {self.kv_memory_fraction}")
