"""An OpenEnv environment (``openenv-core``) as an agentrl environment, in-process or over its server.

OpenEnv environments subclass ``openenv.core.env_server.interfaces.Environment``: ``reset(seed=None,
episode_id=None, **kwargs) -> Observation`` and ``step(action: Action) -> Observation``, where
``Action`` and ``Observation`` are pydantic models and an observation carries ``done``, ``reward``
and ``metadata``. The adapter runs one either in this process (``env="my_pkg.env:MyEnvironment"``,
the class or any callable making one) or through OpenEnv's own client against a running OpenEnv
server (``base_url="http://host:8000"``, ``GenericEnvClient``). The mapping:

* ``reset(seed, options)``: the OpenEnv ``reset`` gets the seed and the row's keys it names (every
  key when it takes ``**kwargs``; only ``reset_keys`` over a server). The opening message is the
  row's ``prompt`` (or ``instructions=``), the observation, and how to write an action: its JSON
  schema (``metadata`` left out).
* An observation becomes one ``user`` message: its only text field as is, else its fields (without
  ``done``, ``reward``, ``metadata``) as JSON.
* ``step(text)``: the reply is the action: a JSON object (a fenced one too) of the action's fields,
  or, for an action with exactly one required field, the reply itself as that field's value
  (OpenEnv's and verifiers' rule). A reply that is no valid action gets an ``Invalid action: ...``
  message back, reward 0, and the episode goes on (the turn budget ends it). ``reward`` is the
  observation's (None counts 0), ``terminated`` its ``done``, its ``metadata`` (made JSON-safe) ``info``.
* ``oracle(seed)`` on an in-process environment (its actions, called after ``reset``) becomes the
  adapter's, so ``agentrl check-env --exploits`` also checks that it earns full reward.
* Not carried over: OpenEnv's MCP tool environments (``CallToolAction``/``ListToolsAction``: give
  the tools to agentrl through :mod:`agentrl.env.adapters.mcp_tools` instead), ``state``, transforms
  beyond what the environment applies itself, OpenEnv's container/UV providers (start the server
  yourself and pass ``base_url``), and non-text observations (shown as JSON).

Example::

    >>> env = OpenEnvEnv("my_envs.echo:EchoEnvironment")                     # doctest: +SKIP
    >>> env.reset(seed=0)[0][0]["content"]                                   # doctest: +SKIP
    'Echo environment ready!\\n\\nReply with the action: ...'
    >>> env.step("hello")[1:3]                                              # doctest: +SKIP
    (0.5, False)
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.utils.extras import require

_BASE_FIELDS = frozenset({"done", "reward", "metadata"})


class OpenEnvEnv(TextEnv):
    """An OpenEnv ``Environment`` in-process, or an OpenEnv server by URL (see the module docstring).

    Args:
        env: the ``Environment`` subclass, a ``"module:Class"`` string, or a callable making one.
        base_url: an OpenEnv server to play instead (``http://`` or ``ws://``); exclusive with ``env``.
        action: the ``Action`` class (default: the annotation of ``env.step``'s ``action``; over a
            server, the server's ``/schema``).
        env_kwargs: keyword arguments of the environment's constructor.
        instructions: text that opens every episode before the first observation.
        reset_keys: the row's keys passed on to a server's ``reset`` (in-process: those its
            ``reset`` names).
        timeout: seconds to connect to a server and for each of its answers.
    """

    def __init__(self, env: Callable[..., Any] | str | None = None, *, base_url: str | None = None,
                 action: Any = None, env_kwargs: Mapping[str, Any] | None = None,
                 instructions: str = "", reset_keys: Sequence[str] = (), timeout: float = 30.0):
        super().__init__()
        require("openenv", extra="openenv", what="OpenEnv environments", package="openenv-core")
        from agentrl.utils.imports import load_object

        if (env is None) == (base_url is None):
            raise ValueError("give an OpenEnv environment (env=) or the URL of an OpenEnv server (base_url=)")
        self.instructions, self.reset_keys, self.timeout = instructions, tuple(reset_keys), float(timeout)
        self.inner: Any = None
        self.client: Any = None
        self.action_cls: Any = load_object(action, what="OpenEnv action class") if isinstance(action, str) else action
        if env is not None:
            factory = load_object(env, what="OpenEnv environment") if isinstance(env, str) else env
            if not callable(factory):
                raise TypeError(f"env must be an OpenEnv Environment class or a callable making one; got {factory!r}")
            self.inner = factory(**dict(env_kwargs or {}))
            for required in ("reset", "step"):
                if not callable(getattr(self.inner, required, None)):
                    raise TypeError(f"{type(self.inner).__name__} is no OpenEnv Environment: it lacks {required}()")
            self.action_cls = self.action_cls or _action_class(self.inner)
            self.action_schema = _shown_schema(self.action_cls.model_json_schema())
            if callable(getattr(self.inner, "oracle", None)):
                self.oracle = self._oracle  # the exploit check then requires it to earn full reward
        else:
            from openenv.core import GenericEnvClient

            assert base_url is not None
            self.client = GenericEnvClient(base_url=base_url, connect_timeout_s=self.timeout,
                                           message_timeout_s=self.timeout).sync()
            self.client.connect()
            schema = (self.action_cls.model_json_schema() if self.action_cls is not None
                      else _server_schema(base_url, self.timeout))
            self.action_schema = _shown_schema(schema)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        row = dict(options or {})
        if self.inner is not None:
            kwargs = _accepted(self.inner.reset, {k: v for k, v in row.items() if k != "prompt"})
            observation = self.inner.reset(seed=seed, **kwargs)
            fields, done = _fields(observation), bool(observation.done)
        else:
            result = self.client.reset(seed=seed, **{k: row[k] for k in self.reset_keys if k in row})
            fields, done = _plain(result.observation), bool(result.done)
        opening = [str(p) for p in (row.get("prompt") or self.instructions, _text(fields)) if p]
        opening.append("Reply with the action: a JSON object of this schema"
                       + (f", or just the value of its one required field {self._single!r}" if self._single else "")
                       + f".\n{json.dumps(self.action_schema)}")
        return [{"role": "user", "content": "\n\n".join(opening)}], {"openenv_done_at_reset": done}

    @property
    def _single(self) -> str | None:
        required = self.action_schema.get("required") or []
        return required[0] if len(required) == 1 else None

    def step(self, action: str):
        if self.inner is None and self.client is None:
            raise RuntimeError("the environment is closed")
        try:
            payload = _parse_action(action, self._single)
        except ValueError as e:
            return self._invalid(str(e))
        if self.inner is not None:
            try:
                act = self.action_cls.model_validate(payload)
            except Exception as e:  # pydantic's ValidationError: the reply is no action of this environment
                return self._invalid(_first_line(e))
            observation = self.inner.step(act)
            fields, reward, done = _fields(observation), observation.reward, bool(observation.done)
            metadata = dict(observation.metadata or {})
        else:
            try:
                result = self.client.step(payload)
            except RuntimeError as e:  # the server's answer to an action it cannot read
                if "VALIDATION_ERROR" not in str(e) and "INVALID_JSON" not in str(e):
                    raise
                return self._invalid(_first_line(e))
            fields = _plain(result.observation)
            metadata = dict(fields.pop("metadata", None) or {})
            reward, done = result.reward, bool(result.done)
        text = _text(fields)
        messages = [{"role": "user", "content": text}] if text else []
        return messages, float(reward or 0.0), done, False, _jsonable(metadata)

    def _oracle(self, seed: int) -> list[str]:
        """The environment's own ``oracle(seed)`` (its actions after ``reset``), as replies."""
        return [json.dumps(a.model_dump(mode="json", exclude={"metadata"})) if hasattr(a, "model_dump")
                else a if isinstance(a, str) else json.dumps(a) for a in self.inner.oracle(seed)]

    def _invalid(self, why: str):
        hint = f" (or just the value of {self._single!r})" if self._single else ""
        return ([{"role": "user", "content": f"Invalid action: {why}. Reply with a JSON object of the action's "
                  f"fields{hint}."}], 0.0, False, False, {"invalid_action": True})

    def close(self) -> None:
        inner, self.inner = self.inner, None
        client, self.client = self.client, None
        if inner is not None and callable(getattr(inner, "close", None)):
            inner.close()
        if client is not None:
            client.close()
        super().close()


def _action_class(env: Any) -> type:
    """The ``Action`` subclass ``env.step`` is annotated with."""
    try:
        hint = typing.get_type_hints(type(env).step).get("action")
    except Exception:  # unresolvable annotations: fall through to the error below
        hint = None
    if not (isinstance(hint, type) and callable(getattr(hint, "model_validate", None))):
        raise TypeError(f"{type(env).__name__}.step has no Action annotation on its action parameter; "
                        "pass action=YourAction")
    return hint


def _server_schema(base_url: str, timeout: float) -> dict[str, Any]:
    import httpx

    url = base_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/")
    response = httpx.get(f"{url}/schema", timeout=timeout)
    response.raise_for_status()
    return dict(response.json()["action"])


def _shown_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The action's JSON schema without OpenEnv's ``metadata`` field (no action of the model sets it)."""
    shown = {k: v for k, v in schema.items() if k not in ("title", "description", "additionalProperties")}
    shown["properties"] = {k: v for k, v in dict(schema.get("properties") or {}).items() if k != "metadata"}
    shown["required"] = [k for k in schema.get("required") or [] if k != "metadata"]
    return shown


def _parse_action(text: str, single: str | None) -> dict[str, Any]:
    """The reply as an action dict: a JSON object (fenced too), else the single required field's value."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and stripped.count("\n") >= 1:
        stripped = "\n".join(stripped.splitlines()[1:-1]).strip()
    try:
        value = json.loads(stripped)
    except ValueError:
        value = stripped
    if isinstance(value, dict):
        return value
    if single is None:
        raise ValueError("the reply is not a JSON object")
    return {single: value}


def _fields(observation: Any) -> dict[str, Any]:
    return {k: v for k, v in observation.model_dump(mode="json").items() if k not in _BASE_FIELDS}


def _plain(observation: Any) -> dict[str, Any]:
    data = observation.model_dump(mode="json") if hasattr(observation, "model_dump") else dict(observation or {})
    return {k: v for k, v in data.items() if k not in ("done", "reward")}


def _text(fields: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in fields.items() if k != "metadata"}
    texts = [v for v in shown.values() if isinstance(v, str)]
    if len(shown) == 1 and len(texts) == 1:
        return texts[0]
    return json.dumps(shown, ensure_ascii=False) if shown else ""


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:3])[:300] if lines else type(e).__name__


def _accepted(fn: Callable[..., Any], row: dict[str, Any]) -> dict[str, Any]:
    """The row's keys that ``fn`` takes (every key when it has ``**kwargs``), seed and episode id aside."""
    params = inspect.signature(fn).parameters.values()
    row = {k: v for k, v in row.items() if k not in ("seed", "episode_id")}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return row
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in row.items() if k in names}


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        try:
            json.dumps(v, allow_nan=False)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = repr(v)
    return out
