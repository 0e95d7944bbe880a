"""What an evaluation shows: the terminal table, ``summary.json`` and ``report.md`` with charts.

:func:`summarize` turns per-task metrics into ``{"tasks": {...}, "overall": {...}}`` (overall =
the mean over tasks of each metric, counts summed). :func:`format_table` renders it for a
terminal or as Markdown; :func:`write_report` writes ``report.md``, one bar chart per task
(``chart_<task>.png``) and an overview chart next to it, with the best and worst episodes of
each task as transcripts.

Example::

    >>> s = summarize({"lake": {"reward_mean": 0.5, "pass@1": 0.5, "prompts": 2.0, "episodes": 2.0,
    ...                          "status_ok": 2.0}}, ks=(1,), n_samples=1)
    >>> s["overall"]["pass@1"]
    0.5
    >>> print(format_table(s).splitlines()[0].split())
    ['task', 'n', 'avg@1', 'pass@1', 'ok/trunc/fail', 'turns', 'tokens', 'tools', 'tool', 'err']
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.types import Sample

log = logging.getLogger(__name__)

_COUNTS = ("prompts", "episodes", "status_ok", "status_truncated", "status_aborted", "status_failed", "timed_out")
"""Metrics summed (not averaged) over tasks in the overall row."""


def summarize(task_metrics: dict[str, dict[str, float]], *, ks: Sequence[int], n_samples: int,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"n_samples", "ks", "tasks": {task: metrics}, "overall": metrics, **extra}``."""
    return {**(extra or {}), "n_samples": n_samples, "ks": list(ks), "tasks": task_metrics,
            "overall": overall(task_metrics.values())}


def overall(metrics: Any) -> dict[str, float]:
    """Mean over tasks of every metric (over the tasks that have it); counts are summed."""
    metrics = list(metrics)
    keys = sorted({k for m in metrics for k in m})
    out = {}
    for key in keys:
        values = [m[key] for m in metrics if key in m]
        out[key] = float(sum(values)) if key in _COUNTS else statistics.fmean(values)
    return out


# -- tables ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict[str, float]], str]


def columns(summary: dict[str, Any]) -> list[Column]:
    """The table's columns: n, avg@n, pass@k..., pass^k..., maj@k..., statuses, turns, tokens, tools."""
    n, ks = summary["n_samples"], summary["ks"]
    rows = [*summary["tasks"].values(), summary["overall"]]
    cols = [Column("n", lambda m: f"{m.get('prompts', 0):.0f}x{n}"),
            Column(f"avg@{n}", _num("reward_mean"))]
    for family in ("pass@", "pass^", "maj@"):
        for k in ks:
            key = f"{family}{k}"
            if any(key in m for m in rows) and key != "pass^1":  # pass^1 = pass@1
                cols.append(Column(key, _num(key)))
    cols += [
        Column("ok/trunc/fail", lambda m: "/".join(f"{m.get(f'status_{s}', 0):.0f}" for s in ("ok", "truncated"))
               + f"/{m.get('status_failed', 0) + m.get('status_aborted', 0):.0f}"),
        *([Column("timed out", _num("timed_out", 0))] if any(m.get("timed_out") for m in rows) else []),
        Column("turns", _num("turns_mean", 1)),
        Column("tokens", _num("generated_tokens_mean", 0)),
        Column("tools", _num("tool_calls_mean", 2)),
        Column("tool err", _num("tool_errors_mean", 2)),
    ]
    return cols


def timeout_notice(task_metrics: dict[str, dict[str, float]], timeout: float | None) -> str | None:
    """A line saying which tasks had episodes stopped by ``--episode-timeout`` (None: none were): their
    success is not a wrong answer's, and a busy machine needs a longer limit."""
    hit = {task: m for task, m in task_metrics.items() if m.get("timed_out")}
    if not hit:
        return None
    counts = ", ".join(f"{task}: {m['timed_out']:.0f} of {m.get('episodes', 0):.0f}" for task, m in hit.items())
    limit = f"{timeout:g} s" if timeout else "its limit"
    return (f"episodes stopped by --episode-timeout ({limit}) before they ended ({counts}): they count as failures "
            "above, not as wrong answers; on a busy machine raise --episode-timeout (none: no limit)")


def _num(key: str, digits: int = 3) -> Callable[[dict[str, float]], str]:
    return lambda m: f"{m[key]:.{digits}f}" if key in m else "-"


def format_table(summary: dict[str, Any], *, markdown: bool = False) -> str:
    """One row per task and an ``overall`` row (when there are several tasks)."""
    cols = columns(summary)
    rows = [[name, *(c.cell(m) for c in cols)] for name, m in summary["tasks"].items()]
    if len(summary["tasks"]) > 1:
        rows.append(["overall", *(c.cell(summary["overall"]) for c in cols)])
    return render_table(["task", *(c.header for c in cols)], rows, markdown=markdown)


def render_table(header: list[str], rows: list[list[str]], *, markdown: bool = False, left: int = 1) -> str:
    """Aligned plain text (the first ``left`` columns left-aligned, numbers right) or Markdown."""
    if markdown:
        align = ["---"] * left + ["---:"] * (len(header) - left)
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(v).ljust(w) if i < left else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# -- report.md ---------------------------------------------------------------------------------
def score_keys(summary: dict[str, Any], metrics: dict[str, float]) -> list[str]:
    """The [0, 1] scores of a task in table order: pass@k, pass^k (k > 1; pass^1 = pass@1), maj@k."""
    keys = []
    for family in ("pass@", "pass^", "maj@"):
        keys += [f"{family}{k}" for k in summary["ks"] if f"{family}{k}" in metrics and f"{family}{k}" != "pass^1"]
    return keys


_COLORS = {"avg@": "#4c72b0", "pass@": "#55a868", "pass^": "#dd8452", "maj@": "#c44e52"}


def plot_task(name: str, summary: dict[str, Any], path: Path) -> Path:
    """A bar chart of one task's scores (avg@n, pass@k, pass^k, maj@k), values on the bars."""
    plt = _pyplot()
    metrics = summary["tasks"][name]
    keys = score_keys(summary, metrics)
    labels = [f"avg@{summary['n_samples']}", *keys]
    values = [metrics.get("reward_mean", 0.0), *(metrics[k] for k in keys)]
    colors = [_COLORS[next(f for f in _COLORS if label.startswith(f))] for label in labels]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 1.5), 3.4))
    bars = ax.bar(labels, values, color=colors)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, max(v, 0.0)), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    top = max([1.0, *values])
    ax.set_ylim(min(0.0, *values) * 1.1, top * 1.12)
    ax.set_title(f"{name}: {metrics.get('prompts', 0):.0f} prompts x {summary['n_samples']}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overview(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars: avg@n and pass@k for every task side by side."""
    import numpy as np

    plt = _pyplot()
    names = list(summary["tasks"])
    keys = ["reward_mean", *(f"pass@{k}" for k in summary["ks"])]
    keys = [k for k in keys if any(k in m for m in summary["tasks"].values())]
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 3.6))
    for i, key in enumerate(keys):
        vals = [summary["tasks"][n].get(key, 0.0) for n in names]
        label = f"avg@{summary['n_samples']}" if key == "reward_mean" else key
        bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, names)
    values = [summary["tasks"][n].get(k, 0.0) for n in names for k in keys]
    ax.set_ylim(min(0.0, *values) * 1.1, max(1.0, *values) * 1.15)
    ax.legend(fontsize=8, ncol=len(keys), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("all tasks", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_examples(samples: Sequence[Sample], count: int) -> list[tuple[str, Sample]]:
    """Up to ``count`` episodes worth reading: the best, the worst, then a failed or truncated one
    (or the median), each once. When every reward is equal they are just examples."""
    if not samples or count < 1:
        return []
    order = sorted(range(len(samples)), key=lambda i: (-samples[i].reward, i))
    spread = samples[order[0]].reward != samples[order[-1]].reward
    picks = [("best" if spread else "first", order[0]), ("worst" if spread else "last", order[-1])]
    odd = next((i for i in order if samples[i].status != "ok"), None)
    picks.append(("not ok" if odd is not None else "median", odd if odd is not None else order[len(order) // 2]))
    out: list[tuple[str, Sample]] = []
    seen: set[int] = set()
    for label, i in picks:
        if i not in seen and len(out) < count:
            seen.add(i)
            out.append((label, samples[i]))
    return out


def transcript(sample: Sample, *, max_chars: int = 1500) -> str:
    """An episode as Markdown: a header line, then each message (long ones shortened)."""
    head = (f"reward {sample.reward:g} · status {sample.status} · {sample.num_turns} turns · "
            f"{sample.num_generated_tokens} generated tokens · "
            f"prompt #{sample.metadata.get('prompt_index', sample.group_id)} sample {sample.sample_index}")
    parts = [head + (f" · error: `{sample.error}`" if sample.error else "")]
    for m in sample.messages:
        text = str(m.get("content") or "")
        if len(text) > max_chars:
            text = text[: max_chars // 2] + f"\n[... {len(text) - max_chars} characters ...]\n" + text[-max_chars // 2:]
        fence = "````" if "```" in text else "```"
        parts.append(f"**{m.get('role', '?')}**\n\n{fence}text\n{text}\n{fence}")
    return "\n\n".join(parts)


def write_report(out_dir: str | Path, summary: dict[str, Any], samples: dict[str, list[Sample]], *,
                 examples: int = 3, plots: bool = True, command: str | None = None) -> Path:
    """Write ``report.md`` (+ PNG charts) into ``out_dir`` and return its path."""
    out_dir = Path(out_dir)
    lines = ["# Evaluation report", ""]
    settings = summary.get("settings", {})
    if settings:
        lines += [f"- model: `{settings.get('model_path') or ', '.join(settings.get('engine_url') or [])}`",
                  f"- samples per prompt: {summary['n_samples']}; k: {', '.join(map(str, summary['ks']))}; "
                  f"sampling: `{json.dumps(settings.get('sampling', {}))}`; seed {settings.get('seed')}"]
    if command:
        lines.append(f"- command: `{command}`")
    if summary.get("finished"):
        lines.append(f"- finished: {summary['finished']}")
    if summary.get("engine_failures"):
        counts = ", ".join(f"{task}: {n}" for task, n in summary["engine_failures"].items())
        lines += ["", f"**Incomplete:** the engine failed some prompts ({counts}); the table leaves them out. "
                      f"First error: `{summary.get('engine_error')}`. Rerun the same command to evaluate them."]
    lines += ["", format_table(summary, markdown=True), ""]
    lines += ["avg@n: mean reward; pass@k: unbiased estimate that at least one of k episodes succeeds "
              "(Chen et al. 2021); pass^k: that all k succeed; maj@k: the majority answer of k episodes "
              "is correct; tokens: generated tokens per episode; tools: tool calls per episode.", ""]
    if plots and len(summary["tasks"]) > 1:
        lines += [f"![all tasks]({plot_overview(summary, out_dir / 'chart_overview.png').name})", ""]
    for name in summary["tasks"]:
        lines += [f"## {name}", ""]
        if plots:
            lines += [f"![{name}]({plot_task(name, summary, out_dir / f'chart_{name}.png').name})", ""]
        for label, sample in pick_examples(samples.get(name, []), examples):
            lines += [f"### {label} episode", "", transcript(sample), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_summary(out_dir: str | Path, summary: dict[str, Any]) -> Path:
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
