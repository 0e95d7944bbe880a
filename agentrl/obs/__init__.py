"""Observability: the metrics channel, timing spans, progress and plots."""

from agentrl.obs.metrics import MetricsLogger
from agentrl.obs.plots import plot_run
from agentrl.obs.progress import progress
from agentrl.obs.timing import Timer

__all__ = ["MetricsLogger", "Timer", "plot_run", "progress"]
