"""BFCL v4 function calling: ``agentrl/BFCL-v0`` (single turn) and ``agentrl/BFCL-MultiTurn-v0``.

The `Berkeley Function Calling Leaderboard <https://gorilla.cs.berkeley.edu/leaderboard.html>`_
test cases and checkers come from the ``bfcl-eval`` package (``pip install 'agentrl[bfcl]'``);
nothing of its data is copied here. The functions of a test case are the episode's tools: their
schemas go to the chat template (``env.tool_schemas()``) and, with ``describe_tools`` (default),
into the system message in the hermes format that :class:`agentrl.tool.HermesParser` reads,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, the format of BFCL's Qwen FC handler.

**Single turn** (:class:`BFCLEnv`; categories :data:`SINGLE_TURN`). ``reset`` sends the test
case's question; the one reply is graded and the episode ends. The reply's hermes calls become
BFCL's decoded form ``[{name: {arg: value}}]`` (what each BFCL handler's ``decode_ast`` returns)
and BFCL's own ``ast_checker`` grades them against the possible answers (``simple``,
``multiple``, ``parallel``, ``parallel_multiple`` and their ``live_`` versions). Relevance
categories follow BFCL's relevance runner: ``irrelevance`` / ``live_irrelevance`` score 1 when
the reply holds no function call (BFCL's ``is_empty_output``), ``live_relevance`` when it holds
one. Reward 1 or 0; ``info["error_type"]`` is BFCL's error type on a miss.

**Multi turn** (:class:`BFCLMultiTurnEnv`; :data:`MULTI_TURN`). The test case's user turns come
one at a time. In each, a reply with calls is executed by BFCL's own backends (the simulated file
system, trading bot, travel API... of ``bfcl_eval``, through ``execute_multi_turn_func_call``)
and answered with one tool message per call; a reply without a call ends the user turn, and the
next user message follows (``miss_func`` turns add the held-out functions in that message, as
BFCL's prompting handlers do). After the last turn BFCL's ``multi_turn_checker`` replays the
calls and compares state and results with the ground truth: reward 1 or 0. More than
:data:`MAX_STEPS_PER_TURN` call replies in one user turn end the episode with 0, as BFCL's
force-quit does. Deviation: BFCL evaluates a call's text with ``eval``; here a call is executed
only when its name is a method of the test case's classes and its argument names are Python
identifiers (the values are JSON, written back with ``repr``), so model text never reaches
``eval`` as code; any other call is answered with an error and left out of the checked calls
(like a call naming no function, it changes no state).

**Scores and BFCL's leaderboard.** The mean reward over a category is BFCL's accuracy for that
category (``agentrl eval`` with one task per category; ``split="all"``, the default, keeps every
test case). The leaderboard's summary columns are unweighted means of categories (non-live AST =
the mean of simple (python, java, javascript), multiple, parallel, parallel_multiple), and its
numbers come from each model's own prompt format; ours uses the hermes format above with the
model's chat template, so compare a model with itself, not with a leaderboard row of another
handler.

Held-out split: ``split="train"`` / ``"eval"`` keep four / one in five test cases by a hash of
the id (:mod:`envs.benchmarks.splits`). Options of ``reset``: ``{"index": i}`` (within the
split), ``{"id": "simple_python_3"}``; without options an index is drawn from the seeded RNG.

Example (needs ``bfcl-eval``)::

    >>> env = BFCLEnv(category="simple_python")                     # doctest: +SKIP
    >>> messages, info = env.reset(options={"id": "simple_python_0"})  # doctest: +SKIP
    >>> call = '<tool_call>{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}</tool_call>'
    >>> env.step(call)[1:3]                                          # doctest: +SKIP
    (1.0, True)
"""

from __future__ import annotations

import copy
import functools
import json
import keyword
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.tool import HermesParser, ToolCall
from agentrl.utils.extras import require
from envs.benchmarks.splits import check_split, in_split
from envs.tool_use import describe_tools

__all__ = ["MAX_STEPS_PER_TURN", "MULTI_TURN", "SINGLE_TURN", "SYSTEM_PROMPT", "BFCLEnv", "BFCLMultiTurnEnv",
           "load_category"]

SINGLE_TURN = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
               "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
               "live_irrelevance", "live_relevance")
"""BFCL v4's single-turn categories (its ``SINGLE_TURN_CATEGORY``)."""
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
"""BFCL v4's scored multi-turn categories (its ``MULTI_TURN_CATEGORY``)."""
MAX_STEPS_PER_TURN = 20
"""Call replies allowed in one user turn (BFCL's ``MAXIMUM_STEP_LIMIT``); one more ends the episode."""
SYSTEM_PROMPT = ("You are an expert in composing functions. Use the functions below to do what the user asks. "
                 "If none of them fits, or a required argument is missing, say so without calling a function.")
"""The default system message (the function declarations follow it when ``describe_tools``)."""
CHECKER_MODEL = "Qwen/Qwen3-0.6B-FC"
"""The BFCL model entry whose conventions the checkers apply: hermes calls, dotted names kept."""
_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def bfcl() -> ModuleType:
    """``bfcl_eval``, imported once, with its result folders under agentrl's cache.

    ``bfcl_eval`` makes ``result/``, ``score/`` and a lock folder at import, by default beside
    the installed package; ``BFCL_PROJECT_ROOT`` (set here unless already set) moves them.
    """
    if "BFCL_PROJECT_ROOT" not in os.environ:
        from agentrl.models import cache_dir

        root = Path(cache_dir()) / "bfcl"
        root.mkdir(parents=True, exist_ok=True)
        os.environ["BFCL_PROJECT_ROOT"] = str(root)
    return require("bfcl_eval", extra="bfcl", what="BFCL", package="bfcl-eval")


@functools.lru_cache(maxsize=None)
def load_category(category: str) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """The test cases of ``category`` as BFCL loads them for evaluation, and the ground truth by id.

    Entries keep BFCL's fields (``id``, ``question``, ``function``; multi-turn ones also
    ``initial_config``, ``involved_classes``, ``missed_function``). Cached: treat them as read-only.
    """
    if category not in SINGLE_TURN + MULTI_TURN:
        import difflib

        close = difflib.get_close_matches(category, SINGLE_TURN + MULTI_TURN, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown BFCL category {category!r}; valid: {', '.join(SINGLE_TURN + MULTI_TURN)}{hint}")
    bfcl()
    from bfcl_eval.utils import is_relevance_or_irrelevance, load_dataset_entry, load_ground_truth_entry

    entries = load_dataset_entry(category, include_prereq=False, include_language_specific_hint=False)
    truth = {} if is_relevance_or_irrelevance(category) else \
        {e["id"]: e["ground_truth"] for e in load_ground_truth_entry(category)}
    return tuple(entries), truth


def _prompt_functions(functions: Sequence[Mapping[str, Any]], category: str) -> list[dict[str, Any]]:
    """BFCL's function docs as the model sees them: with BFCL's language hint, as tool schemas."""
    from bfcl_eval.utils import _func_doc_language_specific_pre_processing

    docs = _func_doc_language_specific_pre_processing(copy.deepcopy(list(functions)), category)
    return [{"type": "function", "function": d} for d in docs]


def decode(calls: Sequence[ToolCall]) -> list[dict[str, dict[str, Any]]]:
    """Well-formed hermes calls in BFCL's decoded form ``[{name: {arg: value}}]``.

    Example::

        >>> calls = HermesParser().parse('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
        >>> decode(calls)
        [{'f': {'x': 1}}]
    """
    return [{c.name: dict(c.arguments)} for c in calls if c.error is None and c.name]


class _BFCLBase(TextEnv):
    """What both BFCL environments share: the test cases of a category, the split, the prompt."""

    categories: tuple[str, ...] = ()

    def __init__(self, *, category: str, split: str = "all", system_prompt: str | None = SYSTEM_PROMPT,
                 describe_tools: bool = True, max_reply_chars: int = 65_536) -> None:
        super().__init__()
        if category not in self.categories:
            load_category(category)  # an unknown name: the error lists the valid ones
            raise ValueError(f"{type(self).__name__} plays the categories {', '.join(self.categories)}; "
                             f"got {category!r}")
        self.category, self.split = category, check_split(split)
        entries, self.truth = load_category(category)
        self.entries = [e for e in entries if in_split(e["id"], split)]
        if not self.entries:
            raise ValueError(f"BFCL category {category!r} has no test case in split {split!r}")
        self.by_id = {e["id"]: i for i, e in enumerate(self.entries)}
        self.system_prompt, self.describe_tools = system_prompt, describe_tools
        self.max_reply_chars = int(max_reply_chars)
        self.parser = HermesParser()
        self.entry: dict[str, Any] | None = None
        self._schemas: list[dict[str, Any]] = []
        self.done = False

    def tool_schemas(self) -> list[dict[str, Any]]:
        return list(self._schemas)

    def _pick(self, seed: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
        self.seed_rng(seed)
        options = options or {}
        if "id" in options:
            if options["id"] not in self.by_id:
                raise KeyError(f"no BFCL test case {options['id']!r} in {self.category} (split {self.split!r})")
            index = self.by_id[options["id"]]
        else:
            n = len(self.entries)
            index = int(options["index"]) if "index" in options else int(self.np_random.integers(0, n))
            if not 0 <= index < n:
                raise IndexError(f"options['index'] must be in [0, {n}) for {self.category} ({self.split}); "
                                 f"got {index}")
        self.entry, self.done = self.entries[index], False
        return self.entry

    def _opening(self, functions: Sequence[Mapping[str, Any]], first_turn: list[dict[str, Any]]) -> list[dict]:
        self._schemas = _prompt_functions(functions, self.category)
        parts = [self.system_prompt, self.describe_tools and self._schemas and describe_tools(self._schemas)]
        system = "\n\n".join(p for p in parts if p)
        messages = [dict(m) for m in first_turn]
        if system and messages and messages[0]["role"] == "system":
            messages[0]["content"] = system + "\n\n" + messages[0]["content"]
        elif system:
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _parse(self, action: Any) -> list[ToolCall]:
        text = action if isinstance(action, str) else str(action)
        return self.parser.parse(text[-self.max_reply_chars:])


class BFCLEnv(_BFCLBase):
    """One BFCL single-turn test case, graded by BFCL's ``ast_checker`` (see the module docstring).

    Args:
        category: One of :data:`SINGLE_TURN`.
        split: ``"all"`` (BFCL's full category), ``"train"`` or ``"eval"`` (held out).
        system_prompt: The system message before the function declarations (None: none).
        describe_tools: Declare the functions in the system message (templates such as
            SmolLM2's ignore ``tools=``); False for templates that render them.
        max_reply_chars: Only the reply's last this many characters are read.
    """

    categories = SINGLE_TURN

    def __init__(self, *, category: str = "simple_python", **kwargs: Any) -> None:
        super().__init__(category=category, **kwargs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        entry = self._pick(seed, options)
        messages = self._opening(entry["function"], entry["question"][0])
        return messages, {"id": entry["id"], "category": self.category, "split": self.split}

    def step(self, action: str):
        if self.entry is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the episode is over; call reset()"}
        self.done = True
        calls = self._parse(action)
        decoded = decode(calls)
        result = self.grade(decoded)
        info = {"id": self.entry["id"], "category": self.category, "correct": bool(result["valid"]),
                "tool_calls": len(calls), "malformed_calls": sum(c.error is not None for c in calls),
                "decoded": json.dumps(decoded, ensure_ascii=False, default=str)[:4000]}
        if not result["valid"]:
            info["error_type"] = str(result.get("error_type", ""))
            info["error"] = "; ".join(str(e) for e in result.get("error", []))[:2000]
        return [], float(bool(result["valid"])), True, False, info

    def grade(self, decoded: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
        """BFCL's verdict on the decoded calls of the current test case (``{"valid": bool, ...}``)."""
        from bfcl_eval.utils import is_empty_output, is_function_calling_format_output, is_java, is_js

        assert self.entry is not None
        if "relevance" in self.category:  # BFCL's relevance runner: did the reply call a function?
            called = not is_empty_output(decoded)
            valid = not called if "irrelevance" in self.category else called
            return {"valid": valid, "error_type": "" if valid else (
                "irrelevance_error:decoder_success" if called else "relevance_error:decoder_failed"),
                "error": [] if valid else ["called a function" if called else "no function call"]}
        if not is_function_calling_format_output(decoded):
            return {"valid": False, "error_type": "ast_decoder:decoder_wrong_output_format", "error": []}
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

        language = Language.JAVA if is_java(self.category) else \
            Language.JAVASCRIPT if is_js(self.category) else Language.PYTHON
        try:
            return ast_checker(self.entry["function"], decoded, self.truth[self.entry["id"]], language,
                               self.category, CHECKER_MODEL)
        except Exception as e:  # a value the checker cannot compare (odd nesting): a miss, not a crash
            return {"valid": False, "error_type": "ast_checker:exception", "error": [f"{type(e).__name__}: {e}"]}


class BFCLMultiTurnEnv(_BFCLBase):
    """One BFCL multi-turn test case on BFCL's simulated backends (see the module docstring).

    Args:
        category: One of :data:`MULTI_TURN`.
        split, system_prompt, describe_tools, max_reply_chars: as for :class:`BFCLEnv`.
        max_result_chars: Longer execution results are cut (head and tail kept) in the tool
            messages; the checker always sees them whole.
    """

    categories = MULTI_TURN

    def __init__(self, *, category: str = "multi_turn_base", max_result_chars: int = 4000, **kwargs: Any) -> None:
        super().__init__(category=category, **kwargs)
        self.max_result_chars = int(max_result_chars)
        self._run_name = ""
        self.turn = self.steps = 0
        self.calls: list[list[list[str]]] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._release()
        entry = self._pick(seed, options)
        # BFCL keys its backend instances by model name and test id in a module global: a fresh
        # name per episode keeps concurrent episodes of one test case apart
        self._run_name = f"agentrl{secrets.token_hex(6)}"
        self.turn = self.steps = 0
        self.calls = [[]]
        self._execute([])  # builds the backend instances from the test case's initial state
        messages = self._opening(entry["function"], entry["question"][0])
        return messages, {"id": entry["id"], "category": self.category, "split": self.split,
                          "turns": len(entry["question"])}

    def step(self, action: str):
        if self.entry is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the episode is over; call reset()"}
        calls = self._parse(action)
        decoded = decode(calls)
        info: dict[str, Any] = {"id": self.entry["id"], "turn": self.turn, "tool_calls": len(calls),
                                "malformed_calls": sum(c.error is not None for c in calls)}
        if not decoded:
            return self._next_turn(info)
        self.steps += 1
        if self.steps > MAX_STEPS_PER_TURN:
            return self._finish(info, forced=True)
        messages, texts = self._run_calls(decoded)
        if texts:  # as BFCL's evaluation, which skips a reply whose calls decode to nothing
            self.calls[self.turn].append(texts)
        info["tool_errors"] = sum(m["content"].startswith("Error") for m in messages)
        return messages, 0.0, False, False, info

    def close(self) -> None:
        self._release()
        super().close()

    # -- turns ---------------------------------------------------------------------------
    def _next_turn(self, info: dict[str, Any]):
        assert self.entry is not None
        self.turn += 1
        self.steps = 0
        if self.turn >= len(self.entry["question"]):
            return self._finish(info, forced=False)
        self.calls.append([])
        messages = [dict(m) for m in self.entry["question"][self.turn]]
        held_out = self.entry.get("missed_function", {}).get(str(self.turn))
        if held_out:  # BFCL's prompting handlers give the held-out functions in this turn's message
            from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING

            functions = [s["function"] for s in _prompt_functions(held_out, self.category)]
            self._schemas += [{"type": "function", "function": f} for f in functions]
            messages = [{"role": "user", "content": DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING.format(
                functions=json.dumps(functions, ensure_ascii=False))}]
        info["next_turn"] = self.turn
        return messages, 0.0, False, False, info

    def _finish(self, info: dict[str, Any], *, forced: bool):
        assert self.entry is not None
        self.done = True
        if forced:
            result = {"valid": False, "error_type": "multi_turn:force_terminated",
                      "error_message": f"more than {MAX_STEPS_PER_TURN} call replies in turn {self.turn}"}
        else:
            result = self.grade(self.calls)
        info.update(correct=bool(result["valid"]), calls=sum(len(s) for t in self.calls for s in t))
        if not result["valid"]:
            info["error_type"] = str(result.get("error_type", ""))
            info["error"] = str(result.get("error_message", ""))[:2000]
        self._release()
        return [], float(bool(result["valid"])), True, False, info

    def grade(self, calls: list[list[list[str]]]) -> dict[str, Any]:
        """BFCL's ``multi_turn_checker`` on executable calls, one list per reply, one per user turn."""
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

        assert self.entry is not None
        truth = self.truth[self.entry["id"]]
        if len(calls) != len(truth):
            return {"valid": False, "error_type": "multi_turn:force_terminated",
                    "error_message": f"{len(calls)} turns played, {len(truth)} in the test case"}
        try:
            return multi_turn_checker(calls, truth, self.entry, self.category, self._run_name)
        except Exception as e:  # BFCL asserts on inconsistent instances: a miss, not a crash
            return {"valid": False, "error_type": "multi_turn:checker_exception", "error_message": f"{type(e).__name__}: {e}"}

    # -- execution on BFCL's backends ------------------------------------------------------
    def _methods(self) -> set[str]:
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

        names: set[str] = set()
        for instance_name, value in vars(multi_turn_utils).items():
            if instance_name.startswith(self._run_name + "_"):
                names.update(n for n in dir(value) if not n.startswith("_") and callable(getattr(value, n)))
        return names

    def _run_calls(self, decoded: list[dict[str, dict[str, Any]]]) -> tuple[list[dict[str, str]], list[str]]:
        from bfcl_eval.model_handler.utils import convert_to_function_call

        methods = self._methods()
        messages: list[dict[str, str]] = []
        runnable: list[tuple[int, str]] = []
        for i, call in enumerate(decoded):
            (name, args), = call.items()
            problem = _unsafe(name, args, methods)
            messages.append({"role": "tool", "name": name[:128], "content": f"Error during execution: {problem}"})
            if not problem:
                runnable.append((i, convert_to_function_call([{name: args}])[0]))
        results, _ = self._execute([text for _, text in runnable])
        for (i, _), result in zip(runnable, results):
            messages[i]["content"] = _clip(str(result), self.max_result_chars)
        return messages, [text for _, text in runnable]

    def _execute(self, calls: list[str]) -> tuple[list[str], dict[str, Any]]:
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

        assert self.entry is not None
        long_context = "long_context" in self.category
        return execute_multi_turn_func_call(calls, self.entry.get("initial_config", {}),
                                            self.entry["involved_classes"], self._run_name, self.entry["id"],
                                            long_context=long_context, is_evaL_run=False)

    def _release(self) -> None:
        """Drop this episode's backend instances from BFCL's module globals."""
        if not self._run_name:
            return
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

        space = vars(multi_turn_utils)
        for key in [k for k in space if k.startswith(self._run_name + "_")]:
            space.pop(key, None)
        self._run_name = ""


def _unsafe(name: str, args: Mapping[str, Any], methods: set[str]) -> str:
    """Why the call ``name(**args)`` may not be executed ('' when it may)."""
    if not _METHOD.fullmatch(name) or name not in methods:
        return f"no function named {name[:80]!r}"
    bad = [k for k in args if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k)]
    if bad:
        return f"invalid argument name {str(bad[0])[:80]!r}"
    return ""


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"
