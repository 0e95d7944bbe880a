"""User hooks, as in slime: ``--custom-generate-function-path`` and ``--custom-rm-path``.

* A generate function replaces the episode loop for each sample::

      async def my_generate(engine, template, request, config, *, reward_fn=None) -> Sample

  (the signature of :func:`agentrl.rollout.run_episode`; call it to wrap the default loop).
* A reward function scores a finished episode, replacing the environment's reward::

      def my_reward(sample: Sample) -> float | dict[str, float]     # or async def

  A dict gives named components; its ``"reward"`` key (or the sum) becomes ``sample.reward``.

slime's own contracts are accepted too, recognised by signature and adapted by
:mod:`agentrl.rollout.slime_hooks` (which documents what maps and what does not)::

      async def generate(args, sample, sampling_params) -> Sample      # slime's Sample
      async def reward(args, sample, **kwargs) -> float

Both are loaded at start-up, before the model: a hook that cannot be imported, is missing from its module
(with the close names it has) or has the wrong shape stops the run with one line (:class:`HookLoadError`).
"""

from __future__ import annotations

import inspect
from typing import Any

from agentrl.utils.imports import HookLoadError, load_object


def load_generate_fn(spec: str) -> Any:
    from agentrl.rollout import slime_hooks

    slime_hooks.install_stand_ins()  # a slime hook file imports slime.utils.types etc.
    fn = load_object(spec, what="--custom-generate-function-path")
    if slime_hooks.is_slime_generate(fn):
        return slime_hooks.adapt_generate(fn)
    if not inspect.iscoroutinefunction(fn):
        raise HookLoadError(f"--custom-generate-function-path {spec!r} must be an `async def` function "
                            "(engine, template, request, config, *, reward_fn=None) -> Sample, or slime's "
                            "(args, sample, sampling_params) -> Sample")
    _check_arity(fn, 4, spec, "--custom-generate-function-path")
    return fn


def load_reward_fn(spec: str) -> Any:
    from agentrl.rollout import slime_hooks

    slime_hooks.install_stand_ins()
    fn = load_object(spec, what="--custom-rm-path")
    if not callable(fn):
        raise HookLoadError(f"--custom-rm-path {spec!r} is not callable")
    if slime_hooks.is_slime_reward(fn):
        return slime_hooks.adapt_reward(fn)
    _check_arity(fn, 1, spec, "--custom-rm-path")
    return fn


def _check_arity(fn: Any, n: int, spec: str, flag: str) -> None:
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError as e:
        raise HookLoadError(f"{flag} {spec!r} must accept {n} positional argument(s): {e}") from e
