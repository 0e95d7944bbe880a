"""Settings of the Megatron-core trainer (imported without torch or megatron-core)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class MegatronTrainerConfig:
    """Megatron backend (--trainer megatron): parallelism, layer spec, optimizer."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--tensor-model-parallel-size": "tensor_parallel", "--pipeline-model-parallel-size": "pipeline_parallel",
        "--sequence-parallel": "sequence_parallel", "--attention-backend": "attention",
        "--megatron-pack-sequences": "pack_sequences", "--megatron-optimizer": "optimizer",
        "--use-distributed-optimizer": "distributed_optimizer", "--megatron-dtype": "dtype",
        "--recompute-granularity": "recompute", "--make-vocab-size-divisible-by": "vocab_multiple",
        "--megatron-fusions": "fusions", "--context-parallel-size": "context_parallel",
    }

    tensor_parallel: int = 1
    """Tensor-parallel size (must divide the attention and KV heads)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (must divide the layers). Data parallel = world / (TP x PP x CP)."""
    context_parallel: int = 1
    """Context-parallel size: splits each sequence over ranks. Only 1: the attention backends agentrl ships (sdpa,
    local) attend over whole sequences (see agentrl.train.layout)."""
    attention: Literal["auto", "te", "sdpa", "local"] = "auto"
    """Layer spec: auto (Transformer Engine if installed, else sdpa) | te | sdpa | local (see agentrl.train.megatron.attention)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (with TP > 1)."""
    pack_sequences: bool = True
    """Pack micro-batches back to back (thd) instead of padding each sample to the longest."""
    optimizer: Literal["auto", "megatron", "torch"] = "auto"
    """megatron (megatron-core DDP + optimizer) | torch (AdamW, one replica, no pipelining) | auto (megatron on CUDA
    or with data / pipeline parallelism, else torch)."""
    distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (megatron optimizer)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Parameter dtype; default bfloat16 on CUDA, float32 on the CPU."""
    recompute: Literal["none", "full", "selective"] | None = None
    """Activation recompute; default full with --gradient-checkpointing, else none."""
    vocab_multiple: int = 1
    """Pad the vocabulary to a multiple of this times the TP size."""
    fusions: bool = False
    """megatron-core's fused SwiGLU / bias-dropout-add and a compiled RMSNorm (faster; compiles on first use)."""

    def problems(self) -> list[str]:
        out = [f"{flag} must be >= 1; got {value}" for flag, value in (
            ("--tensor-model-parallel-size", self.tensor_parallel),
            ("--pipeline-model-parallel-size", self.pipeline_parallel),
            ("--context-parallel-size", self.context_parallel),
            ("--make-vocab-size-divisible-by", self.vocab_multiple)) if value < 1]
        if self.sequence_parallel and self.tensor_parallel == 1:
            out.append("--sequence-parallel splits activations over tensor-parallel ranks: it needs "
                       "--tensor-model-parallel-size > 1")
        return out
