"""Retrievers over a :class:`~tools.retriever.corpus.Corpus`: one interface, two methods.

* ``bm25``: lexical BM25 with bm25s (Lucene scoring, k1=0.9, b=0.4: Pyserini's defaults, which
  Search-R1's BM25 server uses), English stopwords, no stemming.
* ``dense``: a sentence-transformers bi-encoder (the offline ``minilm`` alias by default; ``e5``
  for e5-base-v2 with its ``query: ``/``passage: `` prefixes) and exact inner-product search over
  normalised embeddings (what a FAISS ``Flat`` index does), on the CPU or a GPU.

:func:`load_retriever` builds the index once and caches it in ``index_dir`` (default: beside the
corpus, ``<corpus file>.index/``), keyed by a fingerprint of the corpus and the index parameters,
so a restart loads it in seconds; a changed corpus or parameter rebuilds it.

Example::

    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "c.jsonl")
    >>> rows = [("Paris", "Paris is the capital of France."), ("Nile", "The Nile is a river in Africa.")]
    >>> with open(path, "w") as f:
    ...     for i, (t, x) in enumerate(rows):
    ...         _ = f.write(json.dumps({"id": str(i), "contents": f'"{t}"\\n{x}'}) + "\\n")
    >>> retriever = load_retriever(path, "bm25")
    >>> [hit.title for hit in retriever.search(["longest river in africa"], topk=1)[0]]
    ['Nile']
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from tools.retriever.corpus import Corpus, Document

log = logging.getLogger(__name__)

METHODS = ("bm25", "dense")
INDEX_FORMAT = 1


@dataclass(frozen=True)
class Hit:
    """One retrieved document with its score (higher is better) and its corpus position."""

    id: str
    contents: str
    score: float
    index: int

    @property
    def title(self) -> str:
        return Document(self.id, self.contents).title

    @property
    def text(self) -> str:
        return Document(self.id, self.contents).text

    def document(self) -> dict[str, str]:
        """``{"id", "contents"}``, as the retrieval protocol sends it."""
        return {"id": self.id, "contents": self.contents}


class SupportsSearch(Protocol):
    """What an environment needs from an in-process retriever."""

    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]: ...


class Retriever(abc.ABC):
    """Base class: validation, locking and hit assembly; subclasses implement :meth:`_search`."""

    method: ClassVar[str]

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self._lock = threading.Lock()  # one search at a time: index internals are not thread-safe

    def search(self, queries: Sequence[str], topk: int = 3) -> list[list[Hit]]:
        """The ``topk`` best documents for each query, best first (fewer when the corpus is smaller,
        or, for BM25, when fewer documents share a term with the query)."""
        if isinstance(queries, str):
            raise TypeError(f"queries must be a list of strings; got one string {queries[:60]!r} "
                            "(did you mean [query]?)")
        queries = list(queries)
        bad = [q for q in queries if not isinstance(q, str)]
        if bad:
            raise TypeError(f"queries must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1; got {topk!r}")
        if not queries:
            return []
        k = min(int(topk), len(self.corpus))
        with self._lock:
            idx, scores = self._search(queries, k)  # [Q, k] each; idx -1 = no document
        return [[self._hit(int(i), float(s)) for i, s in zip(row_i, row_s) if i >= 0]
                for row_i, row_s in zip(idx, scores)]

    def _hit(self, i: int, score: float) -> Hit:
        doc = self.corpus[i]
        return Hit(id=doc.id, contents=doc.contents, score=score, index=i)

    @abc.abstractmethod
    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(indices [Q, k] int, scores [Q, k] float)``, best first; index -1 pads."""
        raise NotImplementedError

    # -- building and caching (each method implements these) ------------------------------
    @classmethod
    @abc.abstractmethod
    def index_params(cls, **options: Any) -> dict[str, Any]:
        """The parameters that change the index (a different value means a different cache)."""
        raise NotImplementedError

    @classmethod
    @abc.abstractmethod
    def build(cls, corpus: Corpus, **options: Any) -> Retriever:
        raise NotImplementedError

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: Path, corpus: Corpus, **options: Any) -> Retriever:
        raise NotImplementedError

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A JSON summary for logs and the server's ``/health``."""
        return {"method": self.method, "num_docs": len(self.corpus), "corpus": str(self.corpus.path)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def retriever_class(method: str) -> type[Retriever]:
    """The class for ``method`` (``bm25`` or ``dense``), imported on use."""
    if method == "bm25":
        from tools.retriever.bm25 import BM25Retriever

        return BM25Retriever
    if method == "dense":
        from tools.retriever.dense import DenseRetriever

        return DenseRetriever
    import difflib

    close = difflib.get_close_matches(str(method), METHODS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown retrieval method {method!r}: expected one of {', '.join(METHODS)}{hint}")


def default_index_dir(corpus_path: str | os.PathLike[str]) -> Path:
    """``data/wiki-18.jsonl`` -> ``data/wiki-18.jsonl.index``."""
    p = Path(corpus_path)
    return p.with_name(p.name + ".index")


@dataclass(frozen=True)
class IndexCache:
    """Where an index of ``corpus`` lives on disk and the ``meta.json`` that must match to reuse it."""

    corpus: Corpus
    directory: Path
    meta: dict[str, Any]

    def is_fresh(self) -> bool:
        """Does ``directory`` hold an index of this exact corpus and these parameters?"""
        try:
            return json.loads((self.directory / "meta.json").read_text()) == self.meta
        except (OSError, ValueError):
            return False

    def write(self, write_files: Callable[[Path], None]) -> bool:
        """Call ``write_files(folder)`` on a temporary sibling folder, add ``meta.json``, then
        rename it into place: a crash never leaves half an index. False when it cannot be written."""
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.directory.parent))
        except OSError as e:
            log.warning("cannot write the index cache under %s (%s); using the index from memory only",
                        self.directory.parent, e)
            return False
        try:
            write_files(tmp)
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=1))
            if self.directory.exists():
                shutil.rmtree(self.directory)
            os.replace(tmp, self.directory)
            log.info("saved the %s index to %s", self.meta["method"], self.directory)
            return True
        except OSError as e:
            log.warning("could not save the index to %s: %s", self.directory, e)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def index_cache(
    corpus: str | os.PathLike[str] | Corpus,
    method: str = "bm25",
    *,
    index_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> IndexCache:
    """Open ``corpus`` (caching its spans) and say where its ``method`` index is cached."""
    params = retriever_class(method).index_params(**options)
    corpus_path = corpus.path if isinstance(corpus, Corpus) else Path(corpus)
    root = Path(index_dir) if index_dir is not None else default_index_dir(corpus_path)
    corpus_obj = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus_path, cache_dir=root)
    tag = params.get("model_tag")
    directory = root / (f"{method}-{tag}" if tag else method)
    meta = {"format": INDEX_FORMAT, "method": method, "params": params, "corpus": corpus_obj.fingerprint()}
    return IndexCache(corpus_obj, directory, meta)


def load_retriever(
    corpus: str | os.PathLike[str] | Corpus,
    method: str = "bm25",
    *,
    index_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    rebuild: bool = False,
    **options: Any,
) -> Retriever:
    """Open ``corpus`` and load its ``method`` index from the cache, building it when missing or stale.

    ``options`` go to the method: ``model``, ``device``, ``batch_size`` for ``dense`` (see
    :class:`~tools.retriever.dense.DenseRetriever`); ``k1``, ``b`` for ``bm25``. ``cache=False``
    builds in memory and writes nothing; ``rebuild=True`` ignores an existing cache.
    """
    cls = retriever_class(method)
    if not cache:
        corpus_obj = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)
        return cls.build(corpus_obj, **options)
    where = index_cache(corpus, method, index_dir=index_dir, **options)
    if not rebuild and where.is_fresh():
        log.info("loading the cached %s index from %s", method, where.directory)
        return cls.load(where.directory, where.corpus, **options)
    if (where.directory / "meta.json").is_file() and not rebuild:
        log.info("the cached %s index in %s is stale (corpus or parameters changed); rebuilding", method, where.directory)
    log.info("building the %s index over %d documents of %s", method, len(where.corpus), where.corpus.path)
    retriever = cls.build(where.corpus, **options)
    where.write(retriever.save)
    return retriever
