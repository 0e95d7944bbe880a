"""A reward function with a bug: it raises on every episode (tests/rollout/test_signal.py)."""


def reward(sample, **kwargs):
    raise KeyError("answer")
