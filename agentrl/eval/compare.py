"""``agentrl eval compare DIR_A DIR_B``: two evaluations side by side.

Reads each folder's ``summary.json`` and shows, for every task of either run (and the overall
row), each metric of A, of B, and B - A. Settings that differ (model, sampling, samples per
prompt...) are listed first, since they change what the numbers mean. The same comparison is
written as Markdown to ``compare.md`` (``--out``).

Example::

    agentrl eval compare runs/eval-base runs/eval-step100 --out compare.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from agentrl.eval.report import render_table
from agentrl.eval.store import diff_settings

log = logging.getLogger(__name__)

EPISODE_KEYS = ("turns_mean", "generated_tokens_mean", "response_tokens_mean", "prompt_tokens_mean",
                "tool_calls_mean", "tool_errors_mean")
COUNT_KEYS = ("prompts", "episodes", "status_ok", "status_truncated", "status_aborted", "status_failed")


class CompareError(ValueError):
    """A folder that holds no finished evaluation."""


def load_summary(path: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of an evaluation folder (or the file itself); a :class:`CompareError` for a folder
    without one, and for a file that is cut short, not JSON, or not an evaluation's summary."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        hint = (" It has episodes.jsonl: rerun its `agentrl eval` command to finish it and write the summary."
                if (path / "episodes.jsonl").exists() else "")
        raise CompareError(f"{file} not found; expected the --output-dir of an `agentrl eval` run.{hint}")
    try:
        summary = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON (cut short by a kill)
        raise CompareError(f"{file} cannot be read ({e}); rerun its `agentrl eval` command to write it again") from None
    problem = _summary_problem(summary)
    if problem:
        raise CompareError(f"{file} is not the summary of an `agentrl eval` run: {problem}")
    return summary


def _summary_problem(summary: Any) -> str | None:
    """Why ``summary`` cannot be compared (None: it can): tasks and overall hold metric -> number."""
    if not isinstance(summary, dict):
        return f"expected a JSON object, got {type(summary).__name__}"
    tasks, overall = summary.get("tasks"), summary.get("overall")
    if not isinstance(tasks, dict) or not isinstance(overall, dict):
        return "expected 'tasks' and 'overall' objects"
    for name, metrics in [*tasks.items(), ("overall", overall)]:
        if not isinstance(metrics, dict):
            return f"the metrics of {name!r} are not an object"
        bad = next((k for k, v in metrics.items() if v is not None and not _is_number(v)), None)
        if bad is not None:
            return f"{name!r} {bad} is {metrics[bad]!r}, not a number"
    ks = summary.get("ks", [])
    if not isinstance(ks, list) or not all(_is_number(k) for k in ks):
        return f"'ks' is {ks!r}, not a list of numbers"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def metric_order(summary_a: dict[str, Any], summary_b: dict[str, Any]) -> list[str]:
    """Scores first (avg, pass@k, pass^k, maj@k), then episode statistics, then counts. ``success``
    and ``pass^1`` equal ``pass@1`` and are left out."""
    keys = {k for s in (summary_a, summary_b) for m in [*s["tasks"].values(), s["overall"]] for k in m}
    ks = sorted({*summary_a.get("ks", []), *summary_b.get("ks", [])})
    order = ["reward_mean"]
    for family in ("pass@", "pass^", "maj@"):
        order += [f"{family}{k}" for k in ks if f"{family}{k}" != "pass^1"]
    order += [k for k in EPISODE_KEYS if k in keys]
    order += [k for k in COUNT_KEYS]
    order += sorted(keys - set(order) - {"success", "pass^1"})
    return [k for k in order if k in keys]


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[list[str]]:
    """``[task, metric, A, B, B - A]`` for every task of either run, then ``overall``."""
    tasks = list(a["tasks"]) + [t for t in b["tasks"] if t not in a["tasks"]]
    rows = []
    for task in [*tasks, "overall"]:
        ma = a["overall"] if task == "overall" else a["tasks"].get(task)
        mb = b["overall"] if task == "overall" else b["tasks"].get(task)
        for key in metric_order(a, b):
            va = None if ma is None else ma.get(key)
            vb = None if mb is None else mb.get(key)
            if va is None and vb is None or key == "status_aborted" and not va and not vb:
                continue
            digits = 0 if key in COUNT_KEYS else 3
            delta = "-" if va is None or vb is None else f"{vb - va:+.{digits}f}"
            rows.append([task, _label(key, a, b), _fmt(va, digits), _fmt(vb, digits), delta])
    return rows


def _label(key: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    if key != "reward_mean":
        return key
    na, nb = a.get("n_samples"), b.get("n_samples")
    return f"avg@{na}" if na == nb else f"avg@n ({na} vs {nb})"


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def settings_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return diff_settings(a.get("settings", {}), b.get("settings", {}))


def format_compare(dir_a: str, dir_b: str, a: dict[str, Any], b: dict[str, Any], *, markdown: bool = False) -> str:
    header = ["task", "metric", "A", "B", "B - A"]
    lines = []
    if markdown:
        lines += ["# Evaluation comparison", "", f"- A: `{dir_a}`", f"- B: `{dir_b}`", ""]
    else:
        lines += [f"A: {dir_a}", f"B: {dir_b}"]
    changes = settings_changes(a, b)
    if changes:
        lines += ["settings that differ (A -> B):" if not markdown else "Settings that differ (A -> B):"]
        lines += [f"{'- ' if markdown else '  '}{c}" for c in changes]
    lines += ["", render_table(header, compare_rows(a, b), markdown=markdown, left=2)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agentrl eval compare",
                                description="Compare two `agentrl eval` output folders metric by metric.")
    p.add_argument("dir_a", help="the first evaluation's --output-dir (A)")
    p.add_argument("dir_b", help="the second evaluation's --output-dir (B); deltas are B - A")
    p.add_argument("--out", default="compare.md", help="where to write the Markdown comparison (default: %(default)s)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        a, b = load_summary(args.dir_a), load_summary(args.dir_b)
    except CompareError as e:
        print(f"agentrl eval compare: {e}", file=sys.stderr)
        return 2
    print(format_compare(args.dir_a, args.dir_b, a, b), end="")
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(format_compare(args.dir_a, args.dir_b, a, b, markdown=True), encoding="utf-8")
    except OSError as e:
        print(f"agentrl eval compare: --out {out}: cannot write it ({e.strerror or e})", file=sys.stderr)
        return 2
    print(f"\nwrote {out}")
    return 0
