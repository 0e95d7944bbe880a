"""Held-out evaluation: the training episode loop, unbiased pass@k, pass^k, maj@k, reports."""

from typing import TYPE_CHECKING

from agentrl.utils.lazy import lazy_package

if TYPE_CHECKING:
    from agentrl.eval.metrics import (maj_at_k, pass_at_k, pass_hat_k)
    from agentrl.eval.runner import (EvalConfig, EvalTask, evaluate, task_metrics)

MODULES = {
    ".metrics": ["maj_at_k", "pass_at_k", "pass_hat_k"],
    ".runner": ["EvalConfig", "EvalTask", "evaluate", "task_metrics"],
}
__all__ = sorted(n for names in MODULES.values() for n in names)
lazy_package(__name__, MODULES)
