"""PNG plots of a run's metrics: reward, response length, KL, entropy, time per step, eval curves."""

from __future__ import annotations

import logging
from pathlib import Path

from agentrl.obs.metrics import MetricsLogger

log = logging.getLogger(__name__)

PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("rollout/reward_mean", "rollout/kept_reward_mean")),
    ("response length (tokens)", ("rollout/response_len_mean",)),
    ("KL", ("train/kl_loss", "train/ppo_kl", "train/rollout_train_kl")),
    ("entropy", ("train/entropy",)),
)
TIMING: dict[str, str] = {
    "perf/step_time": "step",
    "perf/rollout_time": "waiting for the rollout",
    "perf/train_time": "training",
    "async/generate_s": "the rollout's generation (async)",
}
"""Keys of ``timing.png``, with their labels."""


def plot_run(metrics: MetricsLogger, out_dir: str | Path) -> list[Path]:
    """Write ``training.png`` (four panels), ``timing.png`` (seconds per step: the step, the wait for its
    rollout, training, and in async runs the rollout's generation) and ``eval.png`` (every ``eval/*`` curve).
    Returns the plots written; one that cannot be (a full disk) is a warning, never the run's error."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    for name, draw in (("training.png", _training), ("timing.png", _timing), ("eval.png", _eval)):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = draw(metrics, out_dir / name)
        except Exception as e:  # noqa: BLE001 -- a plot is a view of metrics.jsonl, which has the data
            log.warning("%s: not written (%s: %s)", out_dir / name, type(e).__name__, e)
            plt.close("all")
            continue
        if path is not None:
            written.append(path)
    return written


def _training(metrics: MetricsLogger, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            x, y = metrics.series(key)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("rollout")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _timing(metrics: MetricsLogger, path: Path) -> Path | None:
    """Where each step's seconds went; async runs add the rollouts' own generation time."""
    timing = {label: series for key, label in TIMING.items() if (series := metrics.series(key))[0]}
    return _line_chart(path, timing, "time per step", "seconds") if timing else None


def _eval(metrics: MetricsLogger, path: Path) -> Path | None:
    eval_keys = sorted({k for row in metrics.history for k in row
                        if k.startswith("eval/") and k.endswith(("/reward_mean", "/success"))})
    if not eval_keys:
        return None
    warm = any(metrics.series("sft/" + k)[0] for k in eval_keys)
    title = "evaluation" + (" (the warm start's: the second point at rollout 0)" if warm else "")
    return _line_chart(path, {k: eval_series(metrics, k) for k in eval_keys}, title, "held-out mean reward / success")


def eval_series(metrics: MetricsLogger, key: str) -> tuple[list[int], list[float]]:
    """An ``eval/*`` curve with the evaluation after a supervised warm start (``sft/eval/*``, logged at the
    rollout it ran before) placed after that rollout's own evaluation, so the curve shows what the warm
    start did: before training -> after the warm start -> after each evaluated rollout.

    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(series=lambda k: {"eval/t/success": ([0, 3], [0.0, 1.0]),
    ...                                       "sft/eval/t/success": ([0], [0.9])}.get(k, ([], [])))
    >>> eval_series(m, "eval/t/success")
    ([0, 0, 3], [0.0, 0.9, 1.0])
    """
    x, y = metrics.series(key)
    points = list(zip(x, y))
    for step, value in zip(*metrics.series("sft/" + key)):
        at = sum(1 for s, _ in points if s <= step)
        points.insert(at, (step, value))
    return [p[0] for p in points], [p[1] for p in points]


def _line_chart(path: Path, series: dict[str, tuple[list[int], list[float]]], title: str, ylabel: str) -> Path:
    """One panel, a line per ``label: (rollouts, values)``, against the rollout index."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_xlabel("rollout")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
