"""verifiers environments written against verifiers' own base classes (``verifiers.v1``): a sum task with a
calculator tool server and a rubric, and a guessing game whose ``Env`` plays the user turn by turn."""

import random
from typing import Any

from agentrl.env.adapters.verifiers import load_verifiers

vf: Any = load_verifiers("the test module of verifiers tasksets")


class CalculatorToolset(vf.Toolset):
    @vf.tool
    def add(self, a: int, b: int) -> int:
        """Add two whole numbers.

        Args:
            a: the first number
            b: the second number
        """
        return a + b


class SumData(vf.TaskData):
    answer: int


class SumTask(vf.Task[SumData, vf.State, vf.TaskConfig]):
    @classmethod
    def toolsets(cls, config):
        return [CalculatorToolset(vf.ToolsetConfig())]

    @vf.reward(weight=1.0)
    async def exact(self, trace) -> float:
        """The reply is the sum and nothing else."""
        return float(trace.last_reply == str(self.data.answer))

    @vf.metric
    async def tool_calls(self, trace) -> float:
        return float(len(trace.tool_messages))


class SumTaskset(vf.Taskset[SumTask, vf.TasksetConfig]):
    def load(self):
        rng = random.Random(0)
        for _ in range(8):
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            yield SumTask(SumData(prompt=f"What is {a} + {b}? You may call the calculator. Reply with the number only.",
                                  system_prompt="You are exact.", answer=a + b))


class GuessData(vf.TaskData):
    secret: int


class GuessTask(vf.Task[GuessData, vf.State, vf.TaskConfig]):
    pass


class GuessTaskset(vf.Taskset[GuessTask, vf.TasksetConfig]):
    def load(self):
        for i in range(6):
            yield GuessTask(GuessData(prompt="I picked a number from 1 to 20. Reply with one number.",
                                      secret=random.Random(i).randint(1, 20)))


class GuessEnvConfig(vf.EnvConfig):
    player: vf.AgentConfig = vf.AgentConfig()
    guesses: int = 5


class GuessEnv(vf.Env[GuessEnvConfig]):
    """The game engine plays the user, as verifiers' TextArena and OpenEnv environments do."""

    async def run(self, task, agents):
        found = 0.0
        async with agents.player.interaction(task) as interaction:
            segment = await interaction.turn()
            for left in range(self.config.guesses - 1, -1, -1):
                reply = segment.last_reply
                if reply == str(task.data.secret):
                    found = 1.0
                    break
                if left == 0:
                    break
                hint = ("not a number" if not reply.isdigit()
                        else "higher" if int(reply) < task.data.secret else "lower")
                segment = await interaction.turn(f"{hint}; {left} guesses left")
        interaction.trace.record_reward("found", found)
