"""Micro-batches through megatron-core's pipeline schedule, and the reductions around it.

``run_schedule`` drives ``get_forward_backward_func()`` (no pipelining, or 1F1B when the
pipeline has several stages): every stage consumes the same list of micro-batches; on the last
stage ``loss_of(mb, idx, inputs, output)`` turns the model output into ``(loss, metrics)``.
The loss is returned to the schedule as ``(loss, 1, metrics)`` with
``calculate_per_token_loss`` set on the model config, so megatron-core neither divides it by
the number of micro-batches nor averages gradients over data-parallel ranks: the losses are
already divided by the global denominator of the optimiser step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from agentrl.algo.objective import merge_metric_parts
from agentrl.train.megatron._compat import require_megatron
from agentrl.train.megatron.parallel import ParallelLayout

require_megatron()

from megatron.core import parallel_state as ps  # noqa: E402

LossOf = Callable[[Any, list[int], Any, Tensor], tuple[Tensor, dict[str, float]]]
"""``(micro-batch, its sample indices, ModelInputs, model output) -> (loss, metrics)``."""


def run_schedule(model: torch.nn.Module, items: Sequence[tuple[Any, list[int], Any]], loss_of: LossOf, *,
                 forward_only: bool) -> list[dict[str, float]]:
    """Forward (and backward unless ``forward_only``) over ``items`` = ``(mb, idx, inputs)``;
    the metrics of each micro-batch (last pipeline stage; empty elsewhere)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not items:
        return []

    def forward_step(data_iterator, module):
        mb, idx, inputs = next(data_iterator)
        output = module(inputs.input_ids, None, None, packed_seq_params=inputs.packed_seq_params())
        return output, functools.partial(_loss_func, loss_of, mb, idx, inputs)

    longest = max(inputs.input_ids.shape[1] for _, _, inputs in items)
    rows = max(inputs.input_ids.shape[0] for _, _, inputs in items)
    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(items), model=[model],
        num_microbatches=len(items), seq_length=longest, micro_batch_size=rows, forward_only=forward_only)


def _loss_func(loss_of: LossOf, mb, idx, inputs, output):
    """The schedule's loss function: (loss, token count, metrics); see ``forward_step_calc_loss``."""
    loss, metrics = loss_of(mb, idx, inputs, output)
    return loss, torch.tensor(1, dtype=torch.int, device=loss.device), metrics


def combine_metrics(per_mb: Sequence[dict[str, float]], layout: ParallelLayout | None) -> dict[str, float]:
    """Add up micro-batch metric parts (max / min for ``*_max`` / ``*_min``) over micro-batches and
    data-parallel ranks; with pipelining, the last stage's result is sent to every stage."""
    local = merge_metric_parts(per_mb)
    if layout is None:
        return local
    if layout.data_parallel > 1:
        gathered: list[dict[str, float]] = [{} for _ in range(layout.data_parallel)]
        torch.distributed.all_gather_object(gathered, local, group=ps.get_data_parallel_group())
        local = combine_metrics(gathered, None)
    if layout.pipeline_parallel > 1:
        group = ps.get_pipeline_model_parallel_group()
        box = [local]
        torch.distributed.broadcast_object_list(box, src=torch.distributed.get_process_group_ranks(group)[-1],
                                                group=group)
        local = box[0]
    return local


def all_reduce_data_parallel(t: Tensor, layout: ParallelLayout) -> None:
    """Sum ``t`` over data-parallel ranks, in place (rows filled by disjoint ranks)."""
    if layout.data_parallel > 1:
        torch.distributed.all_reduce(t, group=ps.get_data_parallel_group())


def broadcast_from_last_stage(t: Tensor, layout: ParallelLayout) -> None:
    """Copy the last pipeline stage's ``t`` to every stage, in place."""
    if layout.pipeline_parallel > 1:
        group = ps.get_pipeline_model_parallel_group()
        torch.distributed.broadcast(t, src=torch.distributed.get_process_group_ranks(group)[-1], group=group)
