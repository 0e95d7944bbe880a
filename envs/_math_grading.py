"""Final-answer extraction and equivalence checking for math tasks.

Three public functions, shared by :mod:`envs.math` and by evaluation (majority voting calls
:func:`extract_answer` on every sample):

* :func:`extract_answer` finds the final answer in a model response. Formats, in priority order:
  the last ``\\boxed{...}`` (nested braces allowed; ``\\fbox`` too), else the last
  ``<answer>...</answer>``, else the rest of the line after the last ``####``.
* :func:`parse_label` turns a dataset label into a final answer: GSM8K solutions
  (``"... #### 72"``) give ``"72"``, MATH solutions give their last ``\\boxed{}``, bare answers
  pass through.
* :func:`grade` extracts, then compares with :func:`answers_match`:

  1. plain numbers are compared as exact rationals after removing what does not change the
     value: ``$``/``\\$``, thousands separators (``1,000``), a trailing ``%``, unit words after a
     space (``18 dollars``, ``\\text{ cm}``), a trailing period; ``18.0 == 18``, ``3/4 == 0.75``,
     ``\\frac{3}{4} == 0.75``. When both sides are plain numbers this decides, so ``180`` never
     matches ``18`` and ``7.2`` never matches ``72``;
  2. otherwise ``math-verify`` (Hugging Face's LaTeX/sympy verifier) decides symbolic answers
     (``(x+1)^2 == x^2+2x+1``, ``\\frac{1}{\\sqrt2} == \\sqrt2/2``, sets, intervals);
  3. where ``math-verify`` is not installed, a small sympy check (``simplify(a - b) == 0`` on
     plain expressions of a restricted alphabet) stands in.

Answers are untrusted: extraction is linear in the response length, answers longer than
``MAX_ANSWER_CHARS`` are graded wrong unparsed, and the symbolic checks (2, 3) run in the scoring
jail (:mod:`envs._scoring`) under ``SYMBOLIC_TIMEOUT_S``: sympy can spend forever, holding the
GIL, on a short answer such as ``\\boxed{9^{9^{9^{9}}}}``, and a check that parses with sympy
must not run on the host. An answer that runs out of time is graded wrong with
``method="timeout"`` (``"killed"``: its CPU or memory limit; ``"refused"``: it tried something
the jail refused), and ``info["error"]`` says why. ``grade`` blocks its thread meanwhile;
environments call it through ``asyncio.to_thread``.

Example::

    >>> grade("So she makes 9 * 2 = 18 dollars. \\\\boxed{\\\\$18}", "She sells ... #### 18")[0]
    True
    >>> extract_answer("first \\\\boxed{1}, finally \\\\boxed{\\\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> grade("The answer is <answer>180</answer>", "18")[0]
    False
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from fractions import Fraction
from typing import Any

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are graded wrong without parsing (keeps grading fast on junk)."""
SYMBOLIC_TIMEOUT_S = 5.0
"""Seconds one symbolic comparison may take (in a worker process, killed past it)."""

ANSWER_FORMATS = ("boxed", "answer_tag", "####", "last_number")

_BOXED = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_UNIT_WORDS = r"(?:[A-Za-z]{2,}\.?)(?:\s+[A-Za-z]+\.?)*"


# -- extraction ---------------------------------------------------------------------------------
def extract_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
    """The final answer in ``text`` (see the module doc for formats), or None.

    ``fallback_last_number=True`` also accepts the last number in the text when no explicit
    format is present (lenient grading for small models).
    """
    return extract_answer_with_format(text, fallback_last_number=fallback_last_number)[0]


def extract_answer_with_format(text: str, *, fallback_last_number: bool = False) -> tuple[str | None, str | None]:
    """``(answer, format)``; format is one of :data:`ANSWER_FORMATS` or None when nothing was found."""
    if not isinstance(text, str) or not text:
        return None, None
    boxed = last_boxed(text)
    if boxed is not None:
        return _clean(boxed), "boxed"
    tagged = last_tag(text, "answer")
    if tagged is not None:
        return _clean(tagged), "answer_tag"
    at = text.rfind("####")
    if at >= 0:
        rest = text[at + 4 :].lstrip(" \t#")
        line = rest.split("\n", 1)[0]
        if line.strip():
            return _clean(line), "####"
    if fallback_last_number:
        last = _last_number(text)
        if last is not None:
            return _clean(last), "last_number"
    return None, None


def _last_number(text: str) -> str | None:
    """The last number in ``text``, read from a window before its last digit (numbers longer than
    the window are graded too long either way), so the cost does not grow with the text."""
    end = max(text.rfind(d) for d in "0123456789") + 1
    if end == 0:
        return None
    last = deque(_NUMBER.finditer(text, max(0, end - 2 * MAX_ANSWER_CHARS), end), maxlen=1)
    return last[0].group(0) if last else None


def parse_label(label: str) -> str:
    """The final answer of a dataset label: after ``####``, else its last ``\\boxed{}``, else itself."""
    label = str(label)
    if "####" in label:
        return _clean(label[label.rfind("####") + 4 :].strip().split("\n", 1)[0])
    boxed = last_boxed(label)
    if boxed is not None:
        return _clean(boxed)
    return _clean(label)


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (or ``\\boxed 5``), scanning right to left."""
    end = len(text)
    for _ in range(8):  # a few unbalanced candidates at most: linear time on junk
        start = max(text.rfind(tag, 0, end) for tag in _BOXED)
        if start < 0:
            return None
        tag = next(t for t in _BOXED if text.startswith(t, start))
        i = start + len(tag)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            content = _balanced(text, i)
            if content is not None:
                return content
        elif i > start + len(tag):  # "\boxed 5": one token
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
        end = start  # unbalanced or empty: try an earlier one
    return None


def _balanced(text: str, open_at: int) -> str | None:
    """What is between the ``{`` at ``open_at`` and its matching ``}`` (None: unbalanced), found
    with one vectorised pass over the rest of the text."""
    import numpy as np

    rest = text[open_at:]
    codes = np.frombuffer(rest.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    level = np.cumsum((codes == ord("{")).astype(np.int32) - (codes == ord("}")))
    closed = np.flatnonzero(level == 0)
    return rest[1 : int(closed[0])] if len(closed) else None


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>`` that is closed (up to the first ``</tag>`` after it)."""
    opener, closer = f"<{tag}>", f"</{tag}>"
    end = len(text)
    for _ in range(8):
        start = text.rfind(opener, 0, end)
        if start < 0:
            return None
        close = text.find(closer, start + len(opener))
        if close >= 0:
            return text[start + len(opener) : close]
        end = start
    return None


def _clean(answer: str) -> str:
    a = answer.strip()
    if len(a) >= 2 and a[0] == "$" and a[-1] == "$" and a.count("$") == 2:
        a = a[1:-1].strip()  # $...$ math delimiters
    return a.rstrip(".").strip()


# -- comparison ---------------------------------------------------------------------------------
def as_number(answer: str) -> Fraction | None:
    """``answer`` as an exact rational when it is a plain number (units, ``$``, ``%`` ignored)."""
    t = answer.strip()
    if len(t) > 100:
        return None
    t = re.sub(r"\\(?:text|mbox|mathrm|textbf)\{([^{}]*)\}", r" \1", t)
    t = t.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    t = t.replace("\\left", "").replace("\\right", "").replace("−", "-")
    t = re.sub(r"\^\{?\\circ\}?", "", t).strip().rstrip(".").strip()
    frac = re.fullmatch(r"([-+]?)\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}", t) or re.fullmatch(
        r"([-+]?)\s*(\d+)\s*/\s*(\d+)", t
    )
    if frac:
        sign, num, den = frac.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    m = re.fullmatch(rf"({_NUMBER.pattern})\s*(?:%|\s{_UNIT_WORDS})?", t)
    if not m:
        return None
    return Fraction(m.group(1).replace(",", ""))


def answers_match(pred: str, gold: str) -> tuple[bool, str]:
    """Is ``pred`` equivalent to ``gold``? Returns ``(match, method)`` (which check decided)."""
    return _match(pred, gold)[:2]  # type: ignore[return-value]


def _match(pred: str, gold: str) -> tuple[bool, str, str | None]:
    """:func:`answers_match` with why a symbolic check failed, when it did: ``method`` is then
    ``error``, ``timeout``, ``killed`` (its CPU or memory limit) or ``refused`` (the answer
    tried something the scoring jail refused, or its evaluation ran out of memory)."""
    if len(pred) > MAX_ANSWER_CHARS or not pred.strip():
        return False, "too_long" if pred.strip() else "empty", None
    p_num, g_num = as_number(pred), as_number(gold)
    if p_num is not None and g_num is not None:
        return p_num == g_num, "numeric", None
    if _squash(pred) == _squash(gold):
        return True, "string", None
    from envs import _scoring

    try:
        out = _scoring.run("envs._math_grading:symbolic_equal", pred, gold, timeout=SYMBOLIC_TIMEOUT_S,
                           preload=("envs._math_grading:warm_up",))
    except OSError as e:  # no scoring jail could run the check: graded wrong, the run goes on
        log.warning("symbolic check of %r could not run: %s", pred[:80], e)
        return False, "error", f"the symbolic check could not run: {e}"
    if out.incidents:
        return False, "refused", f"stopped while checked: {'; '.join(out.incidents[:3])[:300]}"
    if out.error is not None:
        log.warning("symbolic check of %r failed: %s", pred[:80], out.error[:200])
        return False, "error", f"the symbolic check raised {out.error[:200]}"
    if not out.finished:
        return False, out.stopped or "timeout", f"the symbolic check was stopped ({out.stopped})"
    match, method = out.value
    return bool(match), str(method), None


def symbolic_equal(pred: str, gold: str) -> tuple[bool, str]:
    """``(match, method)`` by ``math-verify``, or the sympy fallback where it is not installed.

    Runs in this process with no limit on time: :func:`answers_match` calls it in the scoring jail.
    """
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return _sympy_equal(pred, gold), "sympy"
    return _math_verify_equal(pred, gold), "math_verify"


def warm_up() -> None:
    """One symbolic check of each common kind: the scoring jail runs it once (trusted input), so
    each answer's fork starts with math-verify's LaTeX parser and sympy's caches built."""
    for pred, gold in _WARM_UP:
        symbolic_equal(pred, gold)


_WARM_UP = (("(x+1)^2", "x^2+2x+1"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("\\{1, 2\\}", "\\{2, 1\\}"),
            ("[0, \\infty)", "[0,\\infty)"), ("2\\pi", "6.28"))


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def _math_verify_equal(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    # math-verify's own limits (signal.alarm: main thread only) end slow Python early in a worker;
    # work that holds the GIL is ended by killing the worker (see answers_match)
    timeout = 2 if threading.current_thread() is threading.main_thread() else None
    try:
        g = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
        p = parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
        return bool(g and p and verify(g, p, timeout_seconds=timeout))
    except Exception as e:  # a verifier crash grades the answer wrong, it must not end the run
        log.debug("math-verify failed on %r vs %r: %s", pred[:80], gold[:80], e)
        return False


_SAFE_EXPR = re.compile(r"[0-9a-zA-Z+\-*/^().\s]{1,200}")


def _sympy_equal(pred: str, gold: str) -> bool:
    """Fallback without math-verify: symbolic difference of two plain expressions."""
    import sympy
    from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    if not (_SAFE_EXPR.fullmatch(pred) and _SAFE_EXPR.fullmatch(gold)):
        return False
    if re.search(r"[a-zA-Z]{3,}|__", pred + " " + gold):  # words are not expressions; no dunders
        return False
    transforms = standard_transformations + (implicit_multiplication_application,)
    try:
        a = parse_expr(pred.replace("^", "**"), transformations=transforms, evaluate=True)
        b = parse_expr(gold.replace("^", "**"), transformations=transforms, evaluate=True)
        return bool(sympy.simplify(a - b) == 0)
    except Exception:
        return False


def grade(response: str, label: str, *, fallback_last_number: bool = False) -> tuple[bool, dict[str, Any]]:
    """Grade a model ``response`` against a dataset ``label``.

    Returns ``(correct, info)``; ``info`` is JSON-serialisable: ``extracted`` (the answer found,
    or None), ``answer_format`` (``"boxed"``, ``"answer_tag"``, ``"####"``, ``"last_number"`` or
    None), ``gold`` (the label's final answer), ``correct`` and ``method`` (which check decided).
    """
    gold = parse_label(label)
    extracted, fmt = extract_answer_with_format(response, fallback_last_number=fallback_last_number)
    if extracted is None:
        correct, method, error = False, "no_answer", None
    else:
        correct, method, error = _match(extracted, gold)
    shown = extracted if extracted is None or len(extracted) <= 200 else extracted[:200] + "..."
    info = {"extracted": shown, "answer_format": fmt, "gold": gold, "correct": correct, "method": method}
    if error is not None:
        info["error"] = error
    return correct, info
