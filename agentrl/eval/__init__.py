"""Held-out evaluation: the training episode loop, unbiased pass@k, pass^k, maj@k, reports."""

from agentrl.eval.metrics import maj_at_k, pass_at_k, pass_hat_k
from agentrl.eval.runner import EvalConfig, EvalTask, evaluate, task_metrics

__all__ = ["EvalConfig", "EvalTask", "evaluate", "maj_at_k", "pass_at_k", "pass_hat_k", "task_metrics"]
