"""The engine contract: token ids in, token ids and logprobs out.

Every backend (the embedded engine, the SGLang client, the scripted fake in
``agentrl.testing``) implements :class:`Engine`. The rollout only ever talks to this protocol.

What only some engines can do is a small protocol of its own, checked with ``isinstance``
(they are ``runtime_checkable``: an engine has the capability when it has the methods):

* :class:`Closable`: resources to free when the run ends (a worker thread and KV cache, an HTTP
  client, an actor);
* :class:`ReleasesMemory`: frees its KV cache while a colocated trainer trains (``--colocate``);
* :class:`ReportsMetrics`: ``engine/...`` counters for the step metrics;
* :class:`LoadsWeightsFromDisk`: runs in other processes (SGLang servers, ``agentrl serve``) and
  reads new weights from a Hugging Face folder (:func:`agentrl.sync.sync_weights` writes one);
* :class:`OnDevice`: runs in this process on one torch device.

Example::

    >>> import asyncio
    >>> from agentrl.testing import FakeEngine
    >>> engine = FakeEngine(script=[[5, 6, 2]])
    >>> c = asyncio.run(engine.generate([1, 2, 3], SamplingParams(max_new_tokens=8)))
    >>> c.token_ids, c.finish_reason
    ([5, 6, 2], 'stop')
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort"]


GREEDY_BELOW = 1e-6
"""Temperatures below this mean greedy sampling, as in SGLang (``_SAMPLING_EPS``): float32 logits divided by a
temperature near float32's smallest normal number overflow to inf, then NaN."""


@dataclass
class SamplingParams:
    """How to sample one completion. Names follow SGLang's ``sampling_params``."""

    temperature: float = 1.0
    """0 (or anything below :data:`GREEDY_BELOW`) means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability."""
    top_k: int = -1
    """Top-k sampling: keep the k most likely tokens (-1 or 0: off)."""
    max_new_tokens: int = 256
    """Tokens to generate at most."""
    stop: list[str] = field(default_factory=list)
    """Stop strings. The matched string is kept in the output (as SGLang does by default)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end generation (kept in the output)."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (benchmarks)."""
    seed: int | None = None
    """Per-request sampling seed (None: unseeded)."""

    def validate(self) -> None:
        if not 0 <= self.temperature < float("inf"):  # NaN fails too
            raise ValueError(f"temperature must be a finite number >= 0; got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0; got {self.max_new_tokens}")
        if self.top_k is None or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 0; got {self.top_k}")

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    def to_sglang(self) -> dict[str, Any]:
        """The ``sampling_params`` dict of an SGLang ``/generate`` request."""
        d: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "ignore_eos": self.ignore_eos,
        }
        if self.stop:
            d["stop"] = list(self.stop)
        if self.stop_token_ids:
            d["stop_token_ids"] = list(self.stop_token_ids)
        if self.seed is not None:
            d["sampling_seed"] = self.seed
        return d

    @classmethod
    def from_sglang(cls, d: dict[str, Any]) -> "SamplingParams":
        """Parse SGLang's ``sampling_params`` (unknown keys are an error, not silently dropped)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = dict(d or {})
        if "sampling_seed" in d:
            d["seed"] = d.pop("sampling_seed")
        if isinstance(d.get("stop"), str):
            d["stop"] = [d["stop"]]
        ignored = {"n", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
                   "min_new_tokens", "frequency_penalty", "presence_penalty", "repetition_penalty",
                   "min_p", "regex", "json_schema", "custom_params"}
        unknown = sorted(set(d) - known - ignored)
        if unknown:
            raise ValueError(f"unknown sampling_params {unknown}; supported: {sorted(known)}")
        p = cls(**{k: v for k, v in d.items() if k in known and v is not None})
        p.stop = list(p.stop)
        p.stop_token_ids = list(p.stop_token_ids)
        p.validate()
        return p


@dataclass
class Completion:
    """What an engine returns for one request."""

    token_ids: list[int]
    """Generated tokens, including the stop/eos token when one ended the turn."""
    logprobs: list[float]
    """Log-probability of each generated token under the sampling distribution
    (log_softmax(logits / temperature); plain log_softmax(logits) when greedy)."""
    finish_reason: FinishReason
    weight_version: int = 0
    """Version of the weights that produced the tokens (bumped by each update)."""
    prompt_tokens: int = 0
    matched_stop: int | str | None = None
    """The stop token id or stop string that ended generation, if any."""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"token_ids and logprobs must have equal lengths; got {len(self.token_ids)} "
                f"and {len(self.logprobs)}"
            )


_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("agentrl_request_priority", default=0)


@contextlib.contextmanager
def request_priority(value: int) -> Iterator[None]:
    """Requests sent from this block, and from the tasks it starts, carry ``value``: an engine
    that queues requests for free slots takes lower values first (then the older request).

    The async loop runs each rollout under its index, so the turns of the rollout it will train
    on next are not queued behind a newer rollout's. The SGLang client sends it as SGLang's
    ``priority`` (negated: SGLang admits higher values first); engines without priorities ignore it.

    Example::

        >>> with request_priority(3):
        ...     current_request_priority()
        3
        >>> current_request_priority()
        0
    """
    token = _PRIORITY.set(int(value))
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def current_request_priority() -> int:
    """The priority of requests sent now (0 outside :func:`request_priority`)."""
    return _PRIORITY.get()


class EngineError(RuntimeError):
    """The engine could not serve a request (dead server, bad request, internal error)."""


@runtime_checkable
class Engine(Protocol):
    """An inference engine. All methods are coroutines; the engine owns its concurrency."""

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, rid: str | None = None
    ) -> Completion:
        """Sample one completion of ``input_ids``. ``rid`` names the request for :meth:`abort`."""
        ...

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        """Load new weights (a state dict, a path, or backend-specific); return the new version."""
        ...

    async def abort(self, rid: str | None = None) -> None:
        """Abort one request (or all when ``rid`` is None); aborted requests finish with 'abort'."""
        ...

    async def health(self) -> bool:
        """True when the engine can serve a generate request now."""
        ...

    @property
    def weight_version(self) -> int: ...


@runtime_checkable
class Closable(Protocol):
    """An engine that holds resources to free when the run ends."""

    async def close(self) -> None:
        """Free them (running requests finish with 'abort'); the engine serves no more requests."""
        ...


@runtime_checkable
class ReleasesMemory(Protocol):
    """An engine that can give its KV cache back while a trainer on the same GPU trains."""

    async def release_memory(self) -> None:
        """Free the KV cache (waits for running requests; new ones wait for :meth:`resume_memory`
        or allocate it again)."""
        ...

    async def resume_memory(self) -> None:
        """Allocate the KV cache again."""
        ...


@runtime_checkable
class ReportsMetrics(Protocol):
    """An engine with counters for the step metrics."""

    def metrics(self) -> dict[str, float]:
        """``engine/...`` numbers (counters since the engine started)."""
        ...


@runtime_checkable
class LoadsWeightsFromDisk(Protocol):
    """An engine in other processes: new weights reach it as a Hugging Face folder it reads."""

    async def update_weights_from_disk(self, path: str, *, version: int | None = None) -> int:
        """Load the model folder at ``path`` (readable by the engine's processes); return the new version."""
        ...


@runtime_checkable
class OnDevice(Protocol):
    """An engine in this process, on one torch device."""

    device: Any
    """The ``torch.device`` its model runs on."""
