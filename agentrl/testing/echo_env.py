"""``agentrl/Echo-v0``: the smallest real environment, for tests and examples.

The user asks the assistant to say a target word (drawn from the seeded RNG, or given as
``options={"target": ...}``). Each turn the environment echoes the action back; the episode
terminates with reward 1 when the action contains the target. Register-time ``max_turns``
bounds it (truncation comes from the TurnLimit wrapper, the one place budgets truncate).
"""

from __future__ import annotations

from typing import Any

from agentrl.env.core import TextEnv
from agentrl.env.registry import register

WORDS = ("apple", "river", "orange", "mountain", "cloud", "piano")


class EchoEnv(TextEnv):
    exploits_allowed = {
        "prompt echoed": "the task is to repeat a word of the prompt",
        "many candidates": "the task is to say a word of the prompt; any reply containing it succeeds",
        "tool results as candidates": "the same: the word is in every message the environment sends",
    }
    """Cheats of ``agentrl check-env --exploits`` that are this environment's task (see agentrl.env.exploits)."""

    def __init__(self, words: tuple[str, ...] = WORDS):
        super().__init__()
        self.words = tuple(words)
        self.target = self.words[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        self.target = str(options.get("target") or self.words[int(self.np_random.integers(0, len(self.words)))])
        messages = [{"role": "user", "content": f"Say the word '{self.target}'."}]
        return messages, {"target": self.target}

    def oracle(self, seed: int | None = None) -> list[str]:
        """The reference solution: say the target."""
        return [self.target]

    def step(self, action: str):
        said = self.target.lower() in action.lower()
        reply = "Correct." if said else f"You said: {action[:200]!r}. Say the word '{self.target}'."
        return [{"role": "user", "content": reply}], float(said), said, False, {"said_target": said}


register("Echo-v0", "agentrl.testing.echo_env:EchoEnv", max_turns=3)
