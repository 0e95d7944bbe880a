"""``check_env``: gymnasium's own checker plus the checks an LLM environment needs.

An environment passes when:
  * gymnasium's ``check_env`` raises nothing (its warnings are reported, not fatal);
  * ``reset`` with the same seed gives the same messages and info, and the same actions then
    give the same step results (seeding determinism);
  * every observation is a list of valid chat messages, rewards are finite numbers,
    ``terminated``/``truncated`` are bools, and every ``info`` is JSON-serialisable;
  * ``close()`` can be called twice;
  * fuzzing with malformed actions (broken tool-call JSON, unknown tools, empty text, 100k
    characters, non-ASCII, control characters, and samples of the action space) always gets
    an observation or a clean end, through both the sync and the async API, never an exception.

Example::

    >>> from agentrl.testing.echo_env import EchoEnv
    >>> check_env(EchoEnv()).ok
    True
"""

from __future__ import annotations

import asyncio
import json
import threading
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium

from agentrl.env.core import TextEnv
from agentrl.env.spaces import EnvResultError, check_reset_result, check_step_result, preview
from agentrl.env.wrappers import as_text_env

FUZZ_ACTIONS: tuple[tuple[str, str], ...] = (
    ("empty action", ""),
    ("whitespace action", " \n\t "),
    ("100k-character action", "x" * 100_000),
    ("non-ASCII action", "答案是 ∑ 42 — ёжик 🤖 مرحبا"),
    ("control characters", "\x00\x07\x1b[2J\udcff".encode("utf-8", "replace").decode("utf-8")),
    ("invalid tool-call JSON", '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>'),
    ("tool call that is not JSON", "<tool_call>call the calculator please</tool_call>"),
    ("unknown tool name", '<tool_call>{"name": "no_such_tool_xyz", "arguments": {"a": 1}}</tool_call>'),
    ("tool call without a name", '<tool_call>{"arguments": {"a": 1}}</tool_call>'),
    ("tool call with bad arguments", '<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>'),
    ("unclosed tags", "<tool_call><search><answer>"),
    ("empty search", "<search></search>"),
    ("nested tags", "<answer><answer>1</answer></answer>"),
    ("many tool calls", '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>' * 50),
)


class EnvCheckError(AssertionError):
    """An environment failed :func:`check_env`; the message lists every problem found."""


@dataclass
class EnvCheckReport:
    env_name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        if self.problems:
            raise EnvCheckError(f"{self.env_name} failed check_env:\n  - " + "\n  - ".join(self.problems))


def check_env(
    env: TextEnv | gymnasium.Env | Callable[[], TextEnv | gymnasium.Env],
    *,
    seed: int = 0,
    fuzz_samples: int = 8,
    max_fuzz_steps: int = 4,
    gymnasium_checks: bool = True,
    timeout: float | None = 300.0,
) -> EnvCheckReport:
    """Check ``env`` (or an env factory, used to build fresh instances) and report problems.

    ``gymnasium.Wrapper`` stacks around a TextEnv are checked as the rollout runs them
    (:func:`~agentrl.env.wrappers.as_text_env`), the async API included. Each check may take
    ``timeout`` seconds (None: no limit); one that takes longer is reported as a problem and the
    checks after it are skipped (a stuck ``reset``/``step`` cannot be interrupted: it is left
    running in a daemon thread)."""
    make = (lambda: _as_text_env(env())) if callable(env) and not isinstance(env, gymnasium.Env) else None
    first = make() if make else _as_text_env(env)
    report = EnvCheckReport(env_name=_name(first))
    if not isinstance(first, TextEnv):
        report.problems.append("must be an agentrl TextEnv (a gymnasium.Env), or gymnasium wrappers around one; "
                               f"got {type(first).__name__}")
        return report
    fresh = make or (lambda: first)

    checks: list[tuple[str, Callable[[], None]]] = [
        ("reset/step contract", lambda: _check_contract(fresh(), seed)),
        ("seeding determinism", lambda: _check_determinism(fresh(), seed)),
        ("close() twice", lambda: _check_close(fresh())),
        ("fuzzing", lambda: _check_fuzz(fresh(), seed, fuzz_samples, max_fuzz_steps, report)),
        ("async API", lambda: _check_async(fresh(), seed)),
    ]
    if gymnasium_checks:
        checks.insert(0, ("gymnasium check_env", lambda: _check_gymnasium(fresh(), report)))
    for name, check in checks:
        try:
            if not within(check, timeout):
                report.problems.append(f"{name}: did not finish within {timeout:g} s (a reset() or step() that "
                                       "hangs?); the remaining checks were skipped")
                return report  # the stuck call may hold the env: closing it could hang too
        except _Problem as p:
            report.problems.append(f"{name}: {p}")
        except (Exception, SystemExit) as e:  # an env that raises (or calls sys.exit) is a finding, not a crash
            report.problems.append(f"{name}: raised {type(e).__name__}: {e}\n{_short_tb(e)}")
    if make:
        first.close()
    return report


def within(check: Callable[[], None], timeout: float | None) -> bool:
    """Run ``check``; False when it is still running after ``timeout`` seconds (its exception is re-raised)."""
    if timeout is None:
        check()
        return True
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            check()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(e)

    thread = threading.Thread(target=run, name="check_env", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return False
    if outcome[0] is not None:
        raise outcome[0]
    return True


class _Problem(Exception):
    pass


def _as_text_env(env: Any) -> Any:
    try:
        return as_text_env(env)
    except TypeError:
        return env  # reported as a problem by check_env


def _check_gymnasium(env: TextEnv, report: EnvCheckReport) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gym_check_env(env, skip_render_check=True)
        except AssertionError as e:
            raise _Problem(str(e)) from e
    for w in caught:
        text = str(w.message)
        if "different from the unwrapped" in text or "not able to test alternative render" in text.lower():
            continue
        report.warnings.append(f"gymnasium: {text}")


def _check_contract(env: TextEnv, seed: int) -> None:
    obs, info = _expect_reset(env.reset(seed=seed), "reset")
    action = "I am not sure."
    for turn in range(3):
        result = _expect_step(env.step(action), f"step {turn + 1}")
        if result[2] or result[3]:
            break


def _check_determinism(env: TextEnv, seed: int) -> None:
    actions = ["42", "<answer>1</answer>", "hello"]

    def trajectory() -> list[Any]:
        out: list[Any] = [_canonical(env.reset(seed=seed))]
        for a in actions:
            r = env.step(a)
            out.append(_canonical(r))
            if r[2] or r[3]:
                break
        return out

    first, second = trajectory(), trajectory()
    if first[0] != second[0]:
        raise _Problem(f"reset(seed={seed}) twice gave different results:\n    {first[0][:300]}\n    {second[0][:300]}")
    for i, (a, b) in enumerate(zip(first[1:], second[1:])):
        if a != b:
            raise _Problem(f"the same actions after reset(seed={seed}) gave different step {i + 1} results:\n    {a[:300]}\n    {b[:300]}")
    other = _canonical(env.reset(seed=seed + 1))
    del other  # different seeds may or may not differ; only same-seed equality is required


def _check_close(env: TextEnv) -> None:
    env.reset(seed=0)
    env.close()
    env.close()


def _check_fuzz(env: TextEnv, seed: int, samples: int, max_steps: int, report: EnvCheckReport) -> None:
    env.action_space.seed(seed)
    cases = list(FUZZ_ACTIONS) + [(f"sampled action {i}", env.action_space.sample()) for i in range(samples)]
    failures = []
    for name, action in cases:
        try:
            _expect_reset(env.reset(seed=seed), "reset")
            for step in range(max_steps):
                _, _, terminated, truncated, _ = _expect_step(env.step(action), f"step {step + 1}")
                if terminated or truncated:
                    break
        except _Problem as p:
            failures.append(f"{name} ({preview(action)}): {p}")
        except (Exception, SystemExit) as e:
            failures.append(f"{name} ({preview(action)}): raised {type(e).__name__}: {e}\n{_short_tb(e)}")
    if failures:
        raise _Problem(f"{len(failures)} of {len(cases)} malformed actions broke the env:\n    " + "\n    ".join(failures))


def _check_async(env: TextEnv, seed: int) -> None:
    async def run() -> None:
        _expect_reset(await env.areset(seed=seed), "areset")
        for name, action in FUZZ_ACTIONS[:6]:
            _expect_step(await env.astep(action), f"astep with {name}")

    asyncio.run(run())
    env.close()


def _expect_reset(result: Any, where: str) -> tuple[list, dict]:
    try:
        obs, info = check_reset_result(result, where)
    except EnvResultError as e:
        raise _Problem(str(e)) from None
    _expect_json(info, f"{where} info")
    return obs, info


def _expect_step(result: Any, where: str) -> tuple:
    try:
        checked = check_step_result(result, where)
    except EnvResultError as e:
        raise _Problem(str(e)) from None
    _expect_json(checked[4], f"{where} info")
    return result


def _expect_json(info: Any, where: str) -> None:
    if not isinstance(info, dict):
        raise _Problem(f"{where} must be a dict; got {type(info).__name__}")
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as e:
        bad = [k for k, v in info.items() if not _json_ok(v)]
        raise _Problem(f"{where} is not JSON-serialisable ({e}); offending keys: {bad}") from e


def _json_ok(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _canonical(result: Any) -> str:
    return json.dumps(result, sort_keys=True, default=repr)


def _short_tb(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-2:]
    return "".join(f"      at {f.filename}:{f.lineno} in {f.name}\n" for f in frames).rstrip()


def _name(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return getattr(spec, "id", None) or type(env).__name__
