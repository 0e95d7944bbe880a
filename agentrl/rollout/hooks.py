"""User hooks, as in slime: ``--custom-generate-function-path`` and ``--custom-rm-path``.

* A generate function replaces the episode loop for each sample::

      async def my_generate(engine, template, request, config, *, reward_fn=None) -> Sample

  (the signature of :func:`agentrl.rollout.run_episode`; call it to wrap the default loop).
* A reward function scores a finished episode, replacing the environment's reward::

      def my_reward(sample: Sample) -> float | dict[str, float]     # or async def

  A dict gives named components; its ``"reward"`` key (or the sum) becomes ``sample.reward``.
"""

from __future__ import annotations

import inspect
from typing import Any

from agentrl.utils.imports import HookLoadError, load_object


def load_generate_fn(spec: str) -> Any:
    fn = load_object(spec, what="--custom-generate-function-path")
    if not inspect.iscoroutinefunction(fn):
        raise HookLoadError(f"--custom-generate-function-path {spec!r} must be an `async def` function "
                            "(engine, template, request, config, *, reward_fn=None) -> Sample")
    _check_arity(fn, 4, spec, "--custom-generate-function-path")
    return fn


def load_reward_fn(spec: str) -> Any:
    fn = load_object(spec, what="--custom-rm-path")
    if not callable(fn):
        raise HookLoadError(f"--custom-rm-path {spec!r} is not callable")
    _check_arity(fn, 1, spec, "--custom-rm-path")
    return fn


def _check_arity(fn: Any, n: int, spec: str, flag: str) -> None:
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError as e:
        raise HookLoadError(f"{flag} {spec!r} must accept {n} positional argument(s): {e}") from e
