"""BM25 retrieval with bm25s.

Scoring is Lucene's BM25 (Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and
Beyond", 2009) with Pyserini's defaults k1=0.9, b=0.4, the settings behind Search-R1's BM25
server. Text is lower-cased, split on word characters (tokens of two or more), English stopwords
removed; there is no stemming, so "rivers" does not match "river" (Pyserini stems with Porter:
expect somewhat lower recall than Search-R1's BM25 numbers).

Documents that share no term with the query are not returned (as with Lucene), so a query can get
fewer than ``topk`` hits, or none.

Example::

    >>> from tools.retriever.index import load_retriever
    >>> r = load_retriever("envs/data/search_mini.jsonl", "bm25", cache=False)
    >>> [hit.title for hit in r.search(["Which planet is called the Red Planet?"], topk=2)[0]]
    ['Mars', 'Mercury (planet)']
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tools.retriever.corpus import Corpus
from agentrl.obs.progress import progress
from agentrl.utils.extras import require
from tools.retriever.index import Retriever

log = logging.getLogger(__name__)

STOPWORDS = "en"


def _bm25s() -> Any:
    bm25s = require("bm25s", extra="search", what="BM25 retrieval")
    # bm25s pins its logger to DEBUG on import; let it follow the application's logging level
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


class BM25Retriever(Retriever):
    """BM25 over a corpus; build it through :func:`tools.retriever.index.load_retriever`."""

    method = "bm25"

    def __init__(self, corpus: Corpus, model: Any, *, k1: float, b: float):
        super().__init__(corpus)
        self.model = model
        self.k1, self.b = k1, b

    @classmethod
    def index_params(cls, *, k1: float = 0.9, b: float = 0.4, **_: Any) -> dict[str, Any]:
        return {"k1": float(k1), "b": float(b), "stopwords": STOPWORDS, "bm25s": _bm25s().__version__}

    @classmethod
    def build(cls, corpus: Corpus, *, k1: float = 0.9, b: float = 0.4, **_: Any) -> BM25Retriever:
        bm25s = _bm25s()
        with progress(3, f"BM25 index of {corpus.path.name}", unit="step") as bar:
            bar.set_postfix_str("reading")
            texts = [doc.contents for batch in corpus.iter_batches() for doc in batch]
            bar.update()
            bar.set_postfix_str(f"tokenizing {len(texts)} documents")
            tokens = bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False)
            bar.update()
            bar.set_postfix_str("indexing")
            model = bm25s.BM25(k1=k1, b=b, method="lucene")
            model.index(tokens, show_progress=False)
            bar.update()
        return cls(corpus, model, k1=k1, b=b)

    @classmethod
    def load(cls, directory: Path, corpus: Corpus, **_: Any) -> BM25Retriever:
        params = json.loads((directory / "meta.json").read_text())["params"]
        model = _bm25s().BM25.load(str(directory / "bm25s"), mmap=False, show_progress=False)
        return cls(corpus, model, k1=params["k1"], b=params["b"])

    def save(self, directory: Path) -> None:
        self.model.save(str(directory / "bm25s"), show_progress=False)

    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        bm25s = _bm25s()
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        vocab = self.model.vocab_dict
        tokenized = bm25s.tokenize(queries, stopwords=STOPWORDS, return_ids=False, show_progress=False)
        # only terms the index knows (bm25s would otherwise grow its vocabulary on each search)
        known = [[t for t in q if t in vocab] for q in tokenized]
        rows = [i for i, q in enumerate(known) if q]
        if rows:
            found, found_scores = self.model.retrieve([known[i] for i in rows], k=k, show_progress=False)
            for r, ids, ss in zip(rows, found, found_scores):
                keep = ss > 0  # no shared term: not a hit
                idx[r, : keep.sum()] = ids[keep]
                scores[r, : keep.sum()] = ss[keep]
        return idx, scores

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k1": self.k1, "b": self.b}
