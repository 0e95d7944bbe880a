"""The trainer contract and its settings, shared by the torch and the Megatron backends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from agentrl.train.batch import RolloutBatch


@dataclass
class TrainConfig:
    """Optimisation and loss settings. Field docs become ``--help`` text."""

    lr: float = 1e-6
    """Peak learning rate of AdamW."""
    min_lr: float = 0.0
    """Final learning rate of the cosine decay."""
    lr_warmup_steps: int = 0
    """Optimiser steps of linear warm-up from 0."""
    lr_decay_style: str = "constant"
    """constant | cosine | linear (after warm-up)."""
    lr_decay_steps: int | None = None
    """Optimiser steps over which to decay (default: the whole run)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.98
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Gradient-norm clipping (0 disables it)."""
    max_tokens_per_gpu: int = 8192
    """Padded tokens per micro-batch; micro-batches accumulate to one optimiser step."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    policy_loss: str = "ppo"
    """ppo | gspo | cispo (see agentrl.algo.POLICY_LOSSES)."""
    eps_clip: float = 0.2
    """PPO clip range: the ratio is clipped below at 1 - eps_clip (and above at 1 + eps_clip_high)."""
    eps_clip_high: float | None = None
    """Upper clip range (DAPO clip-higher, e.g. 0.28); default eps_clip."""
    eps_clip_c: float | None = None
    """Dual-clip constant (> 1), off by default."""
    loss_aggregation: str = "token_mean"
    """token_mean | seq_mean_token_mean | seq_mean_token_sum_norm."""
    max_length_norm: float | None = None
    """The constant length of seq_mean_token_sum_norm (Dr. GRPO); the run sets it to the context budget."""
    use_kl_loss: bool = False
    """Add a KL penalty to a frozen reference model."""
    kl_loss_coef: float = 0.0
    """Weight of the KL penalty."""
    kl_loss_type: str = "low_var_kl"
    """k1 | k2 | k3 | low_var_kl."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (0: entropy is still logged)."""
    use_tis: bool = False
    """Truncated importance sampling against the rollout logprobs."""
    tis_cap: float = 2.0
    """TIS weights are clamped at this value."""
    rollout_temperature: float = 1.0
    """The engine's sampling temperature; training logits are divided by it so logprobs agree."""
    ref_on_cpu: bool = False
    """Keep the reference model on the CPU (slower KL, less GPU memory)."""
    lora_rank: int = 0
    """LoRA rank (0: full fine-tuning). Needs peft."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / rank)."""
    critic_lr: float = 1e-5
    """Learning rate of the value model (gae)."""
    value_clip: float = 0.2
    """Clip range of the value loss."""
    use_critic: bool = False
    """Train a value model (set for the gae estimator)."""
    seed: int = 0
    """Seed of parameter initialisation (LoRA, value head) and shuffling."""


@runtime_checkable
class Trainer(Protocol):
    """What the training loop needs from a backend."""

    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` logprobs of the response tokens under the current policy (no grad)."""
        ...

    def needs_old_logprobs(self, num_steps: int) -> bool:
        """False when ``train_step`` can take the old logprobs from its own forward pass."""
        ...

    def compute_ref_logprobs(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` logprobs under the frozen reference model."""
        ...

    def compute_values(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` critic values (gae)."""
        ...

    def train_step(self, batch: RolloutBatch, num_steps: int = 1) -> dict[str, float]:
        """``num_steps`` optimiser steps over ``batch`` (with ``advantages`` set); ``train/`` metrics."""
        ...

    def weights(self) -> Iterator[tuple[str, Tensor]]:
        """Hugging Face-named weights for the engine."""
        ...

    def save(self, path: str) -> None: ...

    def load(self, path: str) -> None: ...

    def export_hf(self, path: str) -> None:
        """Write a Hugging Face model folder (loadable by transformers and SGLang)."""
        ...
