"""The records passed between stages: rollout -> filters -> advantages -> trainer.

A :class:`Sample` is one episode of one prompt: the prompt tokens, then every token that
followed (model output and observations interleaved), with a ``loss_mask`` that is 1 exactly
on the tokens the engine produced. Tokens are the truth; ``messages`` is a text view of the
same episode, kept for logs, transcripts and reward functions.

**Per turn.** An episode of several assistant turns also records, one entry per turn:
``turn_starts`` (where the turn's first generated token sits in ``response_ids``: the turn
boundaries in token positions), ``turn_rewards`` (what the environment's ``step`` returned for
it; ``reward`` is their sum) and ``state_keys`` (the environment's ``info["state_key"]`` for the
state the turn's action was taken in, or None). Turn-level estimators (GiGPO, the turn baseline;
``agentrl.algo.turns``) read them. Empty lists mean "not recorded" (a custom generate function,
an older record): the whole ``reward`` then counts as the last turn's.

A :class:`Group` holds the ``n_samples_per_prompt`` samples of one prompt; group-relative
advantages (GRPO, RLOO) are computed within it.

Example::

    >>> s = Sample(prompt_ids=[1, 2], response_ids=[3, 4, 5], loss_mask=[1, 0, 1],
    ...            rollout_logprobs=[-0.1, 0.0, -0.3], reward=1.0)
    >>> s.validate()
    >>> Sample.from_json(s.to_json()) == s
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "truncated", "aborted", "failed"]
STATUSES: tuple[str, ...] = ("ok", "truncated", "aborted", "failed")


class InvalidSampleError(ValueError):
    """A record broke one of its invariants (lengths, finiteness, status)."""


@dataclass
class Sample:
    """One episode. Token fields are flat lists of Python ints/floats (JSON-friendly).

    Invariants (checked by :meth:`validate`):
      * ``len(response_ids) == len(loss_mask) == len(rollout_logprobs)``;
      * ``loss_mask`` holds only 0 and 1; ``rollout_logprobs`` are finite and <= 0 where mask is 1;
      * ``reward`` and every value in ``rewards`` is finite;
      * ``status`` is one of ok / truncated / aborted / failed;
      * ``turn_starts``, ``turn_rewards`` and ``state_keys`` are each empty or hold one entry per
        turn (``num_turns``); turn starts are non-decreasing positions in ``response_ids`` with
        no generated token before the first; turn rewards are finite and add up to ``reward``;
        state keys are strings or None.
    """

    prompt_ids: list[int] = field(default_factory=list)
    """Tokens of the opening messages, through the first assistant header."""
    response_ids: list[int] = field(default_factory=list)
    """Every token after the prompt: model output (mask 1) and observation tokens (mask 0)."""
    loss_mask: list[int] = field(default_factory=list)
    """1 where the engine produced the token, 0 for observation and template tokens."""
    rollout_logprobs: list[float] = field(default_factory=list)
    """Engine log-probability of each response token (0.0 where ``loss_mask`` is 0)."""
    reward: float = 0.0
    """Scalar reward used for advantages."""
    rewards: dict[str, float] = field(default_factory=dict)
    """Named reward components (e.g. ``{"answer": 1.0, "format": 0.1}``)."""
    status: str = "ok"
    """ok | truncated (a budget ended it) | aborted (engine abort) | failed (an error)."""
    error: str | None = None
    """What went wrong when ``status`` is failed or aborted."""
    group_id: int = 0
    """Index of the prompt this sample belongs to within its rollout."""
    sample_index: int = 0
    """Index of this sample within its group."""
    env_id: str = ""
    """The environment that produced the episode."""
    label: Any = None
    """The reference answer from the dataset row, if any."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Text view: the chat messages of the whole episode."""
    num_turns: int = 0
    """Assistant turns taken."""
    weight_versions: list[int] = field(default_factory=list)
    """Engine weight version of each assistant turn."""
    turn_starts: list[int] = field(default_factory=list)
    """Position in ``response_ids`` of the first generated token of each assistant turn (turn ``k``
    runs to the next turn's start; its observation tokens, mask 0, are inside that span)."""
    turn_rewards: list[float] = field(default_factory=list)
    """The reward of each turn (the environment's ``step`` for it); ``reward`` is their sum."""
    state_keys: list[str | None] = field(default_factory=list)
    """For each turn, the environment's ``info["state_key"]`` of the state the turn acted in
    (the reset's for turn 0, the previous step's after), as a string; None where it gave none."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Per-episode numbers: timings, tool calls, tool errors, ..."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything else from the dataset row or the environment's info."""

    # -- derived views -----------------------------------------------------------------
    @property
    def tokens(self) -> list[int]:
        """prompt_ids + response_ids."""
        return self.prompt_ids + self.response_ids

    @property
    def response_length(self) -> int:
        return len(self.response_ids)

    @property
    def num_generated_tokens(self) -> int:
        """Tokens the engine produced (where loss_mask is 1)."""
        return sum(self.loss_mask)

    @property
    def trainable(self) -> bool:
        """Failed and aborted episodes never reach the trainer."""
        return self.status in ("ok", "truncated")

    # -- invariants ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`InvalidSampleError` naming the first broken invariant."""
        n = len(self.response_ids)
        if len(self.loss_mask) != n or len(self.rollout_logprobs) != n:
            raise InvalidSampleError(
                f"response_ids, loss_mask and rollout_logprobs must have equal lengths; got "
                f"{n}, {len(self.loss_mask)} and {len(self.rollout_logprobs)}"
            )
        if self.status not in STATUSES:
            raise InvalidSampleError(f"status must be one of {STATUSES}; got {self.status!r}")
        bad_mask = [m for m in self.loss_mask if m not in (0, 1)]
        if bad_mask:
            raise InvalidSampleError(f"loss_mask must hold only 0 and 1; got {bad_mask[0]!r}")
        for name, ids in (("prompt_ids", self.prompt_ids), ("response_ids", self.response_ids)):
            for t in ids:
                if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                    raise InvalidSampleError(f"{name} must hold non-negative ints; got {t!r}")
        if not _finite(self.reward):
            raise InvalidSampleError(f"reward must be finite; got {self.reward!r}")
        for key, value in self.rewards.items():
            if not _finite(value):
                raise InvalidSampleError(f"rewards[{key!r}] must be finite; got {value!r}")
        for i, (lp, m) in enumerate(zip(self.rollout_logprobs, self.loss_mask)):
            if not _finite(lp):
                raise InvalidSampleError(f"rollout_logprobs[{i}] must be finite; got {lp!r}")
            if m and lp > 1e-4:
                raise InvalidSampleError(f"rollout_logprobs[{i}] must be <= 0; got {lp!r}")
        self._validate_turns()

    def _validate_turns(self) -> None:
        for name in ("turn_starts", "turn_rewards", "state_keys"):
            values = getattr(self, name)
            if values and len(values) != self.num_turns:
                raise InvalidSampleError(
                    f"{name} must be empty or hold one entry per turn ({self.num_turns}); got {len(values)}")
        previous = 0
        for k, start in enumerate(self.turn_starts):
            if not isinstance(start, int) or isinstance(start, bool) or not previous <= start <= len(self.response_ids):
                raise InvalidSampleError(
                    f"turn_starts[{k}] must be an int in [{previous}, {len(self.response_ids)}] (non-decreasing "
                    f"positions in response_ids); got {start!r}")
            previous = start
        if self.turn_starts and any(self.loss_mask[: self.turn_starts[0]]):
            raise InvalidSampleError(f"a generated token (loss_mask 1) comes before the first turn's start "
                                     f"{self.turn_starts[0]}")
        for k, value in enumerate(self.turn_rewards):
            if not _finite(value):
                raise InvalidSampleError(f"turn_rewards[{k}] must be finite; got {value!r}")
        if self.turn_rewards and not math.isclose(sum(self.turn_rewards), self.reward, rel_tol=1e-9, abs_tol=1e-9):
            raise InvalidSampleError(
                f"turn_rewards must add up to reward {self.reward!r}; they add up to {sum(self.turn_rewards)!r}")
        for k, key in enumerate(self.state_keys):
            if key is not None and not isinstance(key, str):
                raise InvalidSampleError(f"state_keys[{k}] must be a string or None; got {type(key).__name__}")

    def set_outcome_reward(self, reward: float) -> None:
        """Replace the reward by ``reward`` earned at the end: the last turn's, every earlier turn 0
        (a reward function or a filter scoring the whole episode).

        Example::

            >>> s = Sample(num_turns=2, turn_rewards=[0.5, 0.5], reward=1.0)
            >>> s.set_outcome_reward(-1.0); s.turn_rewards
            [0.0, -1.0]
        """
        self.reward = reward
        if self.turn_rewards:
            self.turn_rewards = [0.0] * (len(self.turn_rewards) - 1) + [reward]

    # -- JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sample":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidSampleError(f"unknown Sample fields {unknown}; expected some of {sorted(names)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "Sample":
        return cls.from_dict(json.loads(text))


Episode = Sample
"""An alias: in multi-turn settings one sample is one whole episode."""


@dataclass
class Group:
    """The samples of one prompt (``n_samples_per_prompt`` of them)."""

    group_id: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def validate(self) -> None:
        for s in self.samples:
            if s.group_id != self.group_id:
                raise InvalidSampleError(
                    f"sample {s.sample_index} has group_id {s.group_id}, group is {self.group_id}"
                )
            s.validate()

    def to_dict(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "samples": [s.to_dict() for s in self.samples]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Group":
        return cls(group_id=data["group_id"], samples=[Sample.from_dict(s) for s in data["samples"]])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "Group":
        return cls.from_dict(json.loads(text))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _json_default(obj: Any) -> Any:
    # numpy scalars and tensors that slipped into metadata
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
