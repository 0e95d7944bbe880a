"""A scripted engine for tests: returns the token ids it was given, with logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from agentrl.engine.base import Completion, FinishReason, SamplingParams

ScriptItem = Sequence[int] | Completion
Responder = Callable[[list[int], SamplingParams], ScriptItem]


class FakeEngine:
    """Answers each ``generate`` call with the next scripted completion.

    ``script`` is a list of token-id lists (or :class:`Completion` objects), consumed in call
    order; or pass ``responder(input_ids, sampling)`` to compute the answer from the request.
    Token-id answers get logprob ``-0.1 * (i + 1)`` for the i-th token, are cut at
    ``max_new_tokens`` (finish ``length``), and finish with ``stop`` otherwise. ``latency``
    seconds are awaited before each answer, so concurrency can be tested.

    Example::

        >>> import asyncio
        >>> e = FakeEngine(script=[[7, 8]])
        >>> asyncio.run(e.generate([1], SamplingParams())).logprobs
        [-0.1, -0.2]
    """

    def __init__(
        self,
        script: Sequence[ScriptItem] | None = None,
        *,
        responder: Responder | None = None,
        latency: float = 0.0,
        fail_with: Exception | None = None,
    ) -> None:
        if (script is None) == (responder is None):
            raise ValueError("give exactly one of script= or responder=")
        self._script = list(script or [])
        self._responder = responder
        self.latency = latency
        self.fail_with = fail_with
        self.requests: list[tuple[list[int], SamplingParams]] = []
        self._weight_version = 0
        self._aborted: set[str] = set()
        self._abort_all = False

    @property
    def weight_version(self) -> int:
        return self._weight_version

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, rid: str | None = None
    ) -> Completion:
        self.requests.append((list(input_ids), sampling))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail_with is not None:
            raise self.fail_with
        if self._abort_all or (rid is not None and rid in self._aborted):
            return Completion([], [], "abort", self._weight_version, len(input_ids))
        if self._responder is not None:
            item = self._responder(list(input_ids), sampling)
        elif self._script:
            item = self._script.pop(0)
        else:
            raise RuntimeError("FakeEngine script exhausted: more generate calls than scripted answers")
        if isinstance(item, Completion):
            return item
        ids = list(item)[: sampling.max_new_tokens]
        finish: FinishReason = "length" if len(ids) < len(item) else "stop"
        logprobs = [round(-0.1 * (i + 1), 6) for i in range(len(ids))]
        return Completion(ids, logprobs, finish, self._weight_version, len(input_ids))

    async def update_weights(self, weights: Any = None, *, version: int | None = None) -> int:
        self._weight_version = self._weight_version + 1 if version is None else version
        return self._weight_version

    async def abort(self, rid: str | None = None) -> None:
        if rid is None:
            self._abort_all = True
        else:
            self._aborted.add(rid)

    async def health(self) -> bool:
        return self.fail_with is None
