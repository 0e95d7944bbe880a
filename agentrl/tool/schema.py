"""OpenAI-style JSON schemas generated from plain typed Python functions.

A tool is a function (sync or async) with type hints and a docstring. The first paragraph(s) of
the docstring, up to the first section header, become the description; a Google-style
``Args:`` section gives each parameter's description; type hints become JSON-schema types;
parameters with defaults are not required.

=====================================  ==============================================
Python annotation                      JSON schema
=====================================  ==============================================
``str`` / ``int`` / ``float`` / ``bool``  ``string`` / ``integer`` / ``number`` / ``boolean``
``None``                               ``null``
``list[X]``, ``Sequence[X]``, ``tuple[X, ...]``  ``{"type": "array", "items": X}``
``tuple[X, Y]``                        array with ``prefixItems``, fixed length
``dict[str, X]``, ``Mapping[str, X]``  ``{"type": "object", "additionalProperties": X}``
``Literal["a", "b"]``, ``enum.Enum``   ``{"type": "string", "enum": ["a", "b"]}``
``X | None``, ``Optional[X]``          ``{"type": [X, "null"]}`` (``anyOf`` for complex X)
``X | Y``                              ``{"anyOf": [X, Y]}``
``Annotated[X, "text"]``               X with ``"description": "text"``
``Any``                                ``{}`` (anything)
=====================================  ==============================================

Example::

    >>> from typing import Literal
    >>> def search(query: str, k: int = 3, mode: Literal["bm25", "dense"] = "bm25") -> str:
    ...     '''Search the corpus.
    ...
    ...     Args:
    ...         query: What to look for.
    ...         k: How many passages to return.
    ...     '''
    ...     return ""
    >>> s = function_schema(search)
    >>> s["function"]["name"], s["function"]["parameters"]["required"]
    ('search', ['query'])
    >>> s["function"]["parameters"]["properties"]["mode"]
    {'type': 'string', 'enum': ['bm25', 'dense'], 'default': 'bm25'}
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|Warnings?|"
    r"See Also|References|Attributes|Todo)\s*:\s*$", re.IGNORECASE)
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_PRIMITIVES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                               type(None): "null"}


def tool_name(fn: Callable[..., Any]) -> str:
    """The name a tool is called by: its ``__name__`` (a bound method's function name)."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name or name == "<lambda>":
        raise TypeError(f"cannot derive a tool name from {fn!r}; expected a named function, got "
                        f"{type(fn).__name__} (pass the tools as a {{name: function}} mapping)")
    return name


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {parameter: description}).

    Example::

        >>> parse_docstring('''Add numbers.
        ...
        ...     Args:
        ...         a (int): First.
        ...         b: Second,
        ...             continued.
        ...     ''')
        ('Add numbers.', {'a': 'First.', 'b': 'Second, continued.'})
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    base_indent = 0
    for line in lines:
        header = _SECTION.match(line)
        if header and len(line) - len(line.lstrip()) == 0:
            section = header.group(1).lower()
            current = None
            continue
        if section is None:
            description.append(line)
            continue
        if section not in ("args", "arguments", "parameters", "params") or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(line.strip())
        if match and (current is None or indent <= base_indent):
            current, base_indent = match.group(1), indent
            params[current] = match.group(3).strip()
        elif current is not None:
            params[current] = (params[current] + " " + line.strip()).strip()
    paragraphs = re.split(r"\n\s*\n", "\n".join(description).strip())
    text = "\n\n".join(" ".join(ln.strip() for ln in p.splitlines()) for p in paragraphs)
    return text, params


def type_schema(tp: Any, where: str = "type") -> dict[str, Any]:
    """JSON schema of one Python type annotation; raises TypeError for unsupported ones."""
    if tp is Any:
        return {}
    if tp in _PRIMITIVES:
        return {"type": _PRIMITIVES[tp]}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        schema = type_schema(args[0], where)
        texts = [a for a in args[1:] if isinstance(a, str)]
        if texts:
            schema["description"] = " ".join(texts)
        return schema
    if origin is typing.Literal:
        values = list(args)
        kinds = {_PRIMITIVES.get(type(v)) for v in values}
        if None in kinds:
            raise TypeError(f"{where}: Literal values must be str/int/float/bool/None, got {values!r}")
        schema = {"type": kinds.pop()} if len(kinds) == 1 else {}
        return {**schema, "enum": values}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return type_schema(typing.Literal[tuple(m.value for m in tp)], where)  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        subs = [type_schema(a, where) for a in non_null]
        if len(non_null) < len(args):  # Optional
            if len(subs) == 1 and set(subs[0]) == {"type"} and isinstance(subs[0]["type"], str):
                return {"type": [subs[0]["type"], "null"]}
            subs.append({"type": "null"})
        return subs[0] if len(subs) == 1 else {"anyOf": subs}
    if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Set,
                  collections.abc.Iterable, collections.abc.MutableSequence) or tp in (list, set):
        item = type_schema(args[0], where) if args else {}
        schema = {"type": "array", "items": item}
        return {**schema, "uniqueItems": True} if origin in (set, frozenset, collections.abc.Set) else schema
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", "items": type_schema(args[0], where) if args else {}}
        items = [type_schema(a, where) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or tp is dict:
        if args and args[0] is not str:
            raise TypeError(f"{where}: JSON object keys are strings, got dict key type {args[0]!r}")
        return {"type": "object", "additionalProperties": type_schema(args[1], where) if args else {}}
    raise TypeError(f"{where}: unsupported type annotation {tp!r}; expected str, int, float, bool, None, "
                    "list[...], tuple[...], dict[str, ...], Literal[...], an Enum, a Union/Optional or Any")


def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Resolved type hints of a function, method, ``functools.partial`` or callable object."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)) and callable(target):
        target = type(target).__call__
    return typing.get_type_hints(target, include_extras=True)


def function_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The OpenAI-style tool schema of ``fn``:
    ``{"type": "function", "function": {"name", "description", "parameters"}}``.

    Raises TypeError for a parameter without a type annotation, ``*args``/``**kwargs``, or an
    unsupported type.
    """
    name = name or tool_name(fn)
    try:
        hints = type_hints(fn)
    except Exception as e:  # noqa: BLE001 - unresolvable forward references and the like
        raise TypeError(f"tool {name!r}: could not resolve type hints: {e}") from e
    doc_target = fn.func if isinstance(fn, functools.partial) else fn
    description, arg_docs = parse_docstring(inspect.getdoc(doc_target))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args/**kwargs parameters are not supported "
                            f"(got {param}); list every parameter explicitly")
        if param.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} has no type annotation; "
                            f"expected e.g. `{param.name}: str`")
        schema = type_schema(hints[param.name], f"tool {name!r}, parameter {param.name!r}")
        if param.name in arg_docs and "description" not in schema:
            schema["description"] = arg_docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        elif _json_value(param.default):
            schema["default"] = param.default.value if isinstance(param.default, enum.Enum) else param.default
        properties[param.name] = schema
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required,
                       "additionalProperties": False}}}


def _json_value(value: Any) -> bool:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
