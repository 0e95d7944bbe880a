"""Every docstring example in agentrl.algo runs and prints what it says."""

import doctest
import importlib

import pytest

MODULES = [
    "agentrl.algo",
    "agentrl.algo._names",
    "agentrl.algo.advantages",
    "agentrl.algo.aggregate",
    "agentrl.algo.entropy",
    "agentrl.algo.gigpo",
    "agentrl.algo.kl",
    "agentrl.algo.losses",
    "agentrl.algo.objective",
    "agentrl.algo.registry",
    "agentrl.algo.returns",
    "agentrl.algo.tis",
    "agentrl.algo.turns",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
