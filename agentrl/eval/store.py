"""The output folder of an evaluation: its settings, its episodes, and resuming.

``run.json`` holds the settings that decide which episodes are run (model or server, tasks,
samples per prompt, sampling, seed, budgets). ``episodes.jsonl`` gets one line per episode,
appended one finished group at a time::

    {"task": "gsm8k", "row": 3, "prompt_tokens": 81, "response_tokens": 143,
     "generated_tokens": 143, ...every Sample field: messages, reward, status, tokens...}

Rerunning the same command in the same folder reads ``episodes.jsonl`` back, keeps every
complete group (all ``n`` samples of a ``(task, row)``), drops a line cut short by a kill and
any incomplete group, and runs only what is missing. Other settings in the same folder are
refused (:class:`SettingsChanged`) unless the caller overwrites; an earlier attempt that stored no
episode (it failed before the first group finished) is replaced, so it never blocks a corrected retry.

Example::

    >>> import tempfile
    >>> store = RunStore(tempfile.mkdtemp())
    >>> store.prepare({"model": "tiny-qwen2", "n_samples": 2})
    >>> store.load_done(n_samples=2)
    {}
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from agentrl.types import Group, Sample
from agentrl.utils.files import write_text_atomically

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
EPISODES_FILE = "episodes.jsonl"
_EXTRA_KEYS = ("task", "row", "prompt_tokens", "response_tokens", "generated_tokens")
"""Keys an episode line has beside the Sample's own fields."""


class SettingsChanged(RuntimeError):
    """The output folder holds a run made with other settings."""


class RunStore:
    """``run.json`` + ``episodes.jsonl`` in one folder (see the module doc)."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        self.run_path = self.dir / RUN_FILE
        self.episodes_path = self.dir / EPISODES_FILE

    # -- settings --------------------------------------------------------------------------
    def prepare(self, settings: dict[str, Any], *, overwrite: bool = False) -> None:
        """Create the folder and ``run.json``, or check that an existing run has the same settings.

        Raises :class:`SettingsChanged` naming every differing setting, unless ``overwrite``,
        which deletes the earlier run's episodes first.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings))  # the form it has once read back
        if overwrite:  # the earlier run and everything made from it
            made = [self.dir / "summary.json", self.dir / "report.md", *self.dir.glob("chart_*.png")]
            for p in (self.run_path, self.episodes_path, *made):
                p.unlink(missing_ok=True)
        has_episodes = self.episodes_path.exists() and self.episodes_path.stat().st_size > 0
        if self.run_path.exists() and not has_episodes:  # an earlier attempt stored nothing: nothing to keep
            self.run_path.unlink()
        if self.run_path.exists():
            old = _read_settings(self.run_path)
            if old is None:
                raise SettingsChanged(f"{self.run_path} cannot be read (cut short or not JSON), so the settings of the "
                                      f"episodes in {self.episodes_path} are unknown; pick another --output-dir or "
                                      "pass --overwrite")
            changes = diff_settings(old, settings)
            if changes:
                raise SettingsChanged(
                    f"{self.dir} holds an evaluation made with other settings:\n"
                    + "\n".join(f"  {c}" for c in changes)
                    + "\nRerun with the same settings to resume it, pick another --output-dir, or pass --overwrite "
                    "to delete it and start over."
                )
            return
        if has_episodes:
            raise SettingsChanged(f"{self.episodes_path} exists but {self.run_path} does not, so its settings are "
                                  "unknown; pick another --output-dir or pass --overwrite")
        record = {"settings": settings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_text_atomically(self.run_path, json.dumps(record, indent=2) + "\n")

    def settings(self) -> dict[str, Any]:
        return json.loads(self.run_path.read_text(encoding="utf-8"))["settings"]

    # -- episodes --------------------------------------------------------------------------
    def append_group(self, task: str, row: int, group: Group) -> None:
        """Append every sample of a finished group (one write, flushed: a kill loses at most
        the group being written, whose partial lines the next :meth:`load_done` drops)."""
        lines = "".join(json.dumps(episode_record(task, row, s), ensure_ascii=False) + "\n" for s in group.samples)
        with open(self.episodes_path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()

    def load_done(self, n_samples: int) -> dict[str, dict[int, list[Sample]]]:
        """``{task: {row: samples}}`` of every complete group on disk.

        A cut-off last line, undecodable lines and incomplete groups are dropped, and the file is
        rewritten without them, so appending goes on from clean lines.
        """
        if not self.episodes_path.exists():
            return {}
        raw = self.episodes_path.read_bytes()
        raw_lines = raw.split(b"\n")  # bytes: a kill can cut a line inside a multi-byte character
        groups: dict[tuple[str, int], dict[int, tuple[str, Sample]]] = defaultdict(dict)
        bad = 0
        for lineno, raw_line in enumerate(raw_lines, 1):
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8").rstrip("\r")
                task, row, sample = parse_episode(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
                bad += 1
                log.warning("%s:%d: dropping an unreadable episode line (%s)", self.episodes_path, lineno,
                            "cut off by an interrupted run" if lineno == len(raw_lines) else e)
                continue
            groups[(task, row)].setdefault(sample.sample_index, (line, sample))
        done: dict[str, dict[int, list[Sample]]] = defaultdict(dict)
        kept_lines: list[str] = []
        incomplete = 0
        for (task, row), by_index in groups.items():
            if set(by_index) != set(range(n_samples)):
                incomplete += 1
                continue
            done[task][row] = [by_index[i][1] for i in range(n_samples)]
            kept_lines += [by_index[i][0] for i in range(n_samples)]
        if bad or incomplete or len(kept_lines) != sum(1 for ln in raw_lines if ln.strip()):
            log.info("resuming: kept %d complete groups; dropped %d incomplete groups and %d unreadable lines",
                     sum(map(len, done.values())), incomplete, bad)
            write_text_atomically(self.episodes_path, "".join(ln + "\n" for ln in kept_lines))
        return dict(done)

    def iter_episodes(self):
        """``(task, row, Sample)`` of every readable line, in file order."""
        if not self.episodes_path.exists():
            return
        with open(self.episodes_path, "rb") as f:
            for line in f:
                try:
                    yield parse_episode(json.loads(line.decode("utf-8")))
                except (ValueError, KeyError, TypeError, AttributeError):  # bytes that are not UTF-8 among them
                    continue


def episode_record(task: str, row: int, sample: Sample) -> dict[str, Any]:
    return {"task": task, "row": row, "prompt_tokens": len(sample.prompt_ids),
            "response_tokens": len(sample.response_ids), "generated_tokens": sample.num_generated_tokens,
            **sample.to_dict()}


def parse_episode(record: dict[str, Any]) -> tuple[str, int, Sample]:
    record = dict(record)
    task, row = str(record["task"]), int(record["row"])
    for key in _EXTRA_KEYS:
        record.pop(key, None)
    return task, row, Sample.from_dict(record)


def diff_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings trees (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: (unset) -> {json.dumps(new[key])}")
            elif key not in new:
                out.append(f"{where}: {json.dumps(old[key])} -> (unset)")
            else:
                out += diff_settings(old[key], new[key], where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in diff_settings(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]


def _read_settings(path: Path) -> dict[str, Any] | None:
    """The settings in a ``run.json``, or None when the file is cut short, not JSON or not a run record."""
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    settings = record.get("settings", {}) if isinstance(record, dict) else None
    return settings if isinstance(settings, dict) else None


