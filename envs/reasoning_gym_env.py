"""``agentrl/ReasoningGym-v0``: any ``reasoning-gym`` task as a single-turn environment.

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ generates procedural reasoning
problems (arithmetic, logic puzzles, graph questions, ciphers, ...) and ships a scorer for each.
This environment asks one generated question and rewards the reply with that task's own
``score_answer`` (a float in [0, 1]; partial credit where the task gives it).

Which items: a reasoning-gym dataset is a deterministic function of its seed, so the dataset seed
decides the questions and an unseen seed gives held-out questions. ``split="train"`` uses
``seed`` as the dataset seed; ``split="eval"`` uses ``seed + EVAL_SEED_OFFSET``, so training and
evaluation with the same ``seed`` never draw from the same generator stream. (Tasks with a small
problem space can still repeat a question across seeds; deduplicate by question if that matters.)

Answer extraction: the last ``<answer>...</answer>``, else the last ``\\boxed{}``, else the last
non-empty line of the reply (linear in the reply's length). Scoring runs the task's scorer in a
jail (:mod:`envs._scoring`) under ``score_timeout`` seconds, and ``astep`` runs in a thread: some
scorers hand the answer to ``sympy.parse_expr`` or ``eval``, which evaluate Python in it and can
run without end on a short answer (a power tower). In the jail such an answer reaches nothing of
the host; when it tried something the jail refused (a process, a file, a socket) or its
evaluation ran out of memory, it scores 0 and ``info["error"]`` says what happened.

Options of ``reset``: ``{"index": i}`` picks item ``i`` of the dataset; ``{"entry": {...}}``
scores against a given entry (a dict with ``question``, ``answer`` and ``metadata`` as
reasoning-gym makes them, e.g. a row of a dataset file generated ahead). Without options an index
is drawn from the seeded RNG.

Example::

    >>> env = ReasoningGymEnv(task="basic_arithmetic", seed=0)
    >>> messages, info = env.reset(options={"index": 3})
    >>> reply = f"<answer>{env.entry['answer']}</answer>"
    >>> env.step(reply)[1:3]
    (1.0, True)
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.utils.extras import require
from envs._math_grading import last_boxed, last_tag

__all__ = ["DEFAULT_INSTRUCTION", "EVAL_SEED_OFFSET", "ReasoningGymEnv", "extract_rg_answer", "task_names"]

EVAL_SEED_OFFSET = 1_000_003
"""``split="eval"`` adds this to the dataset seed: held-out items come from unseen seeds."""

DEFAULT_INSTRUCTION = (
    "Think it through, then give only your final answer inside <answer></answer> tags, "
    "for example <answer>42</answer>."
)
MAX_ANSWER_CHARS = 10_000
SCORE_TIMEOUT_S = 10.0


def task_names() -> list[str]:
    """Every dataset name registered in reasoning-gym."""
    return sorted(_reasoning_gym().factory.DATASETS)


def extract_rg_answer(text: str) -> tuple[str | None, str | None]:
    """``(answer, format)``: ``<answer>`` tag, else ``\\boxed{}``, else the last non-empty line."""
    if not isinstance(text, str) or not text.strip():
        return None, None
    tagged = last_tag(text, "answer")
    if tagged is not None:
        return tagged.strip(), "answer_tag"
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(), "boxed"
    return text.strip().rsplit("\n", 1)[-1].strip(), "last_line"


class ReasoningGymEnv(TextEnv):
    """One reasoning-gym question per episode, scored by the task's own scorer.

    Args:
        task: a reasoning-gym dataset name (``task_names()`` lists them), e.g. ``"leg_counting"``.
        size: number of items in the dataset (indices ``0 .. size-1``).
        seed: the dataset seed for ``split="train"``.
        split: ``"train"`` or ``"eval"`` (``seed + EVAL_SEED_OFFSET``: held-out items).
        config: extra task configuration (difficulty knobs), passed to the task's config class.
        instruction: appended to the question in the user message.
        system_prompt: an optional system message.
        score_timeout: seconds the task's scorer may take on one answer (longer: scored 0).
    """

    def __init__(
        self,
        task: str = "leg_counting",
        *,
        size: int = 1000,
        seed: int = 0,
        split: str = "train",
        config: dict[str, Any] | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
        score_timeout: float = SCORE_TIMEOUT_S,
    ):
        super().__init__()
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval'; got {split!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        self.task, self.size, self.split = task, int(size), split
        self.dataset_seed = int(seed) + (EVAL_SEED_OFFSET if split == "eval" else 0)
        self.instruction, self.system_prompt = instruction, system_prompt
        self.config_json = json.dumps(config or {}, sort_keys=True)
        self.score_timeout = float(score_timeout)
        self.dataset = _create_dataset(task, size=self.size, seed=self.dataset_seed, config=config or {})
        self.entry: dict[str, Any] | None = None
        self.index: int | None = None
        self.done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        if "entry" in options:
            entry = dict(options["entry"])
            if "question" not in entry:
                raise ValueError(f"options['entry'] needs a 'question' (and 'answer'/'metadata'); got keys {sorted(entry)}")
            self.index = None
        else:
            index = int(options["index"]) if "index" in options else int(self.np_random.integers(0, self.size))
            if not 0 <= index < self.size:
                raise IndexError(f"options['index'] must be in [0, {self.size}); got {index}")
            self.index, entry = index, self.dataset[index]
        self.entry, self.done = entry, False
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        content = f"{entry['question'].rstrip()}\n\n{self.instruction}" if self.instruction else entry["question"]
        messages.append({"role": "user", "content": content})
        info = {"task": self.task, "index": self.index, "dataset_seed": self.dataset_seed, "split": self.split}
        return messages, info

    def oracle(self, seed: int | None = None) -> list[str]:
        """The reference solution of the episode just reset: the entry's answer in ``<answer>`` tags
        (``agentrl check-env --exploits`` requires the task's scorer to give it 1)."""
        if self.entry is None:
            raise RuntimeError("call reset() before oracle()")
        return [f"<answer>{self.entry.get('answer')}</answer>"]

    async def astep(self, action: str):
        """:meth:`step` in a worker thread: the scorer may take up to ``score_timeout`` seconds."""
        return await asyncio.to_thread(self.step, action)

    def step(self, action: str):
        if self.entry is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the episode is over; call reset()"}
        self.done = True
        answer, fmt = extract_rg_answer(action)
        info: dict[str, Any] = {"answer_format": fmt, "gold": _json_safe(self.entry.get("answer"))}
        score = 0.0
        if answer is not None and len(answer) > MAX_ANSWER_CHARS:
            info["error"] = f"answer longer than {MAX_ANSWER_CHARS} characters; not scored"
        elif answer is not None:
            score = self._score(answer, info)
        info["extracted"] = answer if answer is None or len(answer) <= 200 else answer[:200] + "..."
        info["score"] = score
        return [], score, True, False, info

    def _score(self, answer: str, info: dict[str, Any]) -> float:
        """The task's score of ``answer`` (0 when the scorer fails, overruns or the answer tried
        something the jail refused; ``info["error"]`` says so)."""
        from envs._scoring import run

        try:
            dataset = (self.task, self.size, self.dataset_seed, self.config_json)
            out = run("envs.reasoning_gym_env:score_in_worker", *dataset, self.entry, answer,
                      timeout=self.score_timeout, preload=(("envs.reasoning_gym_env:warm_up", *dataset),))
        except OSError as e:  # no scoring jail could be started
            info["error"] = f"score_answer could not run: {e}"
            return 0.0
        if out.incidents:  # whatever the scorer made of it
            info["error"] = f"the answer was stopped while scored ({'; '.join(out.incidents[:3])[:300]}); scored 0"
        elif out.error is not None:  # a scorer crash on odd text scores 0; the run goes on
            info["error"] = f"score_answer raised {out.error[:200]}"
        elif out.stopped == "timeout":
            info["error"] = f"score_answer took longer than {self.score_timeout:g} s; scored 0"
        elif out.stopped is not None:
            info["error"] = f"score_answer was stopped ({out.stopped}); scored 0"
        if not out.finished or out.incidents:
            return 0.0
        try:
            score = float(out.value)
        except (TypeError, ValueError):
            info["error"] = f"score_answer returned {str(out.value)[:100]!r}, not a number; scored 0"
            return 0.0
        return score if score == score and score not in (float("inf"), float("-inf")) else 0.0


def score_in_worker(task: str, size: int, seed: int, config_json: str, entry: dict[str, Any], answer: str) -> float:
    """``score_answer`` of the task's dataset, run in the scoring jail (in a fork of its server,
    which :func:`warm_up` has prepared)."""
    return float(_worker_dataset(task, size, seed, config_json).score_answer(answer, entry))


def warm_up(task: str, size: int, seed: int, config_json: str) -> None:
    """Make the dataset and score two of its own items, right and wrong: run once by the
    scoring jail's server (trusted input only), so that what the scorer imports lazily and
    builds on first use (sympy's simplification, say) is there in every answer's fork."""
    dataset = _worker_dataset(task, size, seed, config_json)
    for index in range(min(2, size)):
        entry = dataset[index]
        for answer in (str(entry["answer"]), "0"):
            try:
                dataset.score_answer(answer, entry)
            except Exception:  # noqa: BLE001 - a scorer that raises on "0" still warmed up
                pass


@functools.lru_cache(maxsize=16)
def _worker_dataset(task: str, size: int, seed: int, config_json: str):
    return _create_dataset(task, size=size, seed=seed, config=json.loads(config_json))


def _reasoning_gym() -> Any:
    require("reasoning_gym.factory", extra="reasoning", what="ReasoningGym-v0", package="reasoning-gym")
    import reasoning_gym

    return reasoning_gym


def _create_dataset(task: str, *, size: int, seed: int, config: dict[str, Any]):
    reasoning_gym = _reasoning_gym()
    DATASETS = reasoning_gym.factory.DATASETS

    if task not in DATASETS:
        close = difflib.get_close_matches(task, list(DATASETS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        raise ValueError(f"unknown reasoning-gym task {task!r}{hint} Known tasks: {', '.join(sorted(DATASETS))}")
    reserved = {"seed", "size"} & set(config)
    if reserved:
        raise ValueError(f"pass {sorted(reserved)} as ReasoningGymEnv arguments, not inside config")
    try:
        return reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    except TypeError as e:
        import dataclasses

        fields = [f.name for f in dataclasses.fields(DATASETS[task][1]) if f.name not in ("seed", "size")]
        raise TypeError(f"bad config for reasoning-gym task {task!r}: {e}. Its config fields: {fields}") from e


def _json_safe(x: Any) -> Any:
    try:
        json.dumps(x, allow_nan=False)
        return x
    except (TypeError, ValueError):
        return repr(x)
