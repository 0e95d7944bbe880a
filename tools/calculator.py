"""A safe arithmetic calculator tool: the expression is parsed with ``ast``, never ``eval``-ed.

Allowed: int/float literals (and ``1e3``, ``0x1f``, ``1_000``), ``+ - * / // % **``, unary
``+ -``, parentheses, the constants ``pi``, ``e``, ``tau``, ``inf`` and calls to a whitelist of
functions (:data:`FUNCTIONS`). Everything else (names, attributes, subscripts, lambdas,
comprehensions, strings, keyword arguments, ``__import__``) is rejected with a message.

Guards against work that could hang or exhaust memory: exponents are bounded (the result of
``a ** b`` may not exceed :data:`MAX_INT_BITS` bits), integers may not exceed that size in any
step, ``factorial`` is bounded, and the expression length is bounded. Errors come back as a
string starting with ``Error:`` (the tool never raises on user input).

Example::

    >>> calculator("2 * (3 + 4) ** 2")
    '98'
    >>> calculator("sqrt(2) * sqrt(2)")
    '2.0000000000000004'
    >>> calculator("1 / 0")
    'Error: division by zero'
    >>> calculator("__import__('os')").split(";")[0]
    "Error: name '__import__' is not allowed"
"""

from __future__ import annotations

import ast
import math
import operator
import types
from collections.abc import Callable
from typing import Any

MAX_EXPRESSION_CHARS = 1000
"""Longest expression accepted."""
MAX_INT_BITS = 4096
"""Largest integer (in bits) any step may produce (about 1233 decimal digits)."""
MAX_FACTORIAL = 500
"""Largest argument of ``factorial``."""

Number = int | float


class CalculatorError(ValueError):
    """An expression that cannot be evaluated; the message is meant for the model."""


def _checked_pow(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if b * math.log2(abs(a)) > MAX_INT_BITS:
            raise CalculatorError(f"result of {a} ** {b} is too large (limit: {MAX_INT_BITS}-bit integers)")
    try:
        result = a**b
    except OverflowError:
        raise CalculatorError(f"result of {a} ** {b} is too large") from None
    if isinstance(result, complex):
        raise CalculatorError(f"({a}) ** {b} is not a real number")
    return result


def _checked_mul(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise CalculatorError(f"product is too large (limit: {MAX_INT_BITS}-bit integers)")
    return a * b


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError(f"factorial() needs a non-negative integer, got {n!r}")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial({n}) is too large (limit: factorial({MAX_FACTORIAL}))")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > 100):
        raise CalculatorError(f"round() digits must be an integer in [-100, 100], got {ndigits!r}")
    return round(x) if ndigits is None else round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


FUNCTIONS: types.MappingProxyType[str, Callable[..., Number]] = types.MappingProxyType({
    "sqrt": math.sqrt, "abs": abs, "round": _round, "min": min, "max": max, "log": _log,
    "log2": math.log2, "log10": math.log10, "exp": math.exp, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan, "floor": math.floor,
    "ceil": math.ceil, "factorial": _factorial, "gcd": math.gcd, "hypot": math.hypot,
})
"""The functions an expression may call."""
CONSTANTS: types.MappingProxyType[str, float] = types.MappingProxyType(
    {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf})
"""The names an expression may use as values."""

_BINARY: dict[type, Callable[[Any, Any], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _checked_mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _checked_pow,
}
_UNARY: dict[type, Callable[[Any], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SYMBOLS = {ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
            ast.RShift: ">>", ast.Invert: "~", ast.Not: "not"}

_KINDS = {"Attribute": "attribute access", "Subscript": "indexing", "Lambda": "lambda", "Compare": "comparison",
          "IfExp": "a conditional expression", "BoolOp": "and/or", "List": "a list", "Tuple": "a tuple",
          "Dict": "a dict", "Set": "a set", "ListComp": "a comprehension", "SetComp": "a comprehension",
          "DictComp": "a comprehension", "GeneratorExp": "a comprehension", "JoinedStr": "an f-string",
          "Starred": "*unpacking", "Await": "await", "Yield": "yield", "NamedExpr": ":="}


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        if isinstance(node.value, int) and node.value.bit_length() > MAX_INT_BITS:
            raise CalculatorError(f"number is too large (limit: {MAX_INT_BITS}-bit integers)")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise CalculatorError(f"intermediate result is too large (limit: {MAX_INT_BITS}-bit integers)")
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalculatorError(f"name {node.id!r} is not allowed; allowed constants: {', '.join(CONSTANTS)}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise CalculatorError(f"calling {ast.unparse(node.func)!r} is not allowed; allowed functions: "
                                  f"{', '.join(sorted(FUNCTIONS))}")
        name = node.func.id
        if name not in FUNCTIONS:
            raise CalculatorError(f"name {name!r} is not allowed; allowed functions: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords:
            raise CalculatorError(f"keyword arguments are not allowed in {name}()")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculatorError(f"*arguments are not allowed in {name}()")
        args = [_evaluate(a) for a in node.args]
        try:
            return FUNCTIONS[name](*args)
        except TypeError as e:
            raise CalculatorError(f"{name}(): {e}") from None
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        sym = _SYMBOLS.get(type(node.op), type(node.op).__name__)
        raise CalculatorError(f"operator {sym!r} is not allowed; allowed: + - * / // % ** and parentheses")
    kind = _KINDS.get(type(node).__name__, type(node).__name__.lower())
    raise CalculatorError(f"{kind} is not allowed in an arithmetic expression")


def evaluate(expression: str) -> Number:
    """Evaluate ``expression``; raises :class:`CalculatorError` with a readable message."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is too long ({len(expression)} characters; limit {MAX_EXPRESSION_CHARS})")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise CalculatorError("empty expression")
    try:
        return _evaluate(ast.parse(text, mode="eval"))
    except SyntaxError as e:
        raise CalculatorError(f"invalid expression: {e.msg}") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result is too large") from None
    except (RecursionError, MemoryError):
        raise CalculatorError("expression is nested too deeply") from None
    except ValueError as e:
        if isinstance(e, CalculatorError):
            raise
        raise CalculatorError(str(e) or "math domain error") from None


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Supports + - * / // % ** (or ^), parentheses, the constants pi and e, and the functions
    sqrt, abs, round, min, max, log, log2, log10, exp, sin, cos, tan, asin, acos, atan, floor,
    ceil, factorial, gcd, hypot.

    Args:
        expression: The expression to evaluate, e.g. "2 * (3 + 4) ** 2" or "sqrt(16) / 3".
    """
    try:
        return repr(evaluate(expression))
    except CalculatorError as e:
        return f"Error: {e}"
