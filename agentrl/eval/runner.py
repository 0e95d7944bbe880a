"""Held-out evaluation through the same episode loop as training.

:func:`evaluate` runs ``n_samples`` episodes for each prompt of each task with the rollout's
own code (:class:`~agentrl.rollout.Rollout`, no filters), and computes per-task metrics
(:mod:`agentrl.eval.metrics`). ``on_group`` sees every finished group (the CLI appends them
to ``episodes.jsonl``), and ``done`` skips prompts finished earlier, so an interrupted
evaluation resumes without repeating episodes.

Example (an engine that always says "apple", two prompts of the echo environment)::

    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> from agentrl.testing import FakeEngine
    >>> tok = load_tokenizer("tiny-qwen2")
    >>> engine = FakeEngine(responder=lambda ids, sp: tok.encode("apple<|im_end|>", add_special_tokens=False))
    >>> rows = [PromptRow(index=i, prompt=f"say {w}", options={"target": w}) for i, w in enumerate(["apple", "pear"])]
    >>> task = EvalTask("echo", rows, env_id="agentrl/Echo-v0", max_turns=1)
    >>> out = asyncio.run(evaluate(engine, ChatTemplate(tok), [task], EvalConfig(n_samples=2, ks=(1, 2))))
    >>> out["echo"]["metrics"]["pass@2"], out["echo"]["metrics"]["status_truncated"]
    (0.5, 2.0)
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.data.prompts import PromptRow
from agentrl.engine.base import Engine, SamplingParams
from agentrl.eval.metrics import group_metrics
from agentrl.env.shaping import task_reward
from agentrl.rollout import Rollout, RolloutConfig, engine_failed, timed_out
from agentrl.types import Group, Sample


EVAL_GROUP_BASE = 1 << 40
"""Evaluation group ids start here: engine request ids (``g{group}-s{sample}-t{turn}``) never
collide with those of a training rollout running on the same engine at the same time (training
uses ``rollout_id * 1_000_000 + i``)."""
GROUP_ID_STRIDE = 1_000_000
"""Group ids of the ``i``-th task are ``EVAL_GROUP_BASE + i * GROUP_ID_STRIDE + row index``."""
HELDOUT_SEED_OFFSET = 10_000
"""A training run evaluates with environment seeds from ``--seed`` + this, so that held-out environments
whose task comes from the seed (random maps, generated puzzles) are not those of its training rows."""


@dataclass
class EvalTask:
    name: str
    rows: list[PromptRow]
    env_id: str | None = None
    """Environment for rows that name none."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of this task's environments (e.g. ``{"split": "eval"}``)."""
    max_turns: int | None = None
    """This task's turn budget (None: the config's)."""
    max_new_tokens_per_turn: int | None = None
    """This task's tokens per assistant turn (None: the config's)."""
    max_context_tokens: int | None = None
    """This task's context budget (None: the config's)."""

    def rollout_config(self, config: "EvalConfig") -> RolloutConfig:
        """The config's rollout settings with this task's environment arguments and budgets."""
        base = config.rollout_config()
        changes: dict[str, Any] = {"env_kwargs": {**base.env_kwargs, **self.env_kwargs}}
        for name in ("max_turns", "max_new_tokens_per_turn", "max_context_tokens"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return dataclasses.replace(base, **changes)


@dataclass
class EvalConfig:
    n_samples: int = 1
    """Episodes per prompt."""
    ks: tuple[int, ...] = (1,)
    """k values of pass@k, pass^k and maj@k (those above n_samples are skipped)."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    max_turns: int | None = None
    max_context_tokens: int = 4096
    max_new_tokens_per_turn: int = 1024
    concurrency: int = 64
    success_threshold: float = 1.0
    """An episode succeeds when its reward is at least this."""
    episode_timeout: float | None = 600.0
    seed: int = 1234
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments for every environment (as in training)."""

    def rollout_config(self) -> RolloutConfig:
        return RolloutConfig(n_samples_per_prompt=self.n_samples, max_turns=self.max_turns,
                             max_context_tokens=self.max_context_tokens,
                             max_new_tokens_per_turn=self.max_new_tokens_per_turn, sampling=self.sampling,
                             concurrency=self.concurrency, episode_timeout=self.episode_timeout,
                             env_kwargs=dict(self.env_kwargs))


GroupCallback = Callable[[EvalTask, PromptRow, Group], None]


async def evaluate(
    engine: Engine,
    template: Any,
    tasks: Sequence[EvalTask],
    config: EvalConfig,
    *,
    on_group: GroupCallback | None = None,
    done: dict[str, dict[int, list[Sample]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every task; return ``{task: {"metrics": {...}, "samples": [...], "engine_failures": [...]}}``.

    The prompts of all tasks share one pool of ``config.concurrency`` episodes in flight (so an
    engine batches across tasks). ``done[task][row_index]`` holds samples of prompts finished in
    an earlier run: they are counted, not re-run. A prompt with an episode the engine failed
    (:func:`~agentrl.rollout.engine_failed`) is neither scored nor passed to ``on_group``: its
    ``(row index, error)`` goes to ``engine_failures``, and a later run evaluates it again.
    """
    done = done or {}
    # at most `concurrency` episodes in flight: groups of n_samples are admitted a whole group at a time
    admit = asyncio.Semaphore(max(1, config.concurrency // config.n_samples))
    finished: dict[str, dict[int, list[Sample]]] = {t.name: dict(done.get(t.name, {})) for t in tasks}
    failures: dict[str, list[tuple[int, str]]] = {t.name: [] for t in tasks}

    async def one(task: EvalTask, rollout: Rollout, row: PromptRow, first_group_id: int) -> None:
        async with admit:
            # group ids (engine request ids, sampling seeds) from the task's position and the row's
            # index: unique across the tasks running together, and independent of which other
            # rows are evaluated, so a resumed or a longer run gives the same episodes
            group = await rollout.generate_group(row, group_id=first_group_id + row.index)
        failed = [s for s in group.samples if engine_failed(s)]
        if failed:
            failures[task.name].append((row.index, failed[0].error or ""))
            return
        finished[task.name][row.index] = group.samples
        if on_group is not None:
            on_group(task, row, group)

    jobs = []
    for position, task in enumerate(tasks):
        if task.rows and max(row.index for row in task.rows) >= GROUP_ID_STRIDE:
            raise ValueError(f"task {task.name!r}: row indices must be below {GROUP_ID_STRIDE}")
        rollout = Rollout(engine, template, task.rollout_config(config), default_env_id=task.env_id, filters=(),
                          seed=config.seed)
        jobs += [one(task, rollout, row, EVAL_GROUP_BASE + position * GROUP_ID_STRIDE)
                 for row in task.rows if row.index not in finished[task.name]]
    await asyncio.gather(*jobs)
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        groups = [sorted(finished[task.name][row.index], key=lambda s: s.sample_index)
                  for row in task.rows if row.index in finished[task.name]]
        results[task.name] = {"metrics": task_metrics(groups, config), "samples": [s for g in groups for s in g],
                              "engine_failures": sorted(failures[task.name])}
    return results


def task_metrics(groups: Sequence[Sequence[Sample]], config: EvalConfig) -> dict[str, float]:
    """Prompt-averaged metrics plus episode statistics of one task.

    Keys: ``reward_mean`` (avg@n), ``success``, ``pass@k``, ``pass^k``, ``maj@k`` (when the
    environment reports an extracted answer, ``info["extracted"]`` or ``info["answer"]``),
    ``status_{ok,truncated,aborted,failed}`` (counts), ``timed_out`` (the failed episodes that
    ``--episode-timeout`` stopped: out of time, not wrong), ``prompts``, ``episodes`` and per-episode
    means ``turns_mean``, ``prompt_tokens_mean``, ``generated_tokens_mean``,
    ``response_tokens_mean``, ``tool_calls_mean``, ``tool_errors_mean``. Success (and pass@k, pass^k,
    maj@k) counts the task's reward alone (:func:`agentrl.env.shaping.task_reward`): shaping terms add to
    ``reward_mean`` but never make a success; with named components ``task_reward_mean`` is reported too.
    """
    if not groups:
        return {}
    samples = [s for g in groups for s in g]
    extractable = any(_answer_key(s) is not None for s in samples)
    per_prompt = [
        group_metrics([task_reward(s) for s in g], config.ks, config.success_threshold,
                      answers=[_answer(s) for s in g] if extractable else None) | {"avg": statistics.fmean(
                          s.reward for s in g)}
        for g in groups
    ]
    keys = sorted({k for m in per_prompt for k in m})
    out: dict[str, float] = {}
    for k in keys:
        vals = [m[k] for m in per_prompt if k in m]
        out[k] = statistics.fmean(vals)
    out["reward_mean"] = out.pop("avg")
    statuses = Counter(s.status for s in samples)
    for status in ("ok", "truncated", "aborted", "failed"):
        out[f"status_{status}"] = float(statuses.get(status, 0))
    out["timed_out"] = float(sum(map(timed_out, samples)))
    if any(s.rewards for s in samples):
        out["task_reward_mean"] = statistics.fmean(task_reward(s) for s in samples)
    out["prompts"] = float(len(groups))
    out["episodes"] = float(len(samples))
    for key, fn in (("turns", lambda s: s.num_turns), ("prompt_tokens", lambda s: len(s.prompt_ids)),
                    ("generated_tokens", lambda s: s.num_generated_tokens),
                    ("response_tokens", lambda s: len(s.response_ids)),
                    ("tool_calls", lambda s: s.metrics.get("tool_calls", 0.0)),
                    ("tool_errors", lambda s: s.metrics.get("tool_errors", 0.0))):
        out[f"{key}_mean"] = statistics.fmean(float(fn(s)) for s in samples)
    return out


def _answer_key(sample: Sample) -> str | None:
    info = sample.metadata.get("env_info", {})
    return "extracted" if "extracted" in info else "answer" if "answer" in info else None


def _answer(sample: Sample) -> str | None:
    key = _answer_key(sample)
    value = sample.metadata["env_info"][key] if key else None
    return None if value is None else str(value)
