"""What the viewer's page reads: runs and evaluations on disk, answered as JSON-ready values.

A *source* is one folder given to ``agentrl view``:

* a training run (``--output-dir``): ``metrics.jsonl``, ``config.json``, ``summary.json`` and, with
  ``--save-debug-rollout-data``, ``rollout_data/rollout_*.jsonl.gz`` and ``rollout_data/eval_*.jsonl.gz``;
* an evaluation (``agentrl eval --output-dir``): ``run.json``, ``summary.json``, ``episodes.jsonl``.

Each dump of a source has a name (``rollout_000003``, ``eval_000000``, or ``episodes`` for an
evaluation's file). The page asks for paths, which :meth:`Sources.get` answers (the server and the
static export share it)::

    api/sources.json                  every source, its dumps and their steps (no file is opened)
    api/{src}/run.json                config, metrics rows, summary
    api/{src}/{dump}/index.json       the dump's header: one short summary per episode (its first line only)
    api/{src}/{dump}/{i}.json         episode i: the whole record and the text of its tokens
    api/{src}/search.json?q=TEXT      episodes whose messages or error contain TEXT, per dump

Nothing is read until asked, and a dump's episodes are read from its file on demand (the last few
files stay in memory), so a big run opens as fast as a small one.

Example::

    >>> sources = Sources(["runs/quickstart"])                               # doctest: +SKIP
    >>> [r["step"] for r in sources.get("api/sources.json")["sources"][0]["rollouts"]][:3]  # doctest: +SKIP
    [1, 2, 3]
    >>> sources.get("api/0/rollout_000000/5.json")["record"]["loss_mask"][:4]  # doctest: +SKIP
    [1, 1, 1, 1]
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from agentrl.obs.dump import DUMP_DIR, FORMAT, episode_summary

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(rollout|eval)_(\d+)$")
_ROUTE = re.compile(r"^api/(?:(sources)\.json|(\d+)/(run|search)\.json|(\d+)/([\w.-]+)/(index|\d+)\.json)$")
MAX_SEARCH_MATCHES = 5000


class ViewError(ValueError):
    """A folder with nothing to view, or a path the viewer does not serve."""


@dataclass
class Source:
    id: int
    path: Path
    kind: str
    """run | eval."""
    name: str
    dumps: dict[str, Path] = field(default_factory=dict)
    """dump name -> file."""

    def dump(self, name: str) -> Path:
        if name not in self.dumps:
            raise ViewError(f"{self.path} has no dump {name!r}; it has {', '.join(self.dumps) or 'none'}")
        return self.dumps[name]


class Sources:
    """The folders given to ``agentrl view``, answering the page's paths (see the module doc)."""

    def __init__(self, dirs: Sequence[str | Path], *, cache_files: int = 4) -> None:
        self.sources = [_source(i, Path(d).expanduser()) for i, d in enumerate(dirs)]
        names = [s.name for s in self.sources]
        for s in self.sources:  # two folders with one name (runs/a/out, runs/b/out): show their parents too
            if names.count(s.name) > 1:
                s.name = f"{s.path.parent.name}/{s.path.name}"
        self._lock = threading.Lock()
        self._lines: OrderedDict[tuple, tuple[list[str], dict[int, str]]] = OrderedDict()
        self._headers: dict[tuple, dict[str, Any]] = {}
        self._cache_files = cache_files
        self._tokenizers: dict[int, Any] = {}

    # -- routing ---------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        """The JSON value of an ``api/...`` path (with an optional ``?query``)."""
        path, _, query = path.lstrip("/").partition("?")
        m = _ROUTE.match(path)
        if not m:
            raise ViewError(f"no such path: {path}")
        if m.group(1):
            return self.listing()
        if m.group(2) is not None:
            src = self.source(int(m.group(2)))
            if m.group(3) == "run":
                return self.run(src)
            return self.search(src, parse_qs(query).get("q", [""])[0])
        src = self.source(int(m.group(4)))
        return self.index(src, m.group(5)) if m.group(6) == "index" else self.episode(src, m.group(5), int(m.group(6)))

    def source(self, i: int) -> Source:
        if not 0 <= i < len(self.sources):
            raise ViewError(f"no source {i}; there are {len(self.sources)}")
        return self.sources[i]

    # -- answers ---------------------------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        out = []
        for s in self.sources:
            rollouts, evals = [], []
            for name in s.dumps:
                m = _NAME.match(name)
                if m and m.group(1) == "rollout":
                    rollouts.append({"name": name, "rollout_id": int(m.group(2)), "step": int(m.group(2)) + 1})
                else:
                    evals.append({"name": name, "step": int(m.group(2)) if m else None})
            out.append({"id": s.id, "name": s.name, "path": str(s.path), "kind": s.kind,
                        "rollouts": rollouts, "evals": evals})
        return {"sources": out}

    def run(self, src: Source) -> dict[str, Any]:
        """Config, metrics rows (numbers only) and summary of a source."""
        metrics = []
        for line in _read_lines(src.path / "metrics.jsonl"):  # a line cut short by a kill, or garbled: skipped
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                metrics.append({k: v for k, v in row.items() if _number(v)})
        return {"name": src.name, "kind": src.kind, "config": _settings(src), "metrics": metrics,
                "summary": _read_json(src.path / "summary.json")}

    def index(self, src: Source, dump: str) -> dict[str, Any]:
        """The header of a dump: its step and one short summary per episode (``i`` is its position)."""
        path = src.dump(dump)
        key = _key(path)
        with self._lock:
            head = self._headers.get(key)
        if head is None:
            head = self._header(path)
            with self._lock:
                self._headers[key] = head
        out = {k: v for k, v in head.items() if k != "index"}
        out["name"] = dump
        index = head.get("index")
        out["index"] = [{"i": i, **e} for i, e in enumerate(index if isinstance(index, list) else [])
                        if isinstance(e, dict)]
        return out

    def episode(self, src: Source, dump: str, i: int) -> dict[str, Any]:
        """Episode ``i`` of a dump: its whole record and the text of its token ids."""
        lines, texts = self._file(src.dump(dump))
        if not 0 <= i < len(lines):
            raise ViewError(f"{dump} has {len(lines)} episodes; no episode {i}")
        try:
            record = json.loads(lines[i])
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ViewError(f"{dump}: episode {i} is not a JSON object (a line cut short by a kill?)")
        ids = sorted({t for key in ("prompt_ids", "response_ids") for t in _ids(record.get(key))})
        missing = [t for t in ids if t not in texts]
        if missing:
            texts = {**texts, **self._decode(src, missing)}
        return {"source": src.id, "dump": dump, "i": i, "record": record,
                "token_text": {str(t): texts[t] for t in ids if t in texts}}

    def search(self, src: Source, q: str) -> dict[str, Any]:
        """Episodes of every dump of ``src`` whose messages or error contain ``q`` (case-insensitive)."""
        needle = q.strip().lower()
        matches: dict[str, list[int]] = {}
        count = 0
        if needle:
            for name, path in src.dumps.items():
                try:
                    lines, _ = self._file(path)
                except ViewError as e:  # one unreadable dump: the others are still searched
                    log.warning("viewer search: %s", e)
                    continue
                for i, line in enumerate(lines):
                    if needle not in line.lower():  # cheap test on the raw line first
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and needle in _searchable(record).lower():
                        matches.setdefault(name, []).append(i)
                        count += 1
                        if count >= MAX_SEARCH_MATCHES:
                            return {"q": q, "matches": matches, "truncated": True}
        return {"q": q, "matches": matches, "truncated": False}

    # -- files -----------------------------------------------------------------------------------
    def _header(self, path: Path) -> dict[str, Any]:
        """A dump's header line, or for an evaluation's ``episodes.jsonl`` (which has none) one built from its lines;
        an unreadable line gets no index entry, and the others keep their positions."""
        try:
            with _open_text(path) as f:
                first = f.readline()
            head = json.loads(first)
        except OSError as e:  # not gzip, a folder, unreadable
            raise ViewError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
        except (EOFError, ValueError):  # cut short within its first line, or no header: an index from the lines
            head = None
        if isinstance(head, dict) and head.get("format") == FORMAT:
            return head
        index: list[dict[str, Any] | None] = []
        for line in self._file(path)[0]:
            try:
                record = json.loads(line)
                index.append(episode_summary(record) if isinstance(record, dict) else None)
            except (ValueError, TypeError, AttributeError, KeyError):  # cut short, or fields of the wrong type
                index.append(None)
        readable = sum(e is not None for e in index)
        return {"kind": "eval", "episodes_total": readable, "episodes_dumped": readable, "index": index}

    def _file(self, path: Path) -> tuple[list[str], dict[int, str]]:
        """A dump's episode lines (unparsed) and token texts, from a small cache of recent files."""
        key = _key(path)
        with self._lock:
            if key in self._lines:
                self._lines.move_to_end(key)
                return self._lines[key]
        lines, texts = [], {}
        try:
            with _open_text(path) as f:
                for n, line in enumerate(f):
                    if not line.strip():
                        continue
                    if n < 2 and line.startswith('{"format": "' + FORMAT + '"'):
                        continue
                    if n < 2 and line.startswith('{"token_text":'):
                        texts = _token_texts(line)
                        continue
                    lines.append(line)
        except EOFError:  # a gzip cut short by a kill: the episodes before the cut
            log.warning("%s is cut short; showing the %d episodes before the cut", path, len(lines))
        except OSError as e:  # not gzip, a folder, unreadable
            raise ViewError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
        with self._lock:
            self._lines[key] = (lines, texts)
            while len(self._lines) > self._cache_files:
                self._lines.popitem(last=False)
        return lines, texts

    def _decode(self, src: Source, ids: list[int]) -> dict[int, str]:
        """Token texts from the source's tokenizer (an evaluation's ``episodes.jsonl`` holds ids only);
        empty when it cannot be loaded here (the page then shows the ids)."""
        if src.id not in self._tokenizers:
            self._tokenizers[src.id] = _load_tokenizer(src)
        tokenizer = self._tokenizers[src.id]
        if tokenizer is None:
            return {}
        from agentrl.obs.dumper import decode_each

        return dict(zip(ids, decode_each(tokenizer, ids)))


def _source(i: int, path: Path) -> Source:
    if path.name == DUMP_DIR:
        path = path.parent
    if not path.is_dir():
        raise ViewError(f"{path}: no such folder")
    dumps: dict[str, Path] = {}
    folder = path / DUMP_DIR
    for kind in ("rollout", "eval"):
        for f in sorted(folder.glob(f"{kind}_*.jsonl.gz")):
            if f.is_file():
                dumps[f.name[:-len(".jsonl.gz")]] = f
    if (path / "episodes.jsonl").is_file():
        return Source(i, path, "eval", path.name, {"episodes": path / "episodes.jsonl", **dumps})
    if dumps or (path / "metrics.jsonl").exists():
        if not dumps:
            log.warning("%s has no rollout dumps (train with --save-debug-rollout-data): only its curves are shown", path)
        return Source(i, path, "run", path.name, dumps)
    raise ViewError(f"{path} holds neither a training run (metrics.jsonl, {DUMP_DIR}/) nor an evaluation "
                    "(episodes.jsonl): give the --output-dir of a training run or of an evaluation")


def _settings(src: Source) -> dict[str, Any] | None:
    """A run's ``config.json``, or an evaluation's settings in ``run.json`` (None: neither is a readable object)."""
    config = _read_json(src.path / "config.json")
    if isinstance(config, dict):
        return config
    run = _read_json(src.path / "run.json")
    settings = run.get("settings") if isinstance(run, dict) else None
    return settings if isinstance(settings, dict) else None


def _load_tokenizer(src: Source) -> Any:
    settings = _settings(src) or {}
    name = settings.get("tokenizer") or settings.get("model-path") or settings.get("model_path")
    if not isinstance(name, str):
        return None
    if not name:
        return None
    try:
        from agentrl.models import load_tokenizer

        return load_tokenizer(name)
    except Exception as e:  # offline, or a model folder that moved: ids instead of texts
        log.warning("token texts of %s: cannot load the tokenizer %s (%s); showing token ids", src.path, name, e)
        return None


def _searchable(record: dict[str, Any]) -> str:
    parts = [str(record.get("error") or "")]
    messages = record.get("messages")
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
        if m.get("tool_calls"):
            parts.append(json.dumps(m["tool_calls"], ensure_ascii=False))
    return "\n".join(parts)


def _key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError as e:  # deleted since the viewer started
        raise ViewError(f"{path}: cannot be read ({e.strerror or e})") from None
    return (str(path), st.st_mtime_ns, st.st_size)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _open_text(path: Path) -> Any:
    """A dump (gzip) or an ``episodes.jsonl`` opened for reading text; bytes that are not UTF-8 are replaced, so a
    garbled line is one unreadable episode, not an unreadable file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _ids(value: Any) -> list[int]:
    """The token ids in a record's field (nothing for a field that is not a list of integers)."""
    if not isinstance(value, list):
        return []
    return [t for t in value if isinstance(t, int) and not isinstance(t, bool)]


def _token_texts(line: str) -> dict[int, str]:
    """A dump's ``{"token_text": {id: text}}`` line (empty when it is garbled: the page then shows ids)."""
    try:
        texts = json.loads(line)["token_text"]
        return {int(k): str(v) for k, v in texts.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def _read_lines(path: Path) -> list[str]:
    """The lines of a text file; bytes that are not UTF-8 are replaced, a missing or unreadable file has none."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # missing, a folder, not UTF-8, not JSON
        return None


def to_json(value: Any) -> str:
    """JSON the browser can parse: NaN and infinities (which Python writes) become null."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


