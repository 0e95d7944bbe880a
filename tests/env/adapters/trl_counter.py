"""An environment written to TRL's ``environment_factory`` contract (reset, public methods as tools,
get_reward), with no agentrl import: what a TRL user already has."""


class Counter:
    """Reach the target by calling increment; decrement undoes one step."""

    def reset(self, target: int = 7, **kwargs) -> str:
        self.value, self.target = 0, int(target)
        return f"The counter is at 0. Bring it to exactly {self.target} with the tools, then say done."

    def increment(self) -> str:
        """Add one to the counter and return its new value."""
        self.value += 1
        return f"counter = {self.value}"

    def add(self, amount: int) -> str:
        """Add an amount to the counter.

        Args:
            amount: how much to add, from 1 to 5.
        """
        if not 1 <= amount <= 5:
            raise ValueError("amount must be from 1 to 5")
        self.value += amount
        return f"counter = {self.value}"

    def get_reward(self) -> float:
        return 1.0 if self.value == self.target else 0.0
