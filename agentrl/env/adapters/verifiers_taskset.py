"""agentrl environments as a verifiers taskset and ``Env`` (``AgentrlTaskset``, ``AgentrlEnv``).

The other direction of :mod:`agentrl.env.adapters.verifiers`: any registered agentrl environment
becomes a verifiers (``verifiers.v1``) taskset and ``Env``, so verifiers' eval, prime-rl or any
verifiers consumer can play it. verifiers finds a taskset by its id, a top-level module exporting
one ``Taskset`` and one ``Env`` subclass through ``__all__``: a file ``agentrl_tasks.py`` on the path
with the line ``from agentrl.env.adapters.verifiers_taskset import AgentrlEnv, AgentrlTaskset,
__all__`` makes ``--env.taskset.id agentrl-tasks`` this taskset. The config fields are
``--env.taskset.env`` (the agentrl id, default ``agentrl/Math-v0``), ``--env.taskset.env-kwargs``,
``--env.taskset.num-seeds`` (task ``i`` is the episode of seed ``i``) and ``--env.taskset.options``
(reset options; one task per entry, with seed 0, 1, ...). The mapping:

* A task is an episode: its data names the environment, the seed and the reset options; it has no
  prompt, so the environment opens the conversation (``reset``'s messages are the first turn).
* ``AgentrlEnv.run``: each reply of the ``agent`` seat is one ``step``; the new messages are the
  next user turn (tool results included, as text); ``terminated`` or ``truncated`` ends the
  exchange (and so does the registered ``max_turns``). The episode's return is the trace's reward
  ``agentrl_return``.
* Not carried over: the environment's tools are not declared to verifiers' harness (a model calls
  them by writing the environment's tool-call format, hermes ``<tool_call>`` tags), and agentrl's
  token bookkeeping (verifiers keeps its own on the trace).

Example (verifiers' side; the test plays it through :class:`~agentrl.env.adapters.verifiers.VerifiersEnv`)::

    >>> from verifiers.v1.utils.loaders import load_taskset, taskset_config_type   # doctest: +SKIP
    >>> tid = "agentrl-tasks"                                                       # doctest: +SKIP
    >>> tasks = load_taskset(taskset_config_type(tid)(id=tid, env="agentrl/GSM8K-v0", num_seeds=4))  # doctest: +SKIP
    >>> [t.data.seed for t in tasks]                                                # doctest: +SKIP
    [0, 1, 2, 3]
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agentrl.env.adapters.verifiers import load_verifiers

vf: Any = load_verifiers("agentrl environments as a verifiers taskset")

__all__ = ["AgentrlTaskset", "AgentrlEnv"]


class AgentrlTasksetConfig(vf.TasksetConfig):  # type: ignore[misc]
    env: str = "agentrl/Math-v0"
    """The agentrl environment id."""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of ``make``."""
    num_seeds: int = 16
    """Without ``options``: one task per seed 0 .. num_seeds-1."""
    options: list[dict[str, Any]] = Field(default_factory=list)
    """Reset options, one task each (seeds 0, 1, ...)."""


class AgentrlData(vf.TaskData):  # type: ignore[misc]
    env: str
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class AgentrlTask(vf.Task[AgentrlData, vf.State, vf.TaskConfig]):  # type: ignore[misc]
    pass


class AgentrlTaskset(vf.Taskset[AgentrlTask, AgentrlTasksetConfig]):  # type: ignore[misc]
    def load(self):
        c = self.config
        rows = c.options or [{} for _ in range(c.num_seeds)]
        for seed, options in enumerate(rows):
            yield AgentrlTask(AgentrlData(name=f"{c.env}#{seed}", prompt=None, env=c.env, env_kwargs=c.env_kwargs,
                                          seed=seed, options=dict(options)), c.task)


class AgentrlEnvConfig(vf.EnvConfig):  # type: ignore[misc]
    agent: vf.AgentConfig = vf.AgentConfig()


class AgentrlEnv(vf.Env[AgentrlEnvConfig]):  # type: ignore[misc]
    """One agentrl episode per task: the environment plays the user, the ``agent`` seat replies."""

    async def run(self, task: Any, agents: Any) -> None:
        from agentrl.env import make

        data = task.data
        env = make(data.env, **data.env_kwargs)
        total = 0.0
        try:
            messages, _ = await env.areset(seed=data.seed, options=dict(data.options) or None)
            async with agents.agent.interaction(task) as interaction:
                segment = await interaction.turn([dict(m) for m in messages])
                while not segment.terminated:
                    messages, reward, terminated, truncated, _ = await env.astep(segment.last_reply)
                    total += float(reward)
                    if terminated or truncated:
                        break
                    turn = [{"role": "user" if m.get("role") == "tool" else m.get("role", "user"),
                             "content": str(m.get("content") or "")} for m in messages]
                    segment = await interaction.turn(turn or "(no new observation)")
        finally:
            env.close()
        interaction.trace.record_reward("agentrl_return", total)
