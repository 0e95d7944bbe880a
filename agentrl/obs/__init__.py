"""Observability: the metrics channel, timing spans, progress and plots."""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.obs.metrics import MetricsLogger
    from agentrl.obs.plots import plot_run
    from agentrl.obs.progress import progress
    from agentrl.obs.timing import Timer

MODULES = {
    ".metrics": ["MetricsLogger"],
    ".plots": ["plot_run"],
    ".progress": ["progress"],
    ".timing": ["Timer"],
}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
