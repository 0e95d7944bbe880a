"""``agentrl retriever``: serve a corpus over HTTP with Search-R1's retrieval protocol.

The shapes are those of Search-R1's ``search_r1/search/retrieval_server.py``, so its clients, our
:class:`envs.search.SearchEnv`, and any tool written for Search-R1 work unchanged:

``POST /retrieve`` ``{"queries": ["q1", ...], "topk": 3, "return_scores": true}`` returns
``{"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}`` (one list per
query, best first); with ``"return_scores": false`` (the default) each inner list holds the
documents themselves: ``{"result": [[{"id", "contents"}, ...], ...]}``. A missing or 0 ``topk``
means the server's ``--topk``. A malformed request gets a 400 whose ``message`` says what was
expected; the server keeps serving. ``GET /health`` describes the index.

One client cannot starve the others: a request carries at most ``max_queries`` queries of at
most ``max_query_chars`` characters each (400 beyond), its body at most ``max_request_bytes``
(413 beyond, refused before it is read), and a big request is searched ``max_batch`` queries at
a time, taking turns with the other requests (see :mod:`tools.retriever.batching`).

Example (in-process)::

    >>> import httpx
    >>> from agentrl.engine.server import BackgroundServer
    >>> from tools.retriever.index import load_retriever
    >>> app = create_app(load_retriever("envs/data/search_mini.jsonl", "bm25", cache=False))
    >>> with BackgroundServer(app) as server:
    ...     r = httpx.post(server.url + "/retrieve", json={"queries": ["capital of Canada"], "topk": 1})
    >>> r.json()["result"][0][0]["contents"].split("\\n")[0]
    '"Ottawa"'

From the shell::

    agentrl retriever --corpus envs/data/search_mini.jsonl --method bm25 --port 8000
    curl -s localhost:8000/retrieve -d '{"queries": ["capital of Canada"], "topk": 2, "return_scores": true}'
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from agentrl.utils import safe_json
from agentrl.utils.flags import FlagTable
from tools.retriever.batching import QueryBatcher
from tools.retriever.corpus import CorpusError
from tools.retriever.index import Retriever, load_retriever

log = logging.getLogger(__name__)

EXPECTED = '{"queries": ["..."], "topk": 3, "return_scores": true}'
MAX_QUERIES = 10_000
"""Default most queries in one request."""
MAX_QUERY_CHARS = 10_000
"""Default longest query, in characters."""
MAX_REQUEST_BYTES = 16 * 2**20
"""Default largest request body, in bytes."""


class RetrieveRequest(BaseModel):
    """The body of ``POST /retrieve`` (unknown fields are ignored, as Search-R1's server does; the known
    ones must have their JSON types: ``"yes"`` is not a boolean, ``true`` or ``"3"`` not a ``topk``)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


def create_app(retriever: Retriever, *, default_topk: int = 3, max_topk: int = 1000, max_batch: int = 512,
               max_queries: int = MAX_QUERIES, max_query_chars: int = MAX_QUERY_CHARS,
               max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    """A FastAPI app serving ``retriever`` (see the module docstring for the protocol).

    Concurrent requests are searched together, up to ``max_batch`` queries per search, and a
    request with more queries than that takes turns with the others (see
    :mod:`tools.retriever.batching`). ``max_queries``, ``max_query_chars`` and
    ``max_request_bytes`` bound one request.
    """
    app = FastAPI(title="agentrl retriever", description="Search-R1 retrieval protocol")
    batcher = QueryBatcher(retriever, max_batch=max_batch)

    def bad_request(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": "bad request", "message": message,
                                                         "expected": EXPECTED})

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Any:
        try:
            body, _ = await safe_json.read_request_json(request, max_bytes=max_request_bytes)
        except safe_json.BodyTooLargeError as e:
            return bad_request(str(e), status=413)
        except ValueError as e:
            return bad_request(f"the body is not JSON: {e}")
        try:
            req = RetrieveRequest.model_validate(body)
        except ValidationError as e:
            return bad_request(_problems(e))
        topk = req.topk or default_topk
        if not 1 <= topk <= max_topk:
            return bad_request(f"topk must be between 1 and {max_topk} (0 or absent: the default {default_topk}); "
                               f"got {req.topk}")
        if len(req.queries) > max_queries:
            return bad_request(f"{len(req.queries):,} queries in one request; at most {max_queries:,} (split them)")
        long = next((i for i, q in enumerate(req.queries) if len(q) > max_query_chars), None)
        if long is not None:
            return bad_request(f"queries.{long} has {len(req.queries[long]):,} characters; at most {max_query_chars:,}")
        start = time.perf_counter()
        try:
            hits = await batcher.search(req.queries, topk)
        except Exception as e:  # the index failed: say so, keep serving
            log.exception("retrieval failed")
            return JSONResponse(status_code=500, content={"error": "retrieval failed", "message": f"{type(e).__name__}: {e}"})
        log.debug("retrieved %d queries in %.3f s", len(req.queries), time.perf_counter() - start)
        if req.return_scores:
            return {"result": [[{"document": h.document(), "score": h.score} for h in row] for row in hits]}
        return {"result": [[h.document() for h in row] for row in hits]}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "default_topk": default_topk, "searches": batcher.searches, **retriever.describe()}

    return app


def _problems(error: ValidationError) -> str:
    """Pydantic's complaints as ``field: message; ...``."""
    problems = []
    for err in error.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        problems.append(f"{where}: {err.get('msg')}")
    return "; ".join(problems)


@dataclass
class RetrieverArgs:
    """Settings of ``agentrl retriever``; each field's doc is its ``--help`` text."""

    FLAGS: ClassVar[dict[str, Any]] = {name: name[2:].replace("-", "_") for name in (
        "--corpus", "--method", "--model", "--index-dir", "--rebuild", "--device", "--batch-size", "--faiss-index",
        "--host", "--port", "--topk", "--max-batch", "--max-queries", "--build-only", "--log-level")}

    corpus: str | None = None
    """JSONL corpus file, one {"id", "contents"} object a line (required)."""
    method: Literal["bm25", "dense"] = "bm25"
    """bm25: lexical (bm25s); dense: sentence-transformers embeddings, exact inner product."""
    model: str = "minilm"
    """dense only: embedding model, an alias (minilm: offline all-MiniLM-L6-v2; e5: intfloat/e5-base-v2 with
    query:/passage: prefixes), a folder or a hub id."""
    index_dir: str | None = None
    """Where the index is cached (default: <corpus>.index/ beside the corpus)."""
    rebuild: bool = False
    """Rebuild the index even when a cached one matches."""
    device: str | None = None
    """dense only: the encoder's device, cpu, cuda, cuda:1... (default: cuda when available)."""
    batch_size: int = 64
    """dense only: documents per encoding batch."""
    faiss_index: str | None = None
    """dense only: take the document vectors from this FAISS index of the corpus (e.g. Search-R1's e5_Flat.index for
    wiki-18, with --model e5) instead of encoding the corpus; needs faiss-cpu."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 for all interfaces)."""
    port: int = 8000
    """Port to listen on (Search-R1's default is 8000)."""
    topk: int = 3
    """Documents per query when a request gives no topk."""
    max_batch: int = 512
    """Most queries searched together when requests arrive at once (concurrent requests are batched)."""
    max_queries: int = MAX_QUERIES
    """Most queries in one request (more: 400); a request above --max-batch takes turns with others."""
    build_only: bool = False
    """Build (or check) the cached index, then exit."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Logging level."""

    def problems(self) -> list[str]:
        out = [] if self.corpus else ["--corpus is required (a JSONL file of {\"id\", \"contents\"} rows)"]
        out += [f"{flag} must be >= 1; got {value}" for flag, value in (
            ("--topk", self.topk), ("--max-batch", self.max_batch), ("--max-queries", self.max_queries),
            ("--batch-size", self.batch_size)) if value < 1]
        if self.faiss_index and self.method != "dense":
            out.append("--faiss-index needs --method dense")
        if not 0 <= self.port <= 65535:
            out.append(f"--port {self.port} is not a TCP port (0-65535)")
        return out


TABLE = FlagTable(RetrieverArgs)
DESCRIPTION = ("Serve a JSONL corpus of {\"id\", \"contents\"} rows over HTTP with Search-R1's retrieval protocol: "
               'POST /retrieve {"queries": [...], "topk": 3, "return_scores": true}. The index is built on first use '
               "and cached on disk, so restarts are fast.")


def build_parser():
    return TABLE.parser("agentrl retriever", DESCRIPTION, config_file=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``agentrl retriever``; returns the exit code."""
    args, _, problems = TABLE.parse(list(sys.argv[1:] if argv is None else argv), prog="agentrl retriever",
                                    description=DESCRIPTION)
    problems += args.problems()
    if problems:
        print("agentrl retriever: invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {}
    if args.method == "dense":
        options = {"model": args.model, "device": args.device, "batch_size": args.batch_size}
    start = time.perf_counter()
    try:
        if args.faiss_index:
            from tools.retriever.dense import import_faiss_index
            from tools.retriever.index import index_cache

            if args.rebuild or not index_cache(args.corpus, "dense", index_dir=args.index_dir, model=args.model).is_fresh():
                import_faiss_index(args.faiss_index, args.corpus, model=args.model, index_dir=args.index_dir)
        retriever = load_retriever(Path(args.corpus), args.method, index_dir=args.index_dir,
                                   rebuild=args.rebuild and not args.faiss_index, **options)
    except (CorpusError, ImportError, ValueError, OSError) as e:
        print(f"agentrl retriever: {e}", file=sys.stderr)
        return 2
    log.info("%s index over %d documents ready in %.1f s", args.method, len(retriever.corpus), time.perf_counter() - start)
    if args.build_only:
        return 0
    import uvicorn

    app = create_app(retriever, default_topk=args.topk, max_batch=args.max_batch, max_queries=args.max_queries)
    log.info("serving POST http://%s:%d/retrieve", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
