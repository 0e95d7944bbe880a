import pytest

from agentrl.testing import FakeEngine

from agentrl.eval.runner import EVAL_GROUP_BASE, GROUP_ID_STRIDE

SEED_STRIDE = 10_007
"""Rollout.requests_for gives sample i of group g the sampling seed ``base + 10007 * g + i``; the
first task's group of row r is ``EVAL_GROUP_BASE + r``."""


@pytest.fixture
def scripted(tokenizer):
    """``scripted(reply)``: a FakeEngine answering ``reply(row, sample, prompt_text)`` for the first
    turn of every episode (base sampling seed 0); it records each (row, sample) it served."""

    def make(reply, *, kill_after=None):
        served = []

        def respond(ids, sampling):
            group, sample = divmod(sampling.seed, SEED_STRIDE)
            row = (group - EVAL_GROUP_BASE) % GROUP_ID_STRIDE
            if kill_after is not None and len(served) >= kill_after:
                raise Killed()
            served.append((row, sample))
            text = reply(row, sample, tokenizer.decode(ids))
            return tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)

        engine = FakeEngine(responder=respond)
        engine.served = served
        return engine

    return make


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so the episode loop does not record it as data."""


@pytest.fixture
def killed():
    return Killed
