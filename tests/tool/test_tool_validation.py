"""Argument validation against generated schemas."""

from typing import Literal

import pytest

from agentrl.tool import ArgumentError, function_schema, validate_arguments
from agentrl.tool.validation import to_python


def f(name: str, count: int = 1, ratio: float = 0.5, tags: list[str] | None = None,
      mode: Literal["a", "b"] = "a", pair: tuple[int, str] = (0, ""), weights: dict[str, float] | None = None) -> None:
    """F."""


PARAMS = function_schema(f)["function"]["parameters"]


def check(args):
    return validate_arguments(PARAMS, args)


def test_valid_arguments_pass_and_numbers_are_normalised():
    assert check({"name": "x"}) == {"name": "x"}
    assert check({"name": "x", "count": 2.0, "ratio": 1}) == {"name": "x", "count": 2, "ratio": 1}
    assert check({"name": "x", "tags": None, "weights": {"a": 1, "b": 0.5}})["weights"] == {"a": 1, "b": 0.5}
    assert check({"name": "x", "pair": [1, "y"]})["pair"] == [1, "y"]


@pytest.mark.parametrize("args, message", [
    ({}, "missing required argument 'name' (string)"),
    ({"name": 3}, "argument 'name' must be string, got integer 3"),
    ({"name": "x", "count": 1.5}, "argument 'count' must be integer, got number 1.5"),
    ({"name": "x", "count": True}, "argument 'count' must be integer, got boolean True"),
    ({"name": "x", "ratio": "0.5"}, "argument 'ratio' must be number, got string '0.5'"),
    ({"name": "x", "tags": ["a", 2]}, "argument 'tags' must be list of string or null"),
    ({"name": "x", "mode": "c"}, "argument 'mode' must be one of 'a', 'b', got string 'c'"),
    ({"name": "x", "pair": [1]}, "argument 'pair' must have 2 items, got 1"),
    ({"name": "x", "pair": ["1", "y"]}, "argument 'pair'[0] must be integer"),
    ({"name": "x", "weights": {"a": "heavy"}}, "argument 'weights' must be object or null"),
    ({"name": "x", "nmae": 1}, "unexpected argument 'nmae' (did you mean 'name'?)"),
    ({"name": "x", "zzz": 1}, "unexpected argument 'zzz'"),
])
def test_invalid_arguments_name_the_problem(args, message):
    with pytest.raises(ArgumentError) as info:
        check(args)
    assert message in str(info.value)


def test_several_problems_are_all_listed_and_non_objects_rejected():
    with pytest.raises(ArgumentError, match="missing required argument 'name'.*unexpected argument 'x'"):
        check({"x": 1})
    with pytest.raises(ArgumentError, match="arguments must be a JSON object, got list"):
        validate_arguments(PARAMS, [1, 2])


def test_to_python_builds_annotated_containers():
    assert to_python([1, "y"], tuple[int, str]) == (1, "y")
    assert to_python([1, 2], tuple[int, ...]) == (1, 2)
    assert to_python(["a", "a"], set[str]) == {"a"}
    assert to_python(None, tuple[int, ...] | None) is None
    assert to_python([[1]], list[tuple[int]]) == [(1,)]
