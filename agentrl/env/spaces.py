"""Permissive text and chat-message spaces.

Gymnasium's ``Text`` space has a fixed charset and length; an LLM's action is any string. These
spaces accept any ``str`` (or any list of chat messages), and their ``sample()`` produces fuzz:
empty text, whitespace, non-ASCII, half tool calls, broken JSON, very long strings. Sampling is
seeded through ``space.seed()`` like every gymnasium space.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

_FUZZ_PIECES: tuple[str, ...] = (
    "",
    " ",
    "\n\n",
    "hello",
    "42",
    "\\boxed{7}",
    "<answer>yes</answer>",
    "<search>who wrote hamlet</search>",
    "<search>unclosed",
    '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>',
    '<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>',
    "<tool_call>not json at all</tool_call>",
    "<tool_call>",
    "{\"name\": null}",
    "中文 العربية ёжик 🤖",
    "\x00\x1b[31m",
    "</think>",
    "<think>",
    "right",
    "LEFT",
    "move 3",
)


class TextSpace(gymnasium.Space[str]):
    """Any string up to ``max_length`` characters (None = unbounded).

    Example::

        >>> space = TextSpace(); _ = space.seed(0)
        >>> isinstance(space.sample(), str) and "anything" in space
        True
    """

    def __init__(self, max_length: int | None = None, seed: int | np.random.Generator | None = None):
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        rng = self.np_random
        kind = rng.integers(0, 4)
        if kind == 0:  # one fuzz piece
            text = _FUZZ_PIECES[rng.integers(0, len(_FUZZ_PIECES))]
        elif kind == 1:  # a few pieces glued together
            idx = rng.integers(0, len(_FUZZ_PIECES), size=rng.integers(2, 5))
            text = " ".join(_FUZZ_PIECES[i] for i in idx)
        elif kind == 2:  # random printable + non-ASCII characters
            n = int(rng.integers(0, 200))
            codes = rng.integers(32, 0x3000, size=n)
            text = "".join(chr(int(c)) for c in codes if not 0xD800 <= c <= 0xDFFF)
        else:  # long repetitive text
            text = "a" * int(rng.integers(1000, 20000))
        if self.max_length is not None:
            text = text[: self.max_length]
        return text

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and (self.max_length is None or len(x) <= self.max_length)

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


class MessagesSpace(gymnasium.Space[list]):
    """A list of chat messages: dicts with a ``role`` (str) and a ``content`` (str or None).

    Extra keys (``name``, ``tool_calls``, ``tool_call_id``) are allowed, as in OpenAI's format.
    """

    ROLES = ("system", "user", "assistant", "tool")

    def __init__(self, seed: int | np.random.Generator | None = None):
        self._text = TextSpace()
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def seed(self, seed: int | None = None) -> int | list[int]:
        seeds = super().seed(seed)
        self._text.seed(int(self.np_random.integers(0, 2**31 - 1)))
        return seeds

    def sample(self, mask: Any = None, probability: Any = None) -> list[dict[str, Any]]:
        n = int(self.np_random.integers(1, 4))
        return [
            {"role": self.ROLES[int(self.np_random.integers(0, len(self.ROLES)))], "content": self._text.sample()}
            for _ in range(n)
        ]

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(message_problem(m) is None for m in x)

    def __repr__(self) -> str:
        return "MessagesSpace()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, MessagesSpace)


def message_problem(m: Any) -> str | None:
    """Why ``m`` is not a valid chat message, or None when it is."""
    if not isinstance(m, dict):
        return f"a message must be a dict, got {type(m).__name__}"
    role = m.get("role")
    if not isinstance(role, str) or role not in MessagesSpace.ROLES:
        return f"message role must be one of {MessagesSpace.ROLES}, got {role!r}"
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        return f"message content must be a str or None, got {type(content).__name__}"
    return None


class EnvResultError(TypeError):
    """An environment's ``reset``/``step`` returned something outside the ``TextEnv`` contract."""


def check_reset_result(result: Any, where: str = "reset()") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``result`` as ``(messages, info)`` when it keeps the contract; else :class:`EnvResultError` saying
    what was expected and what came (the rollout records the episode as failed with that message)."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise EnvResultError(f"{where} must return (messages, info); got {preview(result)}")
    messages, info = result
    _check_messages(messages, where)
    if not messages:
        raise EnvResultError(f"{where}: the opening observation has no messages")
    return messages, _check_info(info, where)


def check_step_result(result: Any, where: str = "step()") -> tuple[list[dict[str, Any]], float, bool, bool,
                                                                    dict[str, Any]]:
    """``result`` as ``(messages, reward, terminated, truncated, info)`` (reward a finite float, flags
    bools) when it keeps the contract; else :class:`EnvResultError` saying what was expected and what came."""
    if not isinstance(result, tuple) or len(result) != 5:
        raise EnvResultError(f"{where} must return (messages, reward, terminated, truncated, info); "
                             f"got {preview(result)}")
    messages, reward, terminated, truncated, info = result
    _check_messages(messages, where)
    reward = _finite_number(reward, f"{where}: reward")
    flags = []
    for name, value in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(value, (bool, np.bool_)):
            raise EnvResultError(f"{where}: {name} must be a bool; got {type(value).__name__} {preview(value)}")
        flags.append(bool(value))
    info = _check_info(info, where)
    components = info.get("reward_components")
    if components is not None:
        if not isinstance(components, dict):
            raise EnvResultError(f"{where}: info['reward_components'] must be a dict of numbers; got "
                                 f"{type(components).__name__}")
        for key, value in components.items():
            _finite_number(value, f"{where}: info['reward_components'][{key!r}]")
    for key in ("tool_calls", "tool_errors"):
        if info.get(key) is not None:
            _finite_number(info[key], f"{where}: info[{key!r}]")
    return messages, reward, flags[0], flags[1], info


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list):
        raise EnvResultError(f"{where}: the observation must be a list of chat messages; got "
                             f"{type(messages).__name__} {preview(messages)}")
    for i, m in enumerate(messages):
        why = message_problem(m)
        if why:
            raise EnvResultError(f"{where}: message {i}: {why}")


def _check_info(info: Any, where: str) -> dict[str, Any]:
    if not isinstance(info, dict):
        raise EnvResultError(f"{where}: info must be a dict; got {type(info).__name__} {preview(info)}")
    return info


def _finite_number(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise EnvResultError(f"{what} must be a finite number; got {type(value).__name__} {preview(value)}")
    return float(value)


def preview(x: Any, n: int = 60) -> str:
    """``repr(x)`` cut to ``n`` characters, for messages about what an environment returned or was given."""
    try:
        text = repr(x)
    except Exception:  # a broken __repr__ (or an int too long to print) must not hide the real problem
        return f"<{type(x).__name__}>"
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"
