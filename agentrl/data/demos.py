"""Demonstrations for the supervised warm start, as tokens the RL path would have made.

A demonstration is a conversation whose assistant turns show what to do. It comes from

* a JSONL file, one ``{"messages": [...], "tools": [...]}`` a line (``tools`` optional: OpenAI-style
  schemas given to the chat template, as an environment's ``tool_schemas()`` are); or
* an environment's scripted **oracle** (:func:`oracle_demos`): an environment may define
  ``oracle() -> str``, the reply that solves its current state (a shortest path's next move, the
  right tool call, the gold answer), or ``oracle(seed) -> list[str]``, the episode's replies
  (:func:`agentrl.env.exploits.oracle_policy`). Each training row's episode is played with it through the
  environment's own ``reset``/``step``, with the run's seeds, and kept only when the environment
  rewards it as a success: the environment checks every demonstration it gives.

:func:`demo_sample` turns a conversation into a :class:`~agentrl.types.Sample` exactly as the episode
loop does (:class:`~agentrl.chat.TokenConversation`): the opening messages rendered once with the
generation prompt; each assistant turn as the tokens an engine that wrote that text would have
returned (its text encoded, then the template's end-of-turn token; loss mask 1); each run of other
messages after it as an observation (fixed-prefix rendering, loss mask 0). So the warm start trains on
the tokens, and only on the assistant tokens, that RL would train on for the same conversation.
Messages after the last assistant turn are left out (the episode loop does not render a final
observation either).

Example::

    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> template = ChatTemplate(load_tokenizer("tiny-qwen2"))
    >>> s = demo_sample(template, [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}])
    >>> template.tokenizer.decode(s.response_ids), s.loss_mask
    ('5<|im_end|>', [1, 1])
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.types import Sample

log = logging.getLogger(__name__)

ORACLE = "oracle"
"""``--sft-data oracle``: demonstrations from the environment's scripted oracle on the training rows."""


class DemoError(ValueError):
    """A demonstration that cannot be used; the message names the file and line."""


@dataclass
class Demo:
    """One demonstration conversation."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    source: str = ""
    """``file:line``, or the environment and row it was played on."""
    metadata: dict[str, Any] = field(default_factory=dict)


def load_demos(path: str | Path) -> list[Demo]:
    """Demonstrations from a JSONL file of ``{"messages": [...], "tools": [...]}`` (a :class:`DemoError`
    names the first bad line)."""
    path = Path(path).expanduser()
    demos = []
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark opens some files
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DemoError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                raise DemoError(f'{where}: expected {{"messages": [...]}}; got {str(row)[:80]}')
            tools, metadata = row.get("tools"), row.get("metadata") or {}
            if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
                raise DemoError(f"{where}: tools must be a list of tool schemas (objects); got {str(tools)[:80]}")
            if not isinstance(metadata, dict):
                raise DemoError(f"{where}: metadata must be an object; got {str(metadata)[:80]}")
            demo = Demo(row["messages"], tools, where, metadata)
            check_demo(demo)
            demos.append(demo)
    if not demos:
        raise DemoError(f"{path}: no demonstrations")
    return demos


def check_demo(demo: Demo) -> None:
    """A demonstration opens with other messages, has an assistant turn, and holds text contents."""
    roles = []
    for i, m in enumerate(demo.messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DemoError(f"{demo.source}: message {i} must be {{'role': str, 'content': str}} (a tool call is "
                            f"written in the content, as the model writes it); got {str(m)[:80]}")
        roles.append(m["role"])
    if not roles or roles[0] == "assistant":
        raise DemoError(f"{demo.source}: a demonstration opens with the messages the model reads (system/user); "
                        f"got roles {roles[:3]}")
    if "assistant" not in roles:
        raise DemoError(f"{demo.source}: no assistant message to learn from")


def demo_sample(template: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                **fields: Any) -> Sample:
    """The :class:`Sample` of a demonstration conversation, tokenized as the episode loop would (module doc).
    ``fields`` set other ``Sample`` fields (``source`` goes to ``metadata``)."""
    from agentrl.chat import TokenConversation

    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    conv = TokenConversation(template, [dict(m) for m in messages[:first]], tools=tools or None)
    pending: list[dict[str, Any]] = []
    for m in messages[first:last + 1]:
        if m["role"] != "assistant":
            pending.append(dict(m))
            continue
        if pending:
            conv.add_observation(pending)
            pending = []
        ids = template.encode_text(m["content"]) + list(template.end_of_turn_ids)
        conv.add_completion(ids, None, text=m["content"])
    metadata = dict(fields.pop("metadata", {}))
    if "source" in fields:
        metadata["source"] = fields.pop("source")
    sample = Sample(**conv.to_sample_fields(), messages=conv.messages, num_turns=conv.num_turns,
                    metadata=metadata, **fields)
    sample.validate()
    return sample


def demo_samples(template: Any, demos: Sequence[Demo]) -> list[Sample]:
    return [demo_sample(template, d.messages, d.tools, source=d.source, metadata=d.metadata) for d in demos]


# -- demonstrations from an environment's oracle ---------------------------------------------------------
def has_oracle(env: Any) -> bool:
    return callable(getattr(getattr(env, "unwrapped", env), "oracle", None))


async def play_oracle(env: Any, request: Any, max_turns: int) -> tuple[Demo | None, float]:
    """Play one episode of ``env`` with its ``oracle()`` (the ``request``'s reset options and seed); the
    demonstration and the reward the environment gave it (``None`` for an episode that never ended)."""
    from agentrl.env.exploits import oracle_policy

    messages, _ = await env.areset(seed=request.env_seed, options=request.options)
    policy = oracle_policy(env, request.env_seed)
    tools = env.tool_schemas() or None
    conversation, total = [dict(m) for m in messages], 0.0
    for turn in range(max_turns):
        action = policy(turn)
        if action is None:
            break
        conversation.append({"role": "assistant", "content": action})
        observation, reward, terminated, truncated, _ = await env.astep(action)
        total += float(reward)
        if terminated or truncated:
            demo = Demo(conversation, tools, f"{request.env_id} row {request.metadata.get('prompt_index')}")
            return (demo if terminated else None), total
        conversation += [dict(m) for m in observation]
    return None, total


async def oracle_demos(rollout: Any, rows: Sequence[Any], *, success: float = 1.0) -> list[Demo]:
    """Demonstrations of ``rows`` by their environments' oracles, with the seeds and options ``rollout``
    gives their episodes (:meth:`~agentrl.rollout.Rollout.requests_for`); kept when the episode ends with a
    reward of at least ``success``. Raises :class:`DemoError` when an environment has no oracle or none
    succeeds."""
    from agentrl.env import make

    config = rollout.config
    demos, failed, errors = [], 0, []
    for row in rows:
        request = rollout.requests_for(row, group_id=0)[0]
        env = make(request.env_id, max_turns=config.max_turns, **config.env_kwargs)
        try:
            if not has_oracle(env):
                raise DemoError(f"--sft-data oracle: {request.env_id} has no oracle() to demonstrate its task; "
                                "give a JSONL file of demonstrations instead")
            demo, reward = await play_oracle(env, request, config.max_turns or 64)
        except DemoError:
            raise
        except Exception as e:  # an oracle (user code) that fails on a row: recorded, the row left out
            where = f"{request.env_id} row {request.metadata.get('prompt_index')}"
            errors.append(f"{where}: {type(e).__name__}: {e}")
            log.debug("oracle failed on %s", where, exc_info=True)
            continue
        finally:
            await asyncio.to_thread(env.close)
        if demo is None or reward < success:
            failed += 1
            continue
        demos.append(demo)
    if failed:
        log.info("oracle demonstrations: %d of %d episodes did not succeed and were left out", failed, len(rows))
    if errors:
        log.warning("oracle demonstrations: the oracle raised on %d of %d rows, left out (first: %s)",
                    len(errors), len(rows), errors[0])
    if not demos:
        raise DemoError(f"--sft-data oracle: the oracle succeeded on none of {len(rows)} training rows"
                        + (f" ({len(errors)} raised; first: {errors[0]})" if errors else ""))
    return demos
