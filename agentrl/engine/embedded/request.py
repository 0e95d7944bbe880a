"""What the scheduler keeps per request, its counters, and safe resolution of result futures."""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentrl.engine.base import SamplingParams


@dataclass(eq=False)
class Request:
    """One generate call as the scheduler sees it."""

    rid: str
    prompt: list[int]
    sampling: SamplingParams
    seed: int
    max_new: int
    """max_new_tokens, capped so prompt + completion fit max_seq_len."""
    future: cf.Future = field(default_factory=cf.Future)
    version: int = 0
    arrival_step: int = 0
    """The scheduler's decode-step count when the request arrived (admission batching)."""
    priority: int = 0
    """Waiting requests are admitted lowest priority first, then in arrival order
    (:func:`agentrl.engine.base.request_priority`)."""
    tokens: np.ndarray = field(init=False)
    """``prompt`` as an int64 array, made with the request (on the caller's thread)."""

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.prompt, dtype=np.int64)


@dataclass
class SchedulerStats:
    steps: int = 0
    prefills: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finished: int = 0
    busy_s: float = 0.0
    """Wall time the worker was not waiting for work (commands, prefill, decode, bookkeeping)."""
    decode_s: float = 0.0
    """Wall time during which a decode step was in flight (launched, its sampled ids not yet on the host);
    overlapping steps count once, so ``prefill_s + decode_s <= busy_s``."""
    prefill_s: float = 0.0
    """Wall time of prefills, up to their sampled ids on the host."""
    launch_s: float = 0.0
    """Host time spent launching decode steps (the CPU side of ``decode_s``)."""
    eager_s: float = 0.0
    """The part of ``launch_s`` spent on steps that ran eagerly (not replayed from a CUDA graph)."""
    capture_s: float = 0.0
    """Host time spent capturing CUDA graphs (warm-up runs included)."""
    cached_prompt_tokens: int = 0
    """Prompt tokens whose keys/values came from the prefix cache instead of a prefill."""
    graph_steps: int = 0
    """Decode steps replayed from a captured CUDA graph (the rest ran eagerly)."""
    graphs_captured: int = 0
    """CUDA graphs captured so far (one per batch bucket, length bucket and sampling mode)."""


def resolve(fut: cf.Future, value: Any) -> None:
    try:
        if not fut.done():
            fut.set_result(value)
    except cf.InvalidStateError:  # cancelled by the caller meanwhile
        pass


def fail(fut: cf.Future, exc: BaseException) -> None:
    try:
        if not fut.done():
            fut.set_exception(exc)
    except cf.InvalidStateError:
        pass
