"""Open-domain QA scores: normalised exact match and token F1.

Normalisation is the SQuAD evaluation script's (Rajpurkar et al., "SQuAD: 100,000+ Questions for
Machine Comprehension of Text", EMNLP 2016), which Search-R1 (Jin et al., 2025) and FlashRAG use for
NQ/HotpotQA: lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace.

* exact match: 1 when the normalised prediction equals a normalised gold answer, else 0;
* F1: the harmonic mean of token precision and recall between the normalised prediction and a
  gold answer, best over the gold answers. As in HotpotQA's script, when either side is
  ``yes``/``no``/``noanswer`` the two must match exactly (F1 is then 1 or 0).

Example::

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    >>> exact_match("the Nile", ["Nile River", "nile"])
    1.0
    >>> round(f1_score("Nile river in Africa", ["the Nile River"]), 3)   # P = 2/4, R = 2/2
    0.667
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)
_EXACT_ONLY = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, remove articles, collapse whitespace (SQuAD's order)."""
    text = text.lower().translate(_DROP_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golden_answers: str | Sequence[str]) -> list[str]:
    return [golden_answers] if isinstance(golden_answers, str) else [str(g) for g in golden_answers]


def exact_match(prediction: str, golden_answers: str | Sequence[str]) -> float:
    """1.0 when ``prediction`` equals any gold answer after :func:`normalize_answer`, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golden_answers)))


def f1_score(prediction: str, golden_answers: str | Sequence[str]) -> float:
    """Best token F1 of ``prediction`` against the gold answers, in [0, 1]."""
    pred = normalize_answer(prediction)
    return max((_f1(pred, normalize_answer(g)) for g in _golds(golden_answers)), default=0.0)


def _f1(pred: str, gold: str) -> float:
    if (pred in _EXACT_ONLY or gold in _EXACT_ONLY) and pred != gold:
        return 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    # the overlap of the two bags, counted over the gold's few distinct tokens (list.count runs in C),
    # so a runaway prediction costs a few linear passes
    common = sum(min(pred_tokens.count(t), n) for t, n in Counter(gold_tokens).items())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)
