"""Group filters: plain functions ``Group -> Group | None`` (None drops the group).

They run in order after a group's episodes finish; the rollout counts what each dropped
under the function's name.

* :func:`drop_failed`: remove failed/aborted episodes (they never reach the trainer).
* :func:`drop_zero_variance`: DAPO's dynamic sampling: a group whose rewards are all equal
  gives zero group-relative advantage, so it is dropped and the rollout over-samples.
* :func:`overlong_mask` / :func:`overlong_penalty`: truncated episodes get no gradient, or a
  fixed penalty reward (DAPO, arXiv 2503.14476, section 3.4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from agentrl.types import Group

GroupFilter = Callable[[Group], "Group | None"]


def drop_failed(group: Group) -> Group | None:
    kept = [s for s in group.samples if s.trainable]
    return dataclasses.replace(group, samples=kept) if kept else None


def drop_zero_variance(group: Group, tol: float = 1e-6) -> Group | None:
    rewards = group.rewards
    if len(rewards) < 2 or max(rewards) - min(rewards) <= tol:
        return None
    return group


def overlong_mask(group: Group) -> Group:
    """Truncated episodes stay (their tokens count for metrics) but get loss_mask 0 everywhere."""
    for s in group.samples:
        if s.status == "truncated":
            s.loss_mask = [0] * len(s.loss_mask)
            s.metadata["overlong_masked"] = True
    return group


def overlong_penalty(penalty: float = -1.0) -> GroupFilter:
    """Truncated episodes get reward ``penalty`` (a filter factory)."""

    def overlong_penalty(group: Group) -> Group:
        for s in group.samples:
            if s.status == "truncated":
                s.rewards = {**s.rewards, "overlong_penalty": penalty}
                s.set_outcome_reward(penalty)
        return group

    return overlong_penalty


def default_filters(*, dynamic_sampling: bool = False, overlong: str | None = None,
                    overlong_penalty_value: float = -1.0) -> list[GroupFilter]:
    """The usual pipeline: drop failures, handle over-long episodes, then dynamic sampling."""
    filters: list[GroupFilter] = [drop_failed]
    if overlong == "mask":
        filters.append(overlong_mask)
    elif overlong == "penalty":
        filters.append(overlong_penalty(overlong_penalty_value))
    elif overlong not in (None, "none", "keep"):
        raise ValueError(f"overlong handling must be one of 'keep', 'mask', 'penalty'; got {overlong!r}")
    if dynamic_sampling:
        filters.append(drop_zero_variance)
    return filters
