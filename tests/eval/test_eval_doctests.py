"""Every docstring example in agentrl.eval runs and prints what it says."""

import doctest
import importlib

import pytest

MODULES = ["agentrl.eval.metrics", "agentrl.eval.runner", "agentrl.eval.tasks", "agentrl.eval.store",
           "agentrl.eval.report"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
