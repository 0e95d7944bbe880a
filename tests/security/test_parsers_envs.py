"""Hostile replies against the built-in environments: every step answers with an observation or a
clean termination, parses in linear time (checked against the expressions it replaced, on inputs
those would never finish), and slow answer checks run off the event loop in a worker process
that is killed when it overruns."""

from __future__ import annotations

import asyncio
import re
import string
import threading
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.env import make

MIB = 1 << 20


def fill(unit: str, size: int = MIB) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# -- ToolUse-v0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    '<tool_call>{"name": "calculator", "arguments": ' + '{"a": ' * 5000 + "1" + "}" * 5001 + "</tool_call>",
    "<tool_call>" + "[" * 100_000 + "</tool_call>",
    '<tool_call>{"name": "calculator", "arguments": {"expression": ' + "9" * 5000 + "}}</tool_call>",
    "<tool_call>```json" + " " * 100_000 + "</tool_call>",
])
def test_tool_use_answers_hostile_calls_with_a_tool_error(reply):
    env = make("ToolUse-v0", tools=("calculator",))
    env.reset(options={"question": "1+1?", "answer": "2"})
    obs, reward, terminated, truncated, info = env.step(reply)
    assert not terminated and info["tool_errors"] >= 1
    assert obs and obs[0]["role"] == "tool" and obs[0]["content"].startswith("Error: malformed tool call")
    env.close()


# -- Search-v0 -------------------------------------------------------------------------------

OLD_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
OLD_WELL_FORMED = re.compile(r"\s*<think>(.*?)</think>\s*<(search|answer)>(.*?)</\2>\s*", re.DOTALL)
ANY_TAG = re.compile(r"</?(?:think|search|information|answer)>")

TAGS = st.lists(st.sampled_from(["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>",
                                 "<information>", " ", "\n", "q", "a b", "\u2003"]), max_size=14).map("".join)


@settings(max_examples=500, deadline=None)
@given(TAGS)
def test_search_parsing_agrees_with_search_r1s_expressions(text):
    from envs.search import _well_formed, parse_action

    m = OLD_ACTION.search(text)
    assert parse_action(text) == ((m.group(1), m.group(2)) if m else (None, ""))
    for kind in ("search", "answer"):
        w = OLD_WELL_FORMED.fullmatch(text)
        old = bool(w) and w.group(2) == kind and not ANY_TAG.search(w.group(1) + w.group(3)) and bool(w.group(3).strip())
        assert _well_formed(text, kind) == old


@pytest.mark.parametrize("reply", [fill("<search>", 256 * 1024), fill("<search><answer><think>", 256 * 1024),
                                   "<think>" + fill("</think><search>", 256 * 1024)])
def test_search_answers_unclosed_tags_with_the_format_reminder(reply):
    env = make("Search-v0", retriever="mini")
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(reply)
    assert info["action"] == "invalid" and not terminated and "<search>" in obs[0]["content"]
    env.close()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.punctuation + "aAbB the an \n\u00e9", max_size=40),
       st.lists(st.text(alphabet="ab the.,", max_size=8), min_size=1, max_size=3))
def test_qa_metrics_agree_with_the_squad_definitions(prediction, golds):
    from envs._qa_metrics import _EXACT_ONLY, f1_score, normalize_answer

    def old_normalize(text):
        text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

    def old_f1(pred, gold):
        if (pred in _EXACT_ONLY or gold in _EXACT_ONLY) and pred != gold:
            return 0.0
        common = sum((Counter(pred.split()) & Counter(gold.split())).values())
        if common == 0:
            return 0.0
        p, r = common / len(pred.split()), common / len(gold.split())
        return 2 * p * r / (p + r)

    assert normalize_answer(prediction) == old_normalize(prediction)
    expected = max(old_f1(old_normalize(prediction), old_normalize(g)) for g in golds)
    assert f1_score(prediction, golds) == pytest.approx(expected)


# -- gym_text games ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["up", "down", "left", "right", "pick", "pickup", "pick up", "drop", " off", "x",
                                 " ", "\n", "Up", "<action>", "</action>", "north", "southx", "1"]),
                max_size=12).map("".join))
def test_the_last_move_word_is_found_as_before(text):
    from envs.gym_text import GAMES, _move_words, parse_move
    from envs._math_grading import last_tag

    for adapter in (GAMES["TaxiEnv"], GAMES["FrozenLakeEnv"]):
        words, _ = _move_words(adapter)
        pattern = r"(?<![a-z])(" + "|".join(re.escape(w).replace(r"\ ", r"\s+")
                                            for w in sorted(words, key=len, reverse=True)) + r")(?![a-z])"
        tagged = last_tag(text, "action")
        matches = list(re.finditer(pattern, (tagged if tagged is not None else text).lower()))
        last = matches[-1] if matches else None
        assert parse_move(text, adapter) == (None if last is None else words[re.sub(r"\s+", " ", last.group(1))])


def test_a_runaway_reply_is_read_from_its_end():
    env = make("FrozenLake-v0")
    env.reset(seed=0)
    assert env.step(fill("{[( ") + "<action>right</action>")[4]["action"] == "right"
    _, _, _, _, info = env.step("right " + fill("{[( ", 100_000))  # the move is outside the last 64 KiB
    assert info["valid_action"] is False
    env.close()


# -- answer checks that run away ----------------------------------------------------------------

POWER_TOWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy computes 9**(9**(9**9)) holding the GIL: no thread can stop it


def test_a_scoring_worker_is_killed_when_it_overruns():
    from envs import _scoring

    assert _scoring.call("builtins:pow", 9, 9**9, timeout=0.5) == (False, None)  # C code, holding the GIL
    assert _scoring.call("operator:add", 2, 3, timeout=60) == (True, 5)  # a new worker took its place
    with pytest.raises(_scoring.ScoringError, match="ZeroDivisionError"):
        _scoring.call("operator:truediv", 1, 0, timeout=60)


def test_grading_a_power_tower_ends_in_any_thread():
    from envs._math_grading import grade

    out: list = []
    worker = threading.Thread(target=lambda: out.append(grade(POWER_TOWER, "3")), daemon=True)
    worker.start()
    worker.join(120)  # before: math-verify's timeout is off outside the main thread, and this never ended
    assert out and out[0][0] is False and out[0][1]["method"] in ("math_verify", "timeout")


@pytest.mark.parametrize("env_id", ["Math-v0", "ToolUse-v0"])
async def test_the_event_loop_runs_while_an_answer_is_graded(env_id):
    env = make(env_id)
    await env.areset(options={"question": "What is 3?", "answer": "3"})
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    _, reward, terminated, _, info = await env.astep("So: " + POWER_TOWER)
    beat.cancel()
    assert reward == 0.0 and terminated and info["method"] in ("math_verify", "timeout")
    assert ticks >= 10  # grading took seconds; before, it ran on the event loop and nothing else did
    env.close()


def test_reasoning_gym_scorers_that_run_away_score_zero():
    pytest.importorskip("reasoning_gym")
    from envs.reasoning_gym_env import ReasoningGymEnv

    env = ReasoningGymEnv("simple_integration", size=5, score_timeout=2.0)  # its scorer calls sympy.parse_expr
    env.reset(options={"index": 0})
    _, reward, terminated, _, info = env.step("<answer>9**9**9**9</answer>")
    assert reward == 0.0 and terminated and "took longer than 2 s" in info["error"]
    env.reset(options={"index": 0})
    env.score_timeout = 120.0  # a fresh worker: its first sympy simplify may take a while on a busy machine
    _, reward, _, _, info = env.step(f"<answer>{env.entry['answer']}</answer>")
    assert reward == 1.0, info  # the next worker scores as before


@pytest.mark.parametrize("env_id", ["Math-v0", "GSM8K-v0", "ReasoningGym-v0", "Search-v0", "ToolUse-v0",
                                    "FrozenLake-v0", "Taxi-v0", "Blackjack-v0", "CliffWalking-v0", "Echo-v0"])
def test_every_builtin_env_answers_a_megabyte_of_junk(env_id):
    env = make(env_id, **({"retriever": "mini"} if env_id == "Search-v0" else {}))
    for reply in (fill("<tool_call>{\"a\": [<search><answer>\\boxed{<action>```json "), fill("[{(\"\\"), fill(" \n")):
        env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(reply)
        assert isinstance(obs, list) and isinstance(float(reward), float) and isinstance(info, dict)
    env.close()
