"""Shaped rewards as named components, and the check that they cannot be gamed.

A small model that never earns the task's reward gives RL nothing to compare. Shaping adds small
rewards for steps towards it (a valid tool call, progress in a game). Each environment that shapes
names its terms, takes their weights as ``shaping={"name": weight}`` (``--env-kwargs``), and reports
in every step's ``info["reward_components"]`` what each part of that step's reward was:

* ``"task"``: the reward the environment gives without shaping;
* one entry per shaping term, already weighted.

The step's reward is their sum. The episode loop adds them up into :attr:`Sample.rewards
<agentrl.types.Sample.rewards>`; held-out evaluation scores success on the task component alone
(:func:`task_reward`), so no shaping term can turn a failure into a held-out success, and the
curriculum follows the same success.

**Gaming.** A shaping term pays for something that is not the task, so a policy can collect it without
solving the task. Each environment's docstring says how each of its terms can be collected without
success and what bounds it (once per episode, a potential difference that telescopes). An environment
with shaping also offers scripted ``exploits()``, policies that collect its terms without solving the
task, beside its ``oracle()``; :func:`check_shaping` plays both and reports any exploit whose return reaches
the success threshold or the oracle's return, and any step whose components do not add up to its reward.

Example::

    >>> weights = shaping_weights({"progress": 0.2}, {"progress": "..."}, "FrozenLake")
    >>> combine(1.0, {"progress": 0.5}, weights)
    (1.1, {'task': 1.0, 'progress': 0.1})
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TASK = "task"
"""The component holding the environment's reward without shaping."""


def shaping_weights(shaping: Mapping[str, Any] | None, terms: Mapping[str, str], env: str) -> dict[str, float]:
    """Validate ``shaping`` (term -> weight) against the environment's ``terms`` (term -> what it pays for):
    known names, finite weights >= 0. Returns the weights as floats (empty: no shaping)."""
    out: dict[str, float] = {}
    for name, weight in dict(shaping or {}).items():
        if name not in terms:
            close = difflib.get_close_matches(str(name), list(terms), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{env} has no shaping term {name!r}{hint}; its terms: "
                             + "; ".join(f"{k}: {v}" for k, v in terms.items()))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{env} shaping weight of {name!r} must be a number >= 0; got {weight!r}")
        out[name] = float(weight)
    return out


def combine(task: float, earned: Mapping[str, float], weights: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """``(reward, components)`` of one step: the task reward plus each weighted shaping term (``earned``:
    what each term is worth this step before its weight)."""
    components = {TASK: float(task)} | {name: w * float(earned.get(name, 0.0)) for name, w in weights.items()}
    return sum(components.values()), components


def task_reward(sample: Any) -> float:
    """The episode's reward without shaping: its ``task`` component when it has components, else its reward."""
    return float(sample.rewards.get(TASK, sample.reward)) if sample.rewards else float(sample.reward)


# -- the exploit check -------------------------------------------------------------------------------------
def play(env: Any, policy: Callable[[], str], seed: int, options: dict[str, Any] | None, max_turns: int
         ) -> tuple[float, dict[str, float], list[str]]:
    """One episode of ``env`` (sync API) with ``policy``: its return, summed components, and problems."""
    env.reset(seed=seed, options=options)
    total, problems = 0.0, []
    summed: dict[str, float] = {}
    for turn in range(max_turns):
        _, reward, terminated, truncated, info = env.step(policy())
        total += float(reward)
        parts = info.get("reward_components")
        if parts is None:
            problems.append(f"seed {seed} turn {turn}: info has no 'reward_components'")
        else:
            for k, v in parts.items():
                summed[k] = summed.get(k, 0.0) + float(v)
            if not math.isclose(sum(parts.values()), float(reward), abs_tol=1e-9):
                problems.append(f"seed {seed} turn {turn}: components {parts} add up to {sum(parts.values())}, "
                                f"the reward is {reward}")
        if terminated or truncated:
            break
    return total, summed, problems


def check_shaping(make_env: Callable[[], Any], seeds: Sequence[int], *, options: Sequence[dict | None] | None = None,
                  success: float = 1.0, max_turns: int = 32) -> list[str]:
    """Play the environment's ``oracle()`` and each of its ``exploits()`` on ``seeds`` (with ``options[i]`` as
    reset options) and return the problems found (empty: the shaping holds):

    * a step whose ``reward_components`` are missing or do not add up to its reward;
    * an exploit episode that succeeds at the task (then it is no exploit: fix the policy);
    * an exploit episode whose return reaches ``success`` or the oracle's return on the same seed.
    """
    env = make_env()
    problems: list[str] = []
    try:
        unwrapped = getattr(env, "unwrapped", env)
        for i, seed in enumerate(seeds):
            opts = options[i] if options else None
            best, _, found = play(env, unwrapped.oracle, seed, opts, max_turns)
            problems += [f"oracle: {p}" for p in found]
            for name, policy in unwrapped.exploits().items():
                total, parts, found = play(env, policy, seed, opts, max_turns)
                problems += [f"exploit {name}: {p}" for p in found]
                task = parts.get(TASK, total)
                if task >= success:
                    problems.append(f"exploit {name} solved the task on seed {seed}: it is no exploit")
                elif total >= success or total >= best:
                    problems.append(f"exploit {name} earned {total:.3f} on seed {seed} without solving the task "
                                    f"(components {parts}); the oracle earned {best:.3f}")
    finally:
        env.close()
    return problems
