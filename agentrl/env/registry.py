"""Environment registration on gymnasium's own registry, under the ``agentrl/`` namespace.

Entry points are lazy ``"module:Class"`` strings, so registering costs no import. Built-in
environments register when the ``envs`` package is imported; third-party packages can register
theirs through the ``agentrl.envs`` entry-point group (a function that calls :func:`register`).

Example::

    register("MyTask-v0", "my_package.my_env:MyEnv", max_turns=4)   # in my_package/__init__.py
    register("MyTask-Shaped-v0", "my_package.my_env:MyEnv",          # with gymnasium wrappers
             wrappers=[("my_package.shaping:StepPenalty", {"penalty": 0.1})])

    >>> env = make("agentrl/Echo-v0")          # gymnasium.make("agentrl/Echo-v0") works too
    >>> type(env.unwrapped).__name__
    'EchoEnv'
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import numbers
import os
import types
import typing
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

import gymnasium

from agentrl.env.core import TextEnv

log = logging.getLogger(__name__)

NAMESPACE = "agentrl"


class EnvNotFoundError(KeyError):
    """An environment id that is not registered (the message names the closest ids)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register(env_id: str, entry_point: str, *, max_turns: int | None = None, wrappers: Sequence[Any] = (),
             **kwargs: Any) -> None:
    """Register ``env_id`` (``"Name-v0"`` or ``"agentrl/Name-v0"``) with a lazy entry point.

    ``kwargs`` are default constructor arguments; ``max_turns`` wraps the env in
    :class:`~agentrl.env.wrappers.TurnLimit` when made through :func:`make`. ``wrappers`` are
    ``gymnasium.Wrapper`` classes applied in order around the env (innermost first), each a class,
    a ``"module:Class"`` string, or a ``(class or string, kwargs)`` pair; they are gymnasium's own
    ``additional_wrappers``, so ``gymnasium.make`` applies them too. An entry point may also be a
    function that returns a wrapped env.
    """
    full = env_id if "/" in env_id else f"{NAMESPACE}/{env_id}"
    if ":" not in entry_point:
        raise ValueError(f"entry_point must look like 'package.module:ClassName'; got {entry_point!r}")
    specs = tuple(_wrapper_spec(w) for w in wrappers)
    if full in gymnasium.registry:
        existing = gymnasium.registry[full]
        if existing.entry_point == entry_point and existing.additional_wrappers == specs:
            return  # re-registering the same thing (module imported twice) is harmless
        log.warning("re-registering %s: %s -> %s", full, existing.entry_point, entry_point)
        del gymnasium.registry[full]
    gymnasium.register(
        id=full,
        entry_point=entry_point,
        kwargs=dict(kwargs),
        max_episode_steps=max_turns,  # applied as our TurnLimit by make()
        disable_env_checker=True,
        order_enforce=False,
        additional_wrappers=specs,
    )


def _wrapper_spec(wrapper: Any) -> gymnasium.envs.registration.WrapperSpec:
    """A ``wrappers=`` item (class, ``"module:Class"``, or either with kwargs) as gymnasium's WrapperSpec."""
    from gymnasium.envs.registration import WrapperSpec

    target, kwargs = wrapper if isinstance(wrapper, tuple) else (wrapper, {})
    if isinstance(target, type) and issubclass(target, gymnasium.Wrapper):
        if "<locals>" in target.__qualname__:
            raise ValueError(f"wrapper {target.__qualname__} is defined inside a function; gymnasium loads "
                             "wrappers by 'module:Class', so define it at module level")
        target = f"{target.__module__}:{target.__qualname__}"
    if not isinstance(target, str) or ":" not in target or not isinstance(kwargs, dict):
        raise ValueError("each of wrappers= must be a gymnasium.Wrapper subclass or 'module:Class', optionally "
                         f"paired with a dict of keyword arguments; got {wrapper!r}")
    return WrapperSpec(name=target.rsplit(":", 1)[1], entry_point=target, kwargs=dict(kwargs))


def registered_ids() -> list[str]:
    """Every id in the ``agentrl/`` namespace (built-ins and plugins loaded)."""
    load_builtin_envs()
    return sorted(k for k in gymnasium.registry if k.startswith(f"{NAMESPACE}/"))


def make(env_id: str, *, max_turns: int | None = None, **kwargs: Any) -> TextEnv:
    """Create a registered environment with its wrappers and our budget wrapper.

    Unlike ``gymnasium.make``, this always returns a :class:`TextEnv` (so ``areset``/``astep``
    are reachable): the env itself, or the gymnasium wrappers of its registration (or of its entry
    point) seen as one (:func:`~agentrl.env.wrappers.as_text_env`); wrapped, outermost, in
    ``TurnLimit`` when ``max_turns`` is given or registered (instead of gymnasium's ``TimeLimit``).
    ``kwargs`` are checked against the entry point first (:func:`check_kwargs`): a misspelt name is
    refused with the closest one, a scalar parameter given a value of another type is refused too.
    """
    from agentrl.env.wrappers import TurnLimit, as_text_env

    full = resolve_id(env_id)
    if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int)):
        raise TypeError(f"max_turns must be an int >= 1; got {type(max_turns).__name__} {max_turns!r}")
    check_kwargs(full, kwargs)
    made = gymnasium.make(full, max_episode_steps=-1, disable_env_checker=True, **kwargs)
    if not isinstance(made.unwrapped, TextEnv):
        raise TypeError(f"{full} made a {type(made.unwrapped).__name__}, which is not an agentrl TextEnv")
    env = as_text_env(made)
    turns = max_turns if max_turns is not None else gymnasium.registry[full].max_episode_steps
    if turns is not None:
        env = TurnLimit(env, turns)
    return env


def check_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` when ``kwargs`` name a parameter the entry point of ``env_id`` does not take
    (with the closest name and every accepted one), or give a number, string or bool parameter a
    value of another type. Called by :func:`make` before the environment is built."""
    from gymnasium.envs.registration import load_env_creator

    entry_point = gymnasium.registry[env_id].entry_point
    if entry_point is None:
        return
    creator: Any = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    try:
        params = inspect.signature(creator).parameters
    except (TypeError, ValueError):  # a builtin or other callable without a signature: nothing to check
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), accepted, n=1)
        raise TypeError(f"{env_id} got unexpected keyword argument {unknown[0]!r}"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; it accepts: {', '.join(accepted) if accepted else '(none)'}")
    try:
        params = inspect.signature(creator, eval_str=True).parameters
    except Exception:  # unresolvable annotations are the constructor's business
        return
    for key, value in kwargs.items():
        allowed = _scalar_types(params[key].annotation)
        if allowed and not _fits(value, allowed):
            names = " or ".join(sorted(t.__name__ for t in allowed))
            raise TypeError(f"{env_id}: keyword argument {key!r} must be {names}; got {type(value).__name__} {value!r}")


_SCALARS = (bool, int, float, str)


def _scalar_types(hint: Any) -> tuple[type, ...]:
    """The types a parameter annotated ``hint`` accepts when it is a plain scalar (``int``, ``str | None``...);
    ``()`` for anything else (not checked)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not args or not all(a in _SCALARS or a is type(None) for a in args):
        return ()
    return tuple(args)


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    """Does ``value`` fit one of ``allowed`` (an int fits ``float``; a bool is no number; numpy scalars count; a path
    fits ``str``)?"""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool in allowed
    if value is None:
        return type(None) in allowed
    return (isinstance(value, (str, os.PathLike)) and str in allowed or isinstance(value, numbers.Integral) and int in allowed
            or isinstance(value, numbers.Real) and float in allowed)


def resolve_id(env_id: str) -> str:
    """Accept ``Name-v0``, ``agentrl/Name-v0`` or a known id; raise with suggestions otherwise."""
    load_builtin_envs()
    candidates = [env_id] if "/" in env_id else [f"{NAMESPACE}/{env_id}", env_id]
    for c in candidates:
        if c in gymnasium.registry:
            return c
    known = registered_ids()
    close = difflib.get_close_matches(
        env_id.lower(), [k.lower() for k in known] + [k.split("/", 1)[1].lower() for k in known], n=3, cutoff=0.4
    )
    by_lower = {k.lower(): k for k in known} | {k.split("/", 1)[1].lower(): k for k in known}
    hint = list(dict.fromkeys(by_lower[c] for c in close))  # the closest first
    msg = f"environment {env_id!r} is not registered"
    msg += f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
    msg += f" Registered: {', '.join(known) if known else '(none)'}"
    raise EnvNotFoundError(msg)


@functools.cache
def load_builtin_envs() -> None:
    """Import the ``envs`` package and plugins, once per process (each registers its environments)."""
    importlib.import_module("agentrl.testing.echo_env")
    try:
        importlib.import_module("envs")
    except ModuleNotFoundError as e:
        if e.name != "envs":
            raise
    for ep in entry_points(group="agentrl.envs"):
        try:
            hook = ep.load()
            if callable(hook):
                hook()
        except (Exception, SystemExit) as e:  # a broken plugin must not hide the others
            log.warning("could not load environment plugin %s: %s", ep.name, e)
