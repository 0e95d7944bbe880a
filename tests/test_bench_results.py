"""``bench/results/`` holds only the results that README.md or ``docs/*.md`` cite, each naming its provenance.

The convention (also in ``bench/_report.py``):

* A result is ``<stem>.md`` (the table) with ``<stem>.json`` (the numbers) beside it, as a benchmark
  writes them, or a run's folder. README.md or a ``docs/*.md`` file cites it by its exact path
  (``bench/results/<stem>.md`` or ``.json``; a folder's files one by one), never through a glob or a
  bare file name.
* A ``.md`` result starts with its title, then the lines ``- commit: ...``, ``- machine: ...``,
  ``- date: ...`` and ``- command: ...``. A ``.json`` result holds the keys ``commit``, ``machine``,
  ``date`` and ``command`` at its top level or in its ``meta`` object. A run's folder holds them in its
  ``summary.json``. ``commit`` names a commit hash (where the run did not record one:
  ``not recorded (added in <hash>)``), ``date`` a day as ``YYYY-MM-DD``.
* A result that left the tree is cited as ``git show <commit>:bench/results/<file>``, beside its numbers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIELDS = ("commit", "machine", "date", "command")
HEADER_LINES = 12  # the title, a blank line, the four fields, with room for a wrapped title

# a path under bench/results/ as written in a doc: up to a space, a backtick, a quote or a bracket;
# group 1 is the commit of a `git show <commit>:<path>` citation
CITATION = re.compile(r"(?:\b([0-9a-f]{7,40}):)?(bench/results/[^\s`'\"()\[\]|,;]*)")
GLOB = re.compile(r"[*?{}<>\[\]]")
COMMIT = re.compile(r"\b[0-9a-f]{7,40}\b")
DAY = re.compile(r"(?<!\d)\d{4}-\d{2}-\d{2}(?!\d)")
BARE_NAME = re.compile(r"(?<![\w/:.-])(?:%s)[\w.-]*\.(?:md|json)\b")


def _citations() -> list[tuple[Path, str | None, str]]:
    """(doc, commit or None, path) for every bench/results path the docs write."""
    found = []
    for doc in DOCS:
        for commit, path in CITATION.findall(doc.read_text()):
            found.append((doc, commit or None, path.rstrip(".:")))
    return found


def _result_files() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*") if p.is_file())


def _cited_paths() -> set[str]:
    return {path for _, commit, path in _citations() if commit is None}


def _check_fields(where: str, fields: dict[str, Any]) -> list[str]:
    problems = [f"{where}: no {name}" for name in FIELDS if not str(fields.get(name) or "").strip()]
    if fields.get("commit") and not COMMIT.search(str(fields["commit"])):
        problems.append(f"{where}: commit {fields['commit']!r} names no commit hash")
    if fields.get("date") and not DAY.search(str(fields["date"])):
        problems.append(f"{where}: date {fields['date']!r} has no YYYY-MM-DD day")
    return problems


def _md_fields(path: Path) -> dict[str, str]:
    head = path.read_text().splitlines()[:HEADER_LINES]
    fields = {}
    for line in head:
        match = re.match(r"- (commit|machine|date|command): (.+)$", line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def _json_fields(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        return {}
    meta = data["meta"] if isinstance(data.get("meta"), dict) else {}
    return {name: data.get(name, meta.get(name)) for name in FIELDS}


def test_every_result_is_cited_by_its_exact_path():
    cited = _cited_paths()
    uncited = []
    for path in _result_files():
        rel = path.relative_to(ROOT).as_posix()
        pair = {rel, str(Path(rel).with_suffix(".md")), str(Path(rel).with_suffix(".json"))}
        in_folder = path.parent != RESULTS
        if not (rel in cited if in_folder else pair & cited):
            uncited.append(rel)
    assert not uncited, ("results no doc cites by exact path (cite them in README.md or docs/*.md, or "
                         f"remove them and give their numbers with `git show <commit>:<path>`): {uncited}")


def test_every_result_names_its_commit_machine_date_and_command():
    problems = []
    for path in _result_files():
        rel = path.relative_to(ROOT).as_posix()
        if path.parent != RESULTS:  # a run's folder: its summary.json speaks for its files
            summary = path.parent / "summary.json"
            problems += (_check_fields(rel, _json_fields(summary)) if summary.is_file()
                         else [f"{rel}: its folder has no summary.json"])
        elif path.suffix == ".md":
            problems += _check_fields(rel, _md_fields(path))
        elif path.suffix == ".json":
            problems += _check_fields(rel, _json_fields(path))
        else:
            problems.append(f"{rel}: only .md and .json results (or a run's folder) belong in bench/results/")
    assert not problems, "\n".join(sorted(set(problems)))


def test_docs_cite_existing_results_by_exact_path():
    problems = []
    for doc, commit, path in _citations():
        where = f"{doc.relative_to(ROOT)}: {path}"
        if GLOB.search(path):
            problems.append(f"{where}: a glob or a template; cite each file by its exact path")
        elif commit is None and not (ROOT / path).exists():
            problems.append(f"{where}: no such file (a result that left the tree is cited as "
                            "`git show <commit>:<path>`)")
    stems = sorted({p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")})
    bare = re.compile(BARE_NAME.pattern % "|".join(map(re.escape, stems)))
    for doc in DOCS:
        problems += [f"{doc.relative_to(ROOT)}: {name}: a bare result name; write bench/results/{name}"
                     for name in bare.findall(doc.read_text())]
    assert not problems, "\n".join(problems)


def _git_has(name: str) -> bool:
    """Whether this clone holds the git object ``name`` (``<commit>:<path>``, ``<commit>^{commit}``)."""
    return subprocess.run(["git", "cat-file", "-e", name], cwd=ROOT, capture_output=True, check=False).returncode == 0


def test_results_that_left_the_tree_are_at_the_commit_named():
    removed = sorted({(commit, path) for _, commit, path in _citations() if commit})
    if not removed:
        pytest.skip("no doc cites a result that left the tree")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    missing, unknown = [], []
    for commit, path in removed:
        if not _git_has(f"{commit}^{{commit}}"):
            unknown.append(commit)
        elif not _git_has(f"{commit}:{path}"):
            missing.append(f"{commit}:{path}")
    assert not missing, f"cited with `git show` but not at that commit: {missing}"
    if unknown:
        pytest.skip(f"commits not in this clone (shallow?): {sorted(set(unknown))}")
