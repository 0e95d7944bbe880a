"""The modules below each keep a runnable docstring example.

pytest runs every docstring example of the library (``--doctest-modules`` in pyproject.toml); this
test guards the other half for the public modules whose examples document their API: that the
examples do not quietly disappear or all turn into ``+SKIP``.
"""

import doctest
import importlib

MODULES = [
    # the algorithm layer
    "agentrl.algo", "agentrl.algo._names", "agentrl.algo.advantages", "agentrl.algo.aggregate",
    "agentrl.algo.entropy", "agentrl.algo.kl", "agentrl.algo.losses", "agentrl.algo.objective",
    "agentrl.algo.registry", "agentrl.algo.returns", "agentrl.algo.tis",
    # chat templates, evaluation, tool calls
    "agentrl.chat.template", "agentrl.chat.conversation", "agentrl.chat.incremental",
    "agentrl.eval.metrics", "agentrl.eval.runner", "agentrl.eval.tasks", "agentrl.eval.store", "agentrl.eval.report",
    "agentrl.tool", "agentrl.tool.executor", "agentrl.tool.parsers", "agentrl.tool.schema", "agentrl.tool.validation",
    # engines, the cluster and the async loop
    "agentrl.engine._server_protocol", "agentrl.engine._server_run", "agentrl.engine.server", "agentrl.engine.sglang",
    "agentrl.cluster.placement", "agentrl.cluster.build", "agentrl.cluster.engine_pool", "agentrl.async_loop",
    "agentrl.rollout.async_partial",
    # utilities and observability
    "agentrl.utils.attention", "agentrl.utils.safe_json", "agentrl.obs.dump",
    # the shipped environments and tools
    "envs.gym_text", "envs.math", "envs._math_grading", "envs._scoring", "envs.reasoning_gym_env",
    "tools.calculator", "tools.python_exec",
]


def _runnable_examples(name: str) -> int:
    tests = doctest.DocTestFinder().find(importlib.import_module(name))
    return sum(not example.options.get(doctest.SKIP) for test in tests for example in test.examples)


def test_each_module_has_a_runnable_example():
    without = [name for name in MODULES if _runnable_examples(name) == 0]
    assert not without, f"modules without a runnable docstring example: {without}"
