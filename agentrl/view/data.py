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
                                      (&dump=NAME: that dump only; &dump=*: every rollout)

Nothing is read until asked, and a dump's episodes are read from its file on demand (recently read
files stay in memory, up to ``cache_bytes``), so a big run opens as fast as a small one. A search
stops after ``search_seconds`` and says so. Only regular files inside the folders given are read: a
link that points outside its folder, a pipe or a device is left out with a warning.

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
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from agentrl.obs.dump import DUMP_DIR, FORMAT, episode_summary

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(rollout|eval)_(\d+)$")
_ROUTE = re.compile(r"^api/(?:(sources)\.json|([0-9]+)/(run|search)\.json|([0-9]+)/([\w.-]+)/(index|[0-9]+)\.json)$",
                    re.ASCII)
_DUMP_NAME = re.compile(r"[\w.-]+", re.ASCII)
MAX_SEARCH_MATCHES = 5000
MAX_INDEX_DIGITS = 12
"""A source or episode number longer than this is no such thing (not a 4300-digit integer to convert)."""


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

    def __init__(self, dirs: Sequence[str | Path], *, cache_bytes: int = 1 << 30,
                 search_seconds: float = 20.0) -> None:
        self.sources = [_source(i, Path(d).expanduser()) for i, d in enumerate(dirs)]
        names = [s.name for s in self.sources]
        for s in self.sources:  # two folders with one name (runs/a/out, runs/b/out): show their parents too
            if names.count(s.name) > 1:
                s.name = f"{s.path.parent.name}/{s.path.name}"
        self._lock = threading.Lock()
        self._lines: OrderedDict[tuple, tuple[list[str], dict[int, str]]] = OrderedDict()
        self._headers: dict[tuple, dict[str, Any]] = {}
        self._cache_bytes = cache_bytes
        self._search_seconds = search_seconds
        self._tokenizers: dict[int, Any] = {}

    # -- routing ---------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        """The JSON value of an ``api/...`` path (with an optional ``?query``)."""
        path, _, query = path.lstrip("/").partition("?")
        m = _ROUTE.match(path)
        if not m:
            raise ViewError(f"no such path: {path[:200]}")
        if m.group(1):
            return self.listing()
        if m.group(2) is not None:
            src = self.source(_number_in(m.group(2), path))
            if m.group(3) == "run":
                return self.run(src)
            params = parse_qs(query)
            return self.search(src, params.get("q", [""])[0], params.get("dump", [None])[0])
        src = self.source(_number_in(m.group(4), path))
        if m.group(6) == "index":
            return self.index(src, m.group(5))
        return self.episode(src, m.group(5), _number_in(m.group(6), path))

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
        for line in _read_lines(src.path, "metrics.jsonl"):  # a line cut short by a kill, or garbled: skipped
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                metrics.append({k: v for k, v in row.items() if _number(v)})
        return {"name": src.name, "kind": src.kind, "config": _settings(src), "metrics": metrics,
                "summary": _read_json(src.path, "summary.json")}

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

    def search(self, src: Source, q: str, dump: str | None = None) -> dict[str, Any]:
        """Episodes whose messages or error contain ``q`` (case-insensitive), in ``dump`` (a name; ``"*"``: every
        rollout; None: every dump of ``src``). It stops at :data:`MAX_SEARCH_MATCHES` matches or after
        ``search_seconds``; then ``truncated`` is true and ``searched`` counts the dumps it read."""
        if dump is None or dump == "":
            names = list(src.dumps)
        elif dump == "*":
            names = [n for n in src.dumps if n.startswith("rollout_")]
        else:
            src.dump(dump)
            names = [dump]
        needle = q.strip().lower()
        matches: dict[str, list[int]] = {}
        count, searched = 0, 0
        deadline = time.monotonic() + self._search_seconds
        out = {"q": q, "matches": matches, "truncated": False, "searched": 0, "dumps": len(names)}
        if not needle:
            return out
        for name in names:
            try:
                for i, line in self._episode_lines(src.dumps[name]):
                    if time.monotonic() > deadline:  # checked per episode: one huge file cannot hold it either
                        return {**out, "truncated": True, "searched": searched}
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
                            return {**out, "truncated": True, "searched": searched + 1}
            except ViewError as e:  # one unreadable dump: the others are still searched
                log.warning("viewer search: %s", e)
            searched += 1
        return {**out, "searched": searched}

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
        """A dump's episode lines (unparsed) and token texts, from a cache of recent files (at most ``cache_bytes``
        of text, the newest file always kept)."""
        key = _key(path)
        with self._lock:
            if key in self._lines:
                self._lines.move_to_end(key)
                return self._lines[key]
        lines, texts = [], {}
        for _, line in self._read_dump(path, lambda line: texts.update(_token_texts(line))):
            lines.append(line)
        with self._lock:
            self._lines[key] = (lines, texts)
            while len(self._lines) > 1 and sum(_size(v) for v in self._lines.values()) > self._cache_bytes:
                self._lines.popitem(last=False)
        return lines, texts

    def _episode_lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """``(position, line)`` of a dump's episodes: from the cache when the file is there, else read through
        without keeping it (a search over a big run does not push out the files being read)."""
        with self._lock:
            cached = self._lines.get(_key(path))
        if cached is not None:
            return enumerate(cached[0])
        return self._read_dump(path, lambda line: None)

    @staticmethod
    def _read_dump(path: Path, on_texts: Callable[[str], Any]) -> Iterator[tuple[int, str]]:
        """``(position, line)`` of each episode line of a dump file, streamed; its token-text line goes to
        ``on_texts``."""
        i = 0
        try:
            with _open_text(path) as f:
                for n, line in enumerate(f):
                    if not line.strip():
                        continue
                    if n < 2 and line.startswith('{"format": "' + FORMAT + '"'):
                        continue
                    if n < 2 and line.startswith('{"token_text":'):
                        on_texts(line)
                        continue
                    yield i, line
                    i += 1
        except EOFError:  # a gzip cut short by a kill: the episodes before the cut
            log.warning("%s is cut short; showing the %d episodes before the cut", path, i)
        except OSError as e:  # not gzip, a folder, unreadable
            raise ViewError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None

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
    for kind in ("rollout", "eval"):
        for f in sorted((path / DUMP_DIR).glob(f"{kind}_*.jsonl.gz")):
            name = f.name[:-len(".jsonl.gz")]
            if not _DUMP_NAME.fullmatch(name):  # the page asks for it by name: letters, digits, "_", ".", "-"
                log.warning("%s: not a dump name the viewer can serve; left out", f)
            elif _inside(path, f.relative_to(path)) is not None:
                dumps[name] = f
    episodes = _inside(path, "episodes.jsonl")
    if episodes is not None:
        return Source(i, path, "eval", path.name, {"episodes": episodes, **dumps})
    if dumps or (path / "metrics.jsonl").exists():
        if not dumps:
            log.warning("%s has no rollout dumps (train with --save-debug-rollout-data): only its curves are shown", path)
        return Source(i, path, "run", path.name, dumps)
    raise ViewError(f"{path} holds neither a training run (metrics.jsonl, {DUMP_DIR}/) nor an evaluation "
                    "(episodes.jsonl): give the --output-dir of a training run or of an evaluation")


def _settings(src: Source) -> dict[str, Any] | None:
    """A run's ``config.json``, or an evaluation's settings in ``run.json`` (None: neither is a readable object)."""
    config = _read_json(src.path, "config.json")
    if isinstance(config, dict):
        return config
    run = _read_json(src.path, "run.json")
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


def _inside(root: Path, name: str | Path) -> Path | None:
    """``root / name`` when it is a regular file inside ``root`` (links followed), else None: a link in a folder
    someone sent cannot make the viewer serve a file from elsewhere, nor a pipe or device hang or flood it."""
    path = root / name
    try:
        real, top = path.resolve(strict=True), root.resolve(strict=True)
        regular = stat.S_ISREG(real.stat().st_mode)
    except (OSError, RuntimeError):  # missing, a loop of links, unreadable
        return None
    if not real.is_relative_to(top):
        log.warning("%s points outside %s (to %s): not read", path, root, real)
        return None
    if not regular:
        if not real.is_dir():
            log.warning("%s is not a regular file: not read", path)
        return None
    return path


def _read_lines(root: Path, name: str) -> list[str]:
    """The lines of a text file in ``root``; bytes that are not UTF-8 are replaced, a missing or unreadable file
    has none. Only ``\\n`` ends a line (as in JSON Lines)."""
    path = _inside(root, name)
    try:
        return path.read_bytes().decode("utf-8", errors="replace").split("\n") if path else []
    except OSError:
        return []


def _read_json(root: Path, name: str) -> Any:
    path = _inside(root, name)
    try:
        return json.loads(path.read_bytes().decode("utf-8")) if path else None
    except (OSError, ValueError):  # missing, a folder, not UTF-8, not JSON
        return None


def _number_in(digits: str, path: str) -> int:
    """A source or episode number of a path (a number too long to be one: no such path)."""
    if len(digits) > MAX_INDEX_DIGITS:
        raise ViewError(f"no such path: {path[:200]}")
    return int(digits)


def _size(cached: tuple[list[str], dict[int, str]]) -> int:
    """About how many bytes a cached file's text takes."""
    return sum(len(line) for line in cached[0]) + 40 * len(cached[1])


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


