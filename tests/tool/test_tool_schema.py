"""Schema generation from typed functions and Google-style docstrings."""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional

import pytest

from agentrl.tool import function_schema, parse_docstring, type_schema


def search(query: str, k: int = 3, mode: Literal["bm25", "dense"] = "bm25", filters: list[str] | None = None,
           min_score: float = 0.0, exact: bool = False) -> str:
    """Search the corpus for passages.

    Returns the best passages, one per line.

    Args:
        query: What to look for.
        k (int): How many passages
            to return.
        mode: Retrieval method.
        filters: Only these sources.
        min_score: Drop passages scoring lower.
        exact: Match the exact phrase.

    Returns:
        The passages.
    """
    return query


def test_full_schema_of_a_documented_function():
    s = function_schema(search)
    assert s["type"] == "function"
    fn = s["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the corpus for passages.\n\nReturns the best passages, one per line."
    params = fn["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert params["required"] == ["query"]
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["k"] == {"type": "integer", "description": "How many passages to return.", "default": 3}
    assert props["mode"] == {"type": "string", "enum": ["bm25", "dense"], "description": "Retrieval method.",
                             "default": "bm25"}
    assert props["filters"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                                "description": "Only these sources.", "default": None}
    assert props["min_score"]["type"] == "number" and props["exact"]["type"] == "boolean"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize("tp, expected", [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (type(None), {"type": "null"}),
    (Optional[int], {"type": ["integer", "null"]}),
    (int | None, {"type": ["integer", "null"]}),
    (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (Sequence[str], {"type": "array", "items": {"type": "string"}}),
    (list, {"type": "array", "items": {}}),
    (set[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                       "minItems": 2, "maxItems": 2}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (dict[str, list[int]], {"type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "integer"}}}),
    (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Color, {"type": "string", "enum": ["red", "blue"]}),
    (Annotated[str, "a city"], {"type": "string", "description": "a city"}),
    (Any, {}),
    (list[Literal["x", "y"]] | None, {"anyOf": [{"type": "array", "items": {"type": "string", "enum": ["x", "y"]}},
                                               {"type": "null"}]}),
])
def test_type_mapping(tp, expected):
    assert type_schema(tp) == expected


@pytest.mark.parametrize("tp", [bytes, complex, dict[int, str], object, Literal[b"x"]])
def test_unsupported_types_raise_type_error(tp):
    with pytest.raises(TypeError, match="unsupported|JSON object keys|Literal values"):
        type_schema(tp)


def test_unannotated_parameter_is_a_clear_type_error():
    def f(x, y: int):  # noqa: ANN001
        """F."""

    with pytest.raises(TypeError, match=r"tool 'f': parameter 'x' has no type annotation; expected e.g. `x: str`"):
        function_schema(f)


def test_var_args_rejected():
    def f(*args: int) -> int:
        return 0

    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        function_schema(f)


def test_async_function_method_and_explicit_name():
    class Box:
        async def fetch(self, url: str, timeout: float = 2.5) -> str:
            """Fetch a page."""
            return url

    s = function_schema(Box().fetch)
    assert s["function"]["name"] == "fetch"
    assert list(s["function"]["parameters"]["properties"]) == ["url", "timeout"]  # no self
    assert s["function"]["parameters"]["properties"]["timeout"]["default"] == 2.5
    p = functools.partial(search, k=5)
    with pytest.raises(TypeError, match="cannot derive a tool name"):
        function_schema(p)
    assert function_schema(p, name="search5")["function"]["name"] == "search5"


_NOT_JSON = object()


def test_no_docstring_and_non_json_default():
    def f(a: int, b: Color = Color.RED, c: Any = _NOT_JSON) -> None:
        pass

    fn = function_schema(f)["function"]
    assert fn["description"] == ""
    assert fn["parameters"]["properties"]["b"]["default"] == "red"
    assert "default" not in fn["parameters"]["properties"]["c"]
    assert fn["parameters"]["required"] == ["a"]


def test_docstring_sections_and_continuations():
    doc = """Do a thing
    over two lines.

    Second paragraph.

    Args:
        alpha: First line
            second line.
        beta (list[str]): Beta.
        *gamma: Star name.

    Raises:
        ValueError: never documented as a parameter.
    """
    description, params = parse_docstring(doc)
    assert description == "Do a thing over two lines.\n\nSecond paragraph."
    assert params == {"alpha": "First line second line.", "beta": "Beta.", "gamma": "Star name."}
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("Just a line.") == ("Just a line.", {})


def test_non_ascii_docstring():
    def f(ville: str) -> str:
        """Cherche une ville — 東京 ou Zürich.

        Args:
            ville: Nom de la ville (é, ü, 漢字).
        """
        return ville

    fn = function_schema(f)["function"]
    assert fn["description"] == "Cherche une ville — 東京 ou Zürich."
    assert fn["parameters"]["properties"]["ville"]["description"] == "Nom de la ville (é, ü, 漢字)."
