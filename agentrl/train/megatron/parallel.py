"""Process groups for the Megatron backend: ``torch.distributed`` + megatron-core ``parallel_state``.

Launched by ``torchrun`` the usual environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) are used; in a plain process (notebook, the
embedded single-process stack, CPU tests) a world of one is created in memory. NCCL on CUDA,
gloo on CPU. Data parallel size = world size / (tensor x pipeline).

Example::

    >>> layout = init_parallel(tensor_parallel=1, pipeline_parallel=1)   # doctest: +SKIP
    >>> layout.data_parallel                                              # doctest: +SKIP
    1
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agentrl.train.megatron._compat import require_megatron

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits: sizes and ranks of the tensor/pipeline/data parallel groups."""

    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    world_size: int
    rank: int

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pipeline_parallel - 1


def init_parallel(tensor_parallel: int = 1, pipeline_parallel: int = 1, *, seed: int = 1234,
                  backend: str | None = None) -> ParallelLayout:
    """Initialise ``torch.distributed`` (if needed) and megatron-core's model-parallel groups.

    Calling it again with the same sizes is a no-op; with other sizes it rebuilds the groups.
    """
    require_megatron()
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel as mtp

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
        else:  # a world of one, no network
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        log.info("torch.distributed: %s, world size %d", backend, dist.get_world_size())
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(
            f"world size {world} is not divisible by tensor_parallel x pipeline_parallel = "
            f"{tensor_parallel} x {pipeline_parallel}"
        )
    if ps.model_parallel_is_initialized():
        same = (ps.get_tensor_model_parallel_world_size() == tensor_parallel
                and ps.get_pipeline_model_parallel_world_size() == pipeline_parallel)
        if not same:
            ps.destroy_model_parallel()
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                     pipeline_model_parallel_size=pipeline_parallel)
        if torch.cuda.is_available():
            mtp.model_parallel_cuda_manual_seed(seed)
        torch.manual_seed(seed)
    return current_layout()


def current_layout() -> ParallelLayout:
    from megatron.core import parallel_state as ps

    return ParallelLayout(
        tensor_parallel=ps.get_tensor_model_parallel_world_size(),
        pipeline_parallel=ps.get_pipeline_model_parallel_world_size(),
        data_parallel=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
    )


def destroy_parallel() -> None:
    """Tear down megatron-core's groups and the default process group."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
