"""What the benchmark scripts share: the device tag in result names, and writing a result pair.

Each script prints a markdown table and, with ``--out DIR``, writes ``DIR/<stem>.json`` (the numbers
and the run's metadata) beside ``DIR/<stem>.md`` (the table).

A result kept in ``bench/results/`` is one that README.md or a ``docs/*.md`` file cites by its exact
path (``bench/results/<stem>.md`` or ``.json``; a run's folder file by file), and it names its
provenance: the ``.md`` starts with its title, then the lines ``- commit: ...``, ``- machine: ...``,
``- date: ...`` (a ``YYYY-MM-DD`` day) and ``- command: ...``; the ``.json`` holds the keys
``commit``, ``machine``, ``date`` and ``command`` at its top level or in its ``meta`` object; a run's
folder holds them in its ``summary.json``. Where a run did not record its commit, ``commit`` says
``not recorded (added in <hash>)``. Reruns, sweeps and superseded results leave the tree: the doc that
discusses them gives their numbers with the date, the machine and ``git show <commit>:<path>``.
``tests/test_bench_results.py`` checks all of this.
"""

from __future__ import annotations

import json
from pathlib import Path


def device_tag(device_name: str) -> str:
    """``h100``, ``h200`` or ``cpu``, from a device name such as ``NVIDIA H100 80GB HBM3``."""
    return "h100" if "H100" in device_name else "h200" if "H200" in device_name else "cpu"


def commit() -> str:
    """The checked-out commit (short), with ``+changes`` when the tree differs from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def save(out: str | Path, stem: str, payload: dict, md: str) -> Path:
    """Write ``<out>/<stem>.json`` and ``<out>/<stem>.md`` (folders made as needed); the .md path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    path = out / f"{stem}.md"
    path.write_text(md)
    return path
