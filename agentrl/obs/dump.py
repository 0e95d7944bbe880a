"""Rollout dumps: every episode of a rollout with the numbers the training step used, on disk.

With ``--save-debug-rollout-data`` (slime's name) a run writes, beside its ``metrics.jsonl``::

    rollout_data/rollout_000000.jsonl.gz    one file per training rollout (rollout 0 is metrics step 1)
    rollout_data/eval_000000.jsonl.gz       the held-out evaluations during training (at metrics step 0, ...)

A dump file is gzip-compressed JSON Lines:

1. a header: ``{"format": "agentrl.dump", "version": 1, "kind": "rollout" | "eval", "step": ...,
   "episodes_total": ..., "episodes_dumped": ..., "index": [one short summary per episode]}``; the
   index (status, reward, advantage, lengths, tool errors...) is what lists and filters need, so a
   reader of the first line alone (:func:`read_header`) can list a rollout without parsing its tokens;
2. ``{"token_text": {"id": "text", ...}}``: the text of every token id in the file (so the file is read
   without the tokenizer);
3. one line per episode: every :class:`~agentrl.types.Sample` field, as in an evaluation's
   ``episodes.jsonl`` (:mod:`agentrl.eval.store`), plus what the step added beside it (all
   response-aligned lists have one value per ``response_ids`` token):

   ========================  ============================================================================
   ``kept``                  trained on (false: dropped by a filter, e.g. failed, or a zero-variance group)
   ``advantages``            the advantage of each response token (kept episodes)
   ``trainer_logprobs``      the trainer's log-probability of each response token before the update
                             (0 where ``loss_mask`` is 0), where recorded: the torch trainer records
                             them from its own pass; other trainers when old logprobs were computed
                             (several optimiser steps, ``--use-tis``)
   ``entropy``               the policy's entropy at each response token, where recorded
   ``ref_logprobs``          reference-model logprobs (``--use-kl-loss``)
   ``values``, ``returns``   critic values and value targets (``gae``)
   ``task``, ``row``         evaluation episodes: the task and its prompt row (as in ``episodes.jsonl``)
   ========================  ============================================================================

An evaluation's own ``episodes.jsonl`` (``agentrl eval``) is the same episode records without the
header lines; :func:`read_dump` reads both. Fields a newer :class:`Sample` adds are written and read
back as they are; fields this version does not know stay in :attr:`DumpedEpisode.extras`.

Example::

    >>> import tempfile, pathlib
    >>> from agentrl.types import Sample, _json_default
    >>> s = Sample(prompt_ids=[1], response_ids=[2, 3], loss_mask=[1, 0], rollout_logprobs=[-0.5, 0.0])
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rollout_000000.jsonl.gz"
    >>> _ = write_dump(path, {"kind": "rollout", "step": 1}, [DumpedEpisode(s, {"kept": True})], {1: "a", 2: "b", 3: "c"})
    >>> d = read_dump(path)
    >>> d.episodes[0].sample == s, d.episodes[0].extras, d.token_text[2]
    (True, {'kept': True}, 'b')
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.types import Sample, _json_default

log = logging.getLogger(__name__)

FORMAT = "agentrl.dump"
VERSION = 1
DUMP_DIR = "rollout_data"
"""The folder of a run's dumps, inside ``--output-dir``."""
TOKEN_FIELDS = ("advantages", "trainer_logprobs", "entropy", "ref_logprobs", "values", "returns")
"""Response-aligned lists a dump may hold beside the Sample's own ``loss_mask`` and ``rollout_logprobs``."""
_SAMPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(Sample))


@dataclass
class DumpedEpisode:
    """One episode of a dump: the :class:`Sample` and the values beside it (``kept``, ``advantages``...)."""

    sample: Sample
    extras: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {**self.sample.to_dict(), **self.extras}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "DumpedEpisode":
        return cls(Sample.from_dict({k: v for k, v in record.items() if k in _SAMPLE_FIELDS}),
                   {k: v for k, v in record.items() if k not in _SAMPLE_FIELDS})


@dataclass
class Dump:
    """A dump file read back: its header, its episodes and the text of its token ids."""

    header: dict[str, Any]
    episodes: list[DumpedEpisode]
    token_text: dict[int, str] = field(default_factory=dict)


# -- writing ----------------------------------------------------------------------------------
def write_dump(path: str | Path, header: dict[str, Any], episodes: Sequence[DumpedEpisode],
               token_text: dict[int, str] | None = None, *, compresslevel: int = 6) -> Path:
    """Write a dump file (atomically: a reader never sees half a file). ``header`` gets the format,
    version, time, episode count and index added."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [e.to_record() for e in episodes]
    head = {"format": FORMAT, "version": VERSION, "time": time.time(), **header,
            "episodes_dumped": len(records), "index": [episode_summary(r) for r in records]}
    head.setdefault("episodes_total", len(records))
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=compresslevel) as f:
        f.write(_dumps(head) + "\n")
        f.write(_dumps({"token_text": {str(k): v for k, v in sorted((token_text or {}).items())}}) + "\n")
        for r in records:
            f.write(_dumps(r) + "\n")
    os.replace(tmp, path)
    return path


def episode_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The short form of an episode record that lists and filters need (no tokens, no messages). A field of the
    wrong type (a hand-edited or garbled ``episodes.jsonl``) counts as missing."""
    metrics = _of(record.get("metrics"), dict, {})
    mask = [m for m in _of(record.get("loss_mask"), list, []) if isinstance(m, (int, float))]
    error = record.get("error")
    error = error if isinstance(error, str) else json.dumps(error, default=str) if error else ""
    out = {"group_id": record.get("group_id"), "sample_index": record.get("sample_index"),
           "env_id": record.get("env_id", ""), "status": record.get("status", "ok"), "reward": record.get("reward"),
           "advantage": _advantage(_of(record.get("advantages"), list, None), mask), "kept": record.get("kept"),
           "prompt_tokens": len(_of(record.get("prompt_ids"), list, [])), "response_tokens": len(mask),
           "generated_tokens": sum(mask), "turns": record.get("num_turns", 0),
           "tool_calls": metrics.get("tool_calls", 0.0), "tool_errors": metrics.get("tool_errors", 0.0),
           "error": error[:300] or None, "preview": _preview(_of(record.get("messages"), list, []))}
    for key in ("task", "row"):
        if key in record:
            out[key] = record[key]
    return out


def _of(value: Any, kind: type, default: Any) -> Any:
    return value if isinstance(value, kind) else default


def _advantage(advantages: list[float] | None, mask: list[float]) -> float | None:
    """An episode's advantage: the mean over its trained tokens (GRPO's are all equal)."""
    advantages = [a for a in advantages or [] if isinstance(a, (int, float))]
    if not advantages:
        return None
    values = [a for a, m in zip(advantages, mask) if m] or advantages
    return sum(values) / len(values)


def _preview(messages: list[dict[str, Any]], n: int = 160) -> str:
    """The first user message and the last assistant message, shortened (for lists)."""
    def text(m: dict[str, Any]) -> str:
        content = m.get("content")
        return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)

    messages = [m for m in messages if isinstance(m, dict)]
    user = next((text(m) for m in messages if m.get("role") == "user"), "")
    answer = next((text(m) for m in reversed(messages) if m.get("role") == "assistant"), "")
    return " ".join(user.split())[:n] + " \u2192 " + " ".join(answer.split())[:n]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)  # as Sample.to_json


# -- reading ----------------------------------------------------------------------------------
def open_dump(path: Path):
    """A dump file (gzip) or an evaluation's plain ``episodes.jsonl``, opened for reading text."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a dump file (its first line only: fast on big files). An evaluation's
    ``episodes.jsonl`` has none: its index is built from every line."""
    path = Path(path)
    with open_dump(path) as f:
        first = f.readline()
    head = _header_of(first)
    if head.get("format") == FORMAT:
        return head
    records = list(iter_records(path))
    return {"kind": "eval", "episodes_total": len(records), "episodes_dumped": len(records),
            "index": [episode_summary(r) for r in records]}


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The episode records of a dump or an ``episodes.jsonl``, as dicts (headers skipped; an unreadable
    line, e.g. one cut short by a kill, is skipped with a warning)."""
    path = Path(path)
    with open_dump(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                log.warning("%s:%d: skipping an unreadable line (%s)", path, lineno, e)
                continue
            if not isinstance(record, dict):
                log.warning("%s:%d: skipping a line that is not a JSON object", path, lineno)
                continue
            if lineno <= 2 and ("format" in record or "token_text" in record):
                continue
            yield record


def _header_of(line: str) -> dict[str, Any]:
    """A file's first line as a header (``{}`` when it is not a JSON object: an ``episodes.jsonl``'s episode, or
    garbled)."""
    try:
        head = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return head if isinstance(head, dict) else {}


def read_token_text(path: str | Path) -> dict[int, str]:
    """The token texts of a dump (empty for an ``episodes.jsonl``)."""
    path = Path(path)
    with open_dump(path) as f:
        for lineno, line in enumerate(f, 1):
            if lineno > 2:
                break
            record = json.loads(line) if line.strip() else {}
            if "token_text" in record:
                return {int(k): v for k, v in record["token_text"].items()}
    return {}


def read_dump(path: str | Path) -> Dump:
    """A dump file (or an evaluation's ``episodes.jsonl``) read back exactly as written."""
    path = Path(path)
    with open_dump(path) as f:
        first = f.readline()
    head = _header_of(first)
    if head.get("format") != FORMAT:
        head = {"kind": "eval"}
    elif head.get("version", VERSION) > VERSION:
        log.warning("%s: dump format version %s is newer than this reader's (%s)", path, head["version"], VERSION)
    return Dump(head, [DumpedEpisode.from_record(r) for r in iter_records(path)], read_token_text(path))


def dump_files(run_dir: str | Path) -> dict[str, list[Path]]:
    """``{"rollout": [...], "eval": [...]}``: a run's dump files, in step order."""
    folder = Path(run_dir) / DUMP_DIR
    return {kind: sorted(folder.glob(f"{kind}_*.jsonl.gz")) for kind in ("rollout", "eval")}
