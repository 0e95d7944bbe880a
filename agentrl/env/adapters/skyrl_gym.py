"""A skyrl-gym environment as an agentrl environment: ``make("agentrl/SkyRL-v0", env="gsm8k")``.

skyrl-gym builds one environment per episode from the row's data: ``skyrl_gym.make(id, env_config=...,
extras=...)``, then ``init(prompt) -> (prompt, metadata)`` and ``step(text) -> {observations, reward,
done, metadata}``. The mapping:

* ``reset(seed, options)``: the row's ``prompt`` (a string or chat messages) and its ``extras``; a
  row without ``extras`` but with a ``label`` gets skyrl's usual ``{"reward_spec": {"method": "rule",
  "ground_truth": label}}``. Without a prompt, a row of ``rows`` is drawn with the seeded RNG.
* ``step(text)``: skyrl's ``observations`` are the new messages, ``reward`` the reward, ``done`` is
  ``terminated``; its ``metadata`` (made JSON-safe) is ``info``.
* Tools: a skyrl environment parses and runs its own tool calls inside ``step`` (its ``tool_groups``),
  so they reach agentrl as observations; ``env.tools`` is empty and no schema goes to the template.
* Not carried over: ``postprocessed_action`` (skyrl's rewrite of the reply: agentrl keeps the tokens
  the model produced), ``get_metrics``/``aggregate_metrics`` (the last ``metadata`` is in ``info``),
  and skyrl's own turn budget is ``terminated``, not ``truncated`` (agentrl's ``max_turns`` truncates).

Example::

    >>> env = SkyRLGymEnv("gsm8k")                                          # doctest: +SKIP
    >>> messages, info = env.reset(options={"prompt": "2 + 2?", "label": "4"})  # doctest: +SKIP
    >>> env.step("#### 4")[1:3]                                               # doctest: +SKIP
    (1.0, True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.utils.extras import require

GSM8K_SAMPLE = Path(__file__).resolve().parents[3] / "envs" / "data" / "gsm8k_sample.jsonl"


class SkyRLGymEnv(TextEnv):
    """One skyrl-gym environment per episode (see the module docstring).

    Args:
        env: the skyrl-gym id (``"gsm8k"``, ``"gsm8k_multi_turn"``, ``"search"``, ...; anything registered).
        env_config: passed to the skyrl environment's constructor.
        rows: what ``reset`` without a prompt draws from: dicts with ``prompt`` (or ``question``) and
            ``label`` (or ``answer``, a GSM8K ``#### n`` answer is cut to ``n``) or ``extras``; a JSONL
            path; default: ten GSM8K problems in ``envs/data``.
        prompt_suffix: appended to a string prompt (skyrl's GSM8K data asks for ``#### answer`` this way).
    """

    def __init__(self, env: str = "gsm8k", *, env_config: Mapping[str, Any] | None = None,
                 rows: str | Sequence[Mapping[str, Any]] | None = None,
                 prompt_suffix: str = ' Let\'s think step by step and output the final answer after "####".'):
        super().__init__()
        self.skyrl = require("skyrl_gym", extra="skyrl", what="agentrl/SkyRL-v0", package="skyrl-gym")
        if env not in self.skyrl.registry:
            raise ValueError(f"skyrl-gym has no environment {env!r}; registered: {sorted(self.skyrl.registry)}")
        self.env_id, self.env_config = env, dict(env_config or {})
        self.rows = _load_rows(GSM8K_SAMPLE if rows is None else rows)
        self.prompt_suffix = prompt_suffix
        self.inner: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        row = dict(options or {})
        if not any(k in row for k in ("prompt", "question")):
            if not self.rows:
                raise ValueError("reset needs options with a 'prompt' (and 'label' or 'extras'), or rows=")
            row = {**self.rows[int(self.np_random.integers(0, len(self.rows)))], **row}
        prompt = row.get("prompt", row.get("question"))
        messages = ([dict(m) for m in prompt] if isinstance(prompt, list)
                    else [{"role": "user", "content": f"{prompt}{self.prompt_suffix}"}])
        extras = row.get("extras")
        if extras is None:
            label = row.get("label", row.get("answer"))
            if label is None:
                raise ValueError(f"a row needs 'extras' or a 'label'; got keys {sorted(row)}")
            label = str(label).split("####")[-1].strip()
            extras = {"reward_spec": {"method": "rule", "ground_truth": label}}
        self._close_inner()
        self.inner = self.skyrl.make(self.env_id, env_config=self.env_config, extras=extras)
        messages, metadata = self.inner.init(messages)
        return [dict(m) for m in messages], {"skyrl_env": self.env_id, **_jsonable(metadata or {})}

    def step(self, action: str):
        if self.inner is None:
            raise RuntimeError("call reset() before step()")
        out = self.inner.step(action)
        info = _jsonable(out.get("metadata") or {})
        return ([dict(m) for m in out.get("observations") or []], float(out["reward"]), bool(out["done"]), False,
                info)

    def _close_inner(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.close()

    def close(self) -> None:
        self._close_inner()
        super().close()


def _load_rows(rows: str | Path | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(rows, (str, Path)):
        return [json.loads(line) for line in Path(rows).read_text().splitlines() if line.strip()]
    return [dict(r) for r in rows]


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v if _json_ok(v) else repr(v) for k, v in d.items()}


def _json_ok(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False
