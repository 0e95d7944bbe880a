"""Retrieval corpora: JSONL files with one ``{"id": ..., "contents": ...}`` object per line.

This is the format of Search-R1's and FlashRAG's corpora (``wiki-18.jsonl``): ``contents`` holds
the title on its first line, in double quotes, then the passage text (``"Paris"\\nParis is the
capital ...``). Rows with ``title`` and ``text`` instead of ``contents`` are accepted and joined
that way. A row without ``id`` gets its position as its id.

A :class:`Corpus` keeps only the byte span of each line in memory and reads documents on demand
with ``os.pread``, so a 21M-passage wiki-18 file costs ~340 MB of spans, not 40 GB of strings.
The spans are computed once (one pass that also validates every row) and cached beside the index.

Example::

    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "c.jsonl")
    >>> with open(path, "w") as f:
    ...     for i, (t, x) in enumerate([("Paris", "Capital of France."), ("Rome", "Capital of Italy.")]):
    ...         _ = f.write(json.dumps({"id": str(i), "contents": f'"{t}"\\n{x}'}) + "\\n")
    >>> corpus = Corpus.open(path)
    >>> len(corpus), corpus[1].title, corpus[1].text
    (2, 'Rome', 'Capital of Italy.')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_FINGERPRINT_BYTES = 1 << 20  # hash the first and last MiB: content-based, instant on 14 GB files


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Document:
    """One passage of a corpus."""

    id: str
    contents: str
    """Title line, then text (``"Title"\\ntext``), as in Search-R1's wiki-18."""

    @property
    def title(self) -> str:
        """The first line of ``contents`` without its surrounding quotes."""
        return self.contents.split("\n", 1)[0].strip().strip('"')

    @property
    def text(self) -> str:
        """Everything after the title line."""
        parts = self.contents.split("\n", 1)
        return parts[1] if len(parts) > 1 else ""

    def to_dict(self) -> dict[str, str]:
        """The document as the retrieval protocol sends it: ``{"id", "contents"}``."""
        return {"id": self.id, "contents": self.contents}


def parse_row(line: str | bytes, position: int, where: str) -> Document:
    """Parse one JSONL line into a :class:`Document` (``where`` names it in errors)."""
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(row, dict):
        raise CorpusError(f"{where}: expected a JSON object like {{\"id\": ..., \"contents\": ...}}; "
                          f"got {type(row).__name__}")
    contents = row.get("contents")
    if contents is None and "text" in row:
        title = row.get("title")
        contents = f'"{title}"\n{row["text"]}' if title else row["text"]
    if not isinstance(contents, str):
        raise CorpusError(f"{where}: expected a string field 'contents' (or 'title' + 'text'); "
                          f"got keys {sorted(row)}")
    doc_id = row.get("id", row.get("_id", position))
    return Document(id=str(doc_id), contents=contents)


class Corpus:
    """A JSONL corpus read lazily; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], spans: np.ndarray):
        self.path = Path(path)
        self.spans = spans  # [N, 2] int64: (byte offset, byte length) of each non-blank line
        self._fd: int | None = None
        self._fd_lock = threading.Lock()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> Corpus:
        """Open ``path``, reusing spans cached in ``cache_dir`` when the file is unchanged."""
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"corpus file {path} does not exist (expected a JSONL file of "
                              '{"id": ..., "contents": ...} rows)')
        if cache_dir is not None:
            cached = _load_cached_spans(path, Path(cache_dir))
            if cached is not None:
                return cls(path, cached)
        spans = scan_spans(path)
        if cache_dir is not None:
            _save_cached_spans(path, Path(cache_dir), spans)
        return cls(path, spans)

    # -- access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.spans.shape[0])

    def __getitem__(self, i: int) -> Document:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document index {i} out of range for a corpus of {n}")
        offset, length = (int(v) for v in self.spans[i])
        if self._fd is None:
            with self._fd_lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
        line = os.pread(self._fd, length, offset)  # positional read: safe from several threads
        return parse_row(line, i % n, f"{self.path} document {i}")

    def __iter__(self) -> Iterator[Document]:
        for batch in self.iter_batches():
            yield from batch

    def iter_batches(self, batch_size: int = 4096) -> Iterator[list[Document]]:
        """Documents in order, ``batch_size`` at a time, read sequentially."""
        batch: list[Document] = []
        position = 0
        with self.path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                batch.append(parse_row(line, position, f"{self.path} document {position}"))
                position += 1
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.path)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, {len(self)} documents)"


def scan_spans(path: Path) -> np.ndarray:
    """One pass over ``path``: validate every row and return the ``[N, 2]`` (offset, length) spans."""
    offsets: list[int] = []
    lengths: list[int] = []
    offset = 0
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                parse_row(line, len(offsets), f"{path}:{lineno}")
                offsets.append(offset)
                lengths.append(len(line))
            offset += len(line)
    if not offsets:
        raise CorpusError(f"corpus file {path} has no rows")
    log.info("scanned %s: %d documents", path, len(offsets))
    return np.stack([np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64)], axis=1)


def fingerprint(path: Path) -> dict[str, Any]:
    """Size plus a hash of the first and last MiB: what cached indexes are checked against."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            h.update(f.read())
    return {"file": path.name, "size": size, "sha256_head_tail": h.hexdigest()}


def _load_cached_spans(path: Path, cache_dir: Path) -> np.ndarray | None:
    meta_path, spans_path = cache_dir / "corpus.json", cache_dir / "spans.npy"
    if not (meta_path.is_file() and spans_path.is_file()):
        return None
    try:
        if json.loads(meta_path.read_text()) != fingerprint(path):
            log.info("corpus %s changed since its spans were cached; rescanning", path)
            return None
        return np.load(spans_path)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cached spans in %s: %s", cache_dir, e)
        return None


def _save_cached_spans(path: Path, cache_dir: Path, spans: np.ndarray) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache_dir / "spans.npy", spans)
        (cache_dir / "corpus.json").write_text(json.dumps(fingerprint(path), indent=1))
    except OSError as e:  # a read-only location: work without the cache
        log.warning("could not cache corpus spans in %s: %s", cache_dir, e)
