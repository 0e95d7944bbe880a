"""A number-guessing game written against OpenEnv's own base classes (``openenv.core``)."""

import random

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field


class GuessAction(Action):
    guess: int = Field(..., description="a whole number from 1 to 20")


class GuessObservation(Observation):
    feedback: str = ""
    guesses_left: int = 0


class GuessEnvironment(Environment):
    """Find a number from 1 to 20 in 5 guesses; each wrong guess is answered 'higher' or 'lower'."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, guesses: int = 5):
        super().__init__()
        self.guesses = guesses
        self._state = State(step_count=0)
        self.secret, self.left = 0, 0

    def reset(self, seed=None, episode_id=None, low: int = 1, **kwargs) -> GuessObservation:
        self.secret = random.Random(seed).randint(low, 20)
        self.left = self.guesses
        self._state = State(episode_id=episode_id, step_count=0)
        return GuessObservation(feedback=f"I picked a number from {low} to 20. Guess it.", guesses_left=self.left)

    def step(self, action: GuessAction, timeout_s=None, **kwargs) -> GuessObservation:
        self._state.step_count += 1
        self.left -= 1
        if action.guess == self.secret:
            return GuessObservation(feedback="Correct!", guesses_left=self.left, done=True, reward=1.0)
        hint = "higher" if action.guess < self.secret else "lower"
        return GuessObservation(feedback=f"{action.guess} is wrong: go {hint}.", guesses_left=self.left,
                                done=self.left == 0, reward=0.0, metadata={"hint": hint})

    def oracle(self, seed):
        return [GuessAction(guess=self.secret)]

    @property
    def state(self) -> State:
        return self._state
