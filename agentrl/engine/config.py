"""Which inference engine a run uses, where, and how (imported without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from agentrl.engine.embedded.config import EngineConfig

ENGINE_DTYPES = ("float32", "bfloat16", "float16")
TRAINING_BATCH_SIZE = 64
"""A training run's embedded engine decodes this many sequences together unless --engine-max-batch-size says
otherwise (a rollout's episodes and a held-out set's prompts fill it; serve and eval take the engine's own default)."""


@dataclass
class EngineSettings:
    """Engine: embedded in the process, or SGLang servers."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--engine": "kind", "--engine-device": "device", "--engine-dtype": "dtype", "--colocate": "colocate",
        "--sglang-url": "sglang_url",
    }

    kind: Literal["embedded", "sglang"] = "embedded"
    """embedded (in-process) | sglang (servers given by --sglang-url or launched)."""
    device: str | None = None
    """Device of the embedded engine: cpu, cuda or cuda:N (default: the trainer's). cuda:1 generates on a second GPU
    while the trainer works on the first (weights are copied across at each sync); with --use-ray the placement
    decides."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Dtype of the embedded engine's weights (default: float32 on the CPU, bfloat16 on CUDA). bfloat16 on a CPU with AVX-512 BF16
    or AMX generates 1.1-1.3x faster than float32 (on a CPU without, slower); rollout logprobs then differ from a
    float32 trainer's by more (add --use-tis)."""
    colocate: bool = True
    """Engine and trainer share devices; the engine frees its KV cache while training."""
    sglang_url: list[str] = field(default_factory=list)
    """SGLang server or router URLs (SGLang, sglang-router or agentrl serve). With --engine sglang; none: launch
    servers."""
    sglang_args: list[str] = field(default_factory=list, metadata={"derived": True})
    """--sglang-* flags, passed through to sglang.launch_server without the prefix."""
    embedded: EngineConfig = field(default_factory=lambda: EngineConfig(max_batch_size=TRAINING_BATCH_SIZE))

    def problems(self) -> list[str]:
        out = self.embedded.problems()
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            out.append(f"--engine-device must be cpu, cuda or cuda:N; got {self.device!r}")
        if self.kind == "sglang":
            if self.dtype is not None:
                out.append("--engine-dtype sets the embedded engine's weights; SGLang servers take --sglang-dtype")
            if self.device is not None:
                out.append("--engine-device places the in-process embedded engine; SGLang servers are placed by "
                           "their own launch (--sglang-* flags) or by --use-ray")
        elif self.sglang_url:
            out.append("--sglang-url names SGLang servers: add --engine sglang (or drop --sglang-url)")
        return out
