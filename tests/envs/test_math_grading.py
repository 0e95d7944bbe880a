"""Hand-checked grading table for envs._math_grading: extraction, label parsing, equivalence."""

import sys
import threading
import time

import pytest

from envs._math_grading import (answers_match, as_number, extract_answer, extract_answer_with_format, grade,
                                parse_label, symbolic_equal)

GSM8K_LABEL = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)

RIGHT = [
    ("so the total is \\boxed{72}.", GSM8K_LABEL),
    ("#### 1,000", "1000"),
    ("The answer: <answer>$18</answer>", "#### 18"),
    ("\\boxed{18.0}", "18"),
    ("\\boxed{3/4}", "0.75"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{\\dfrac{3}{4}}", "3/4"),
    ("\\boxed{\\$18.00}", "18"),
    ("\\boxed{72 dollars}", "72"),
    ("\\boxed{\\text{72 dollars}}", "72"),
    ("\\boxed{1\\,000}", "1000"),
    ("\\boxed{50\\%}", "#### 50"),
    ("\\boxed{-5}", "-5"),
    ("\\boxed{.5}", "1/2"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),  # nested braces, symbolic
    ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ("\\boxed{x = 5}", "5"),
    ("first \\boxed{3}, then on reflection \\boxed{7}", "7"),
    ("<answer>\\boxed{12}</answer>", "12"),
    ("\\fbox{9}", "9"),
]

WRONG = [  # partial string matches that are not the same answer
    ("\\boxed{180}", "18"),
    ("\\boxed{118}", "18"),
    ("\\boxed{7.2}", "72"),
    ("\\boxed{-18}", "18"),
    ("\\boxed{18 and 20}", "18"),
    ("\\boxed{1000.5}", "#### 1,000"),
    ("\\boxed{2}", "2x"),
    ("\\boxed{0.333}", "\\frac{1}{3}"),
    ("\\boxed{18} on second thought \\boxed{20}", "18"),  # the last box is the answer
    ("#### 18\nno wait, \\boxed{19}", "18"),  # \boxed outranks ####
    ("The answer is 18.", "18"),  # no answer format: not graded as correct
    ("\\boxed{}", "0"),
]


@pytest.mark.parametrize("response, label", RIGHT)
def test_right_answers(response, label):
    correct, info = grade(response, label)
    assert correct, info
    assert info["correct"] is True


@pytest.mark.parametrize("response, label", WRONG)
def test_wrong_answers(response, label):
    correct, info = grade(response, label)
    assert not correct, info


def test_extraction_formats_and_priority():
    assert extract_answer_with_format("\\boxed{\\frac{1}{\\sqrt{2}}}") == ("\\frac{1}{\\sqrt{2}}", "boxed")
    assert extract_answer_with_format("<answer> 42 </answer>") == ("42", "answer_tag")
    assert extract_answer_with_format("work...\n#### 42\nextra line") == ("42", "####")
    assert extract_answer_with_format("just words") == (None, None)
    assert extract_answer("the boxed answer is \\boxed 5 here") == "5"
    # an unbalanced last box falls back to the balanced one before it
    assert extract_answer("\\boxed{4} and then \\boxed{5") == "4"
    assert extract_answer("<answer><answer>1</answer></answer>") == "1"
    assert extract_answer("<answer>2</answer> and <answer>3 (unclosed)") == "2"
    assert extract_answer("$\\boxed{$x$}$") == "x"
    assert extract_answer("I think 12 then 15", fallback_last_number=True) == "15"
    assert extract_answer("I think 12 then 15") is None
    assert extract_answer("") is None


def test_label_parsing():
    assert parse_label(GSM8K_LABEL) == "72"
    assert parse_label("#### 1,000") == "1,000"
    assert parse_label("Thus the area is $\\boxed{\\frac{5}{6}}$.") == "\\frac{5}{6}"
    assert parse_label("  42 ") == "42"


def test_numbers():
    assert as_number("$1,234.50") == as_number("1234.5")
    assert as_number("3/4") == as_number("0.75")
    assert as_number("12 cm") == 12 and as_number("2x") is None and as_number("1,00") is None
    assert as_number("18 and 20") is None


def test_info_is_json_ready_and_says_why():
    correct, info = grade("\\boxed{3/4}", "0.75")
    assert info == {"extracted": "3/4", "answer_format": "boxed", "gold": "0.75", "correct": True, "method": "numeric"}
    assert grade("no answer", "1")[1]["method"] == "no_answer"
    assert grade("\\boxed{(x+1)^2}", "x^2+2x+1")[1]["method"] == "math_verify"


def test_junk_is_graded_fast():
    start = time.perf_counter()
    assert not grade("x" * 100_000, "1")[0]
    assert not grade("\\boxed{" * 20_000, "1")[0]
    assert not grade("\\boxed{" + "9" * 5000 + "}", "1")[0]
    assert not grade("答案是 ∑ 42 — ёжик 🤖", "42")[0]
    assert time.perf_counter() - start < 2.0


def test_sympy_fallback_without_math_verify(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify -> ImportError
    assert symbolic_equal("(x+1)^2", "x^2+2x+1") == (True, "sympy")  # in this process, as a worker runs it
    assert symbolic_equal("2x", "x") == (False, "sympy")
    assert symbolic_equal("__import__('os')", "1") == (False, "sympy")
    assert answers_match("1,000", "1000") == (True, "numeric")  # numbers never need a verifier


def test_grading_off_the_main_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(grade("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}")[0]))
    t.start()
    t.join()
    assert out == [True]
