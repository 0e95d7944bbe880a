"""The calculator tool: correct arithmetic, and refusal of anything that is not arithmetic."""

import asyncio
import math
import time

import pytest

from agentrl.tool import ToolCall, ToolExecutor, function_schema
from tools.calculator import MAX_INT_BITS, CalculatorError, calculator, evaluate


@pytest.mark.parametrize("expression, expected", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("2 ** 10", 1024),
    ("2 ^ 10", 1024),
    ("-3 ** 2", -9),
    ("(-3) ** 2", 9),
    ("7 / 2", 3.5),
    ("7 // 2", 3),
    ("-7 // 2", -4),
    ("7 % 3", 1),
    ("+-+5", -5),
    ("2 ** -1", 0.5),
    ("1e3 + 0x10 + 1_000", 2016.0),
    ("sqrt(16)", 4.0),
    ("abs(-2.5)", 2.5),
    ("round(2.675, 2)", round(2.675, 2)),
    ("round(7.5)", 8),
    ("min(3, 1, 2) + max(4, 5)", 6),
    ("log(e)", 1.0),
    ("log(8, 2)", 3.0),
    ("log10(1000)", 3.0),
    ("exp(0)", 1.0),
    ("sin(0) + cos(0)", 1.0),
    ("floor(2.7) + ceil(2.1)", 5),
    ("factorial(10)", 3628800),
    ("gcd(12, 18)", 6),
    ("hypot(3, 4)", 5.0),
    ("2 × 3 ÷ 4", 1.5),
    ("  12  ", 12),
])
def test_correct_results(expression, expected):
    assert evaluate(expression) == expected
    assert calculator(expression) == repr(expected)


def test_constants_and_float_edge_cases():
    assert evaluate("pi") == math.pi and evaluate("2 * pi") == math.tau
    assert calculator("1e308 * 10") == "inf"
    assert calculator("inf - inf") == "nan"


@pytest.mark.parametrize("expression, message", [
    ("1 / 0", "division by zero"),
    ("1 // 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("x + 1", "name 'x' is not allowed"),
    ("__import__('os').system('echo hi')", "not allowed"),
    ("__import__('os')", "name '__import__' is not allowed"),
    ("eval('1')", "name 'eval' is not allowed"),
    ("open('/etc/passwd')", "name 'open' is not allowed"),
    ("math.sqrt(4)", "calling 'math.sqrt' is not allowed"),
    ("(1).__class__", "attribute access is not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("[1, 2][0]", "not allowed"),
    ("lambda: 1", "lambda is not allowed"),
    ("(lambda x: x)(1)", "is not allowed"),
    ("[x for x in range(3)]", "a comprehension is not allowed"),
    ("'a' * 3", "only numbers are allowed"),
    ("True + 1", "only numbers are allowed"),
    ("1j * 2", "only numbers are allowed"),
    ("sqrt(x=4)", "keyword arguments are not allowed"),
    ("max(*[1, 2])", "*arguments are not allowed"),
    ("1 << 10", "operator '<<' is not allowed"),
    ("~1", "operator '~' is not allowed"),
    ("1 < 2", "comparison is not allowed"),
    ("a := 1", "invalid expression"),
    ("import os", "invalid expression"),
    ("1 +", "invalid expression"),
    ("", "empty expression"),
    ("sqrt(-1)", "math domain error"),
    ("log(0)", "math domain error"),
    ("(-8) ** (1/3)", "not a real number"),
    ("min()", "min()"),
    ("round(5, -1000)", "round() digits"),
])
def test_rejected_inputs_give_a_readable_error(expression, message):
    with pytest.raises(CalculatorError) as info:
        evaluate(expression)
    assert message in str(info.value)
    assert calculator(expression) == f"Error: {info.value}"


@pytest.mark.parametrize("expression", [
    "9 ** 9 ** 9", "10 ** 10 ** 10", "2 ** 5000", "(2 ** 4000) * (2 ** 4000)", "factorial(100000)",
    "1.5 ** 10 ** 6", "10 ** 400 * 1.0", "9" * 1300, "1" + "0" * 5000,
])
def test_huge_numbers_are_refused_quickly(expression):
    start = time.perf_counter()
    result = calculator(expression)
    assert time.perf_counter() - start < 0.5
    assert result.startswith("Error:") and ("too large" in result or "too long" in result), result


def test_largest_allowed_integer_still_works():
    assert evaluate(f"2 ** {MAX_INT_BITS - 1}") == 2 ** (MAX_INT_BITS - 1)
    assert evaluate("factorial(500)") == math.factorial(500)


def test_deep_nesting_is_refused():
    assert calculator("(" * 300 + "1" + ")" * 300).startswith("Error:")
    assert calculator("-" * 500 + "1") == "1"


def test_schema_and_use_through_the_executor():
    fn = function_schema(calculator)["function"]
    assert fn["name"] == "calculator" and fn["parameters"]["required"] == ["expression"]
    assert "sqrt" in fn["description"] and fn["parameters"]["properties"]["expression"]["type"] == "string"
    results = asyncio.run(ToolExecutor([calculator]).execute(
        [ToolCall("calculator", {"expression": "6 * 7"}), ToolCall("calculator", {"expression": "1/0"})]))
    assert [r.content for r in results] == ["42", "Error: division by zero"]
    assert all(r.ok for r in results)  # an arithmetic error is the tool's answer, not a tool failure


@pytest.mark.parametrize("value, kind", [(None, "NoneType"), (42, "int"), (["1+1"], "list")])
def test_a_non_string_expression_is_an_error_message_not_an_exception(value, kind):
    assert calculator(value) == f"Error: the expression must be a string, got {kind}"
