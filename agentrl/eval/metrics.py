"""Evaluation metrics over ``n`` episodes per prompt.

* ``avg@n``: mean reward over all episodes (``reward_mean`` in the metric dicts).
* ``pass@k``: probability that at least one of ``k`` episodes drawn without replacement from
  the ``n`` succeeds, estimated without bias as ``1 - C(n - c, k) / C(n, k)`` with ``c``
  successes (Chen et al. 2021, "Evaluating Large Language Models Trained on Code",
  arXiv 2107.03374, Eq. 1), averaged over prompts. Not best-of-n.
* ``pass^k``: probability that all ``k`` drawn episodes succeed, ``C(c, k) / C(n, k)``
  (tau-bench, Yao et al. 2024, arXiv 2406.12045, Eq. 1).
* ``maj@k``: accuracy of the majority answer among the first ``k`` episodes (ties broken by
  first occurrence), where the environment can extract an answer. Answers are compared after
  :func:`normalize_answer`; a prompt whose first ``k`` episodes gave no answer scores 0.

An episode succeeds when its reward is at least a threshold (1.0 by default: a correct answer,
a reached goal). Rewards with partial credit still count fully in ``avg@n``.

Example::

    >>> pass_at_k(n=4, c=1, k=2)
    0.5
    >>> pass_hat_k(n=4, c=2, k=2)
    0.16666666666666666
    >>> maj_at_k(["12", "7", "12.0"], [True, False, True], k=3)
    1.0
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``c`` successes among ``n`` episodes (Chen et al. 2021)."""
    _check(n, c, k)
    if n - c < k:  # every k-subset holds a success
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k of one prompt: the chance that ``k`` episodes drawn from the ``n`` all succeed."""
    _check(n, c, k)
    return comb(c, k) / comb(n, k)


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def normalize_answer(answer: str) -> str:
    """A canonical form for voting: whitespace, ``$``, ``\\$``, a trailing period and thousands
    separators dropped; plain numbers written canonically (``"12.0"`` -> ``"12"``).

    >>> normalize_answer(" $1,000.00. "), normalize_answer("x + 1")
    ('1000', 'x + 1')
    """
    s = answer.strip().replace("\\$", "").strip("$ ").rstrip(".").strip()
    plain = s.replace(",", "")
    if _NUMBER.fullmatch(plain):
        value = float(plain)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return s


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float | None:
    """1.0 if the most common answer among the first ``k`` episodes is a correct one, else 0.0.

    ``answers[i]`` is episode ``i``'s extracted answer (None: it gave none; it casts no vote) and
    ``correct[i]`` whether that episode succeeded. Ties go to the answer seen first. Returns None
    when none of the first ``k`` episodes gave an answer (the caller decides what that scores).
    """
    pairs = [(normalize_answer(a), ok) for a, ok in list(zip(answers, correct))[:k] if a is not None]
    if not pairs:
        return None
    counts = Counter(a for a, _ in pairs)
    best = max(counts.values())
    winner = next(a for a, _ in pairs if counts[a] == best)
    return 1.0 if any(ok for a, ok in pairs if a == winner) else 0.0


def group_metrics(rewards: Sequence[float], ks: Sequence[int], threshold: float,
                  answers: Sequence[str | None] | None = None) -> dict[str, float]:
    """Metrics of one prompt's ``n`` episodes (k larger than n is skipped).

    ``answers`` (one per episode, None where no answer was extracted) turns on ``maj@k``; leave
    it None for environments that extract no answers.
    """
    n = len(rewards)
    if n == 0:
        raise ValueError("group_metrics needs at least one episode")
    successes = [r >= threshold for r in rewards]
    c = sum(successes)
    out = {"avg": sum(rewards) / n, "success": c / n}
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = pass_at_k(n, c, k)
            out[f"pass^{k}"] = pass_hat_k(n, c, k)
            if answers is not None:
                m = maj_at_k(answers, successes, k)
                out[f"maj@{k}"] = 0.0 if m is None else m
    return out
