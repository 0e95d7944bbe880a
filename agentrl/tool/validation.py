"""Check a model's tool-call arguments against a tool's JSON schema, with readable errors.

Only the JSON-schema subset that :func:`agentrl.tool.schema.function_schema` produces is
understood (type, enum, items, prefixItems, min/maxItems, uniqueItems, additionalProperties,
anyOf, properties/required). Integral floats (``3.0``) are accepted as integers, as JSON
Schema itself does; booleans are never numbers.

Example::

    >>> params = {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"],
    ...           "additionalProperties": False}
    >>> validate_arguments(params, {"k": 3.0})
    {'k': 3}
    >>> try:
    ...     validate_arguments(params, {"kk": 3})
    ... except ArgumentError as e:
    ...     print(e)
    missing required argument 'k' (integer); unexpected argument 'kk' (did you mean 'k'?)
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                            "boolean": (bool,), "null": (type(None),), "array": (list, tuple),
                                            "object": (dict,)}


MAX_PROBLEMS = 10
"""Most problems one :class:`ArgumentError` lists (the rest are counted)."""


class ArgumentError(ValueError):
    """Arguments that do not fit a tool's parameters; the message is meant for the model."""


def describe(schema: dict[str, Any]) -> str:
    """Short human-readable form of a schema: ``integer``, ``list of string``, ``one of 'a', 'b'``."""
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(describe(s) for s in schema["anyOf"])
    t = schema.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array" and "items" in schema:
        return f"list of {describe(schema['items'])}" if schema["items"] else "list"
    return t or "any value"


def _check(value: Any, schema: dict[str, Any], where: str) -> tuple[Any, list[str]]:
    """(value converted where needed, problems)."""
    if not schema:
        return value, []
    if "anyOf" in schema:
        for sub in schema["anyOf"]:
            converted, sub_problems = _check(value, sub, where)
            if not sub_problems:
                return converted, []
        return value, [f"{where} must be {describe(schema)}, got {_show(value)}"]
    if "enum" in schema:
        ok = any(value == v and type(value) is type(v) for v in schema["enum"])
        return value, [] if ok else [f"{where} must be {describe(schema)}, got {_show(value)}"]
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if kinds:
        if "integer" in kinds and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not any(isinstance(value, _JSON_TYPES[t]) and not (isinstance(value, bool) and t in ("integer", "number"))
                   for t in kinds):
            return value, [f"{where} must be {describe(schema)}, got {_show(value)}"]
    problems: list[str] = []
    if isinstance(value, (list, tuple)):
        n = len(value)
        if "minItems" in schema and n < schema["minItems"] or "maxItems" in schema and n > schema["maxItems"]:
            problems.append(f"{where} must have {schema.get('minItems')} items, got {n}")
        subs = schema.get("prefixItems") or [schema.get("items", {})] * n
        out = []
        for i, (item, sub) in enumerate(zip(value, subs)):
            item, p = _check(item, sub, f"{where}[{i}]")
            out.append(item)
            problems += p
        value = out
        if schema.get("uniqueItems") and len({repr(v) for v in value}) != len(value):
            problems.append(f"{where} must not repeat items")
    elif isinstance(value, dict) and "additionalProperties" in schema and "properties" not in schema:
        value = dict(value)
        for k, v in value.items():
            value[k], p = _check(v, schema["additionalProperties"], f"{where}[{_name(k)}]")
            problems += p
    return value, problems


def validate_arguments(parameters: dict[str, Any], arguments: Any) -> dict[str, Any]:
    """Validate ``arguments`` against a tool's ``parameters`` schema; returns converted arguments.

    Raises :class:`ArgumentError` listing the problems (missing, unexpected, wrong type; the first
    :data:`MAX_PROBLEMS`, then how many more).
    """
    if not isinstance(arguments, dict):
        raise ArgumentError(f"arguments must be a JSON object, got {_show(arguments)}")
    props: dict[str, Any] = parameters.get("properties", {})
    problems = [f"missing required argument {k!r} ({describe(props.get(k, {}))})"
                for k in parameters.get("required", []) if k not in arguments]
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if key not in props:
            close = difflib.get_close_matches(key[:200], list(props), n=1)
            problems.append(f"unexpected argument {_name(key)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        out[key], p = _check(value, props[key], f"argument {key!r}")
        problems += p
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise ArgumentError("; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more problems" if more > 0 else ""))
    return out


def to_python(value: Any, tp: Any) -> Any:
    """Convert a validated JSON value to the annotated Python type (tuples, sets, Enums)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return to_python(value, args[0])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None):
                continue
            try:
                return to_python(value, a)
            except (TypeError, ValueError):
                continue
        return value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(to_python(v, args[0]) for v in value)
        return tuple(to_python(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin in (set, frozenset) and isinstance(value, list):
        return origin(to_python(v, args[0]) for v in value) if args else origin(value)
    if origin is list and isinstance(value, list) and args:
        return [to_python(v, args[0]) for v in value]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: to_python(v, args[1]) for k, v in value.items()}
    return value


def _name(key: str, limit: int = 60) -> str:
    """``repr(key)``, cut to ``limit`` characters (a model can send an argument name of any length)."""
    text = repr(key)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(key)} characters)"


def _show(value: Any) -> str:
    text = repr(value)
    kind = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {text[:60] + '...' if len(text) > 60 else text}"
