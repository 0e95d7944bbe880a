from agentrl.env import TextEnv


class GuessEnv(TextEnv):
    """Guess a digit in at most 3 tries, with "higher"/"lower" hints; reward 1 for a hit."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)  # seeds self.np_random: each row's seed picks the digit
        self.target = int(self.np_random.integers(0, 10))
        return [{"role": "user", "content": "Let's play a game. I picked a digit from 0 to 9. What is your guess? Answer with just the digit."}], {}

    def step(self, action):
        digits = [c for c in action if c.isdigit()]
        if len(digits) != 1:  # no guess, or several: say what a valid reply is
            return [{"role": "user", "content": "Answer with just one digit, 0-9."}], 0.0, False, False, {"valid": False}
        guess = int(digits[0])
        if guess == self.target:
            return [], 1.0, True, False, {"valid": True}
        hint = "Higher." if guess < self.target else "Lower."
        return [{"role": "user", "content": hint}], 0.0, False, False, {"valid": True}
