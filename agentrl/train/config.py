"""The trainer's settings: optimisation and loss, shared by the torch and the Megatron backends.

Imported without torch (``train.py --help`` reads it); :mod:`agentrl.train.base` holds the trainer
protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal


@dataclass
class TrainConfig:
    """Optimisation and loss settings. Field docs become ``--help`` text."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--policy-loss": "policy_loss", "--eps-clip": "eps_clip", "--eps-clip-high": "eps_clip_high",
        "--eps-clip-c": "eps_clip_c", "--loss-aggregation": "loss_aggregation", "--use-kl-loss": "use_kl_loss",
        "--kl-loss-coef": "kl_loss_coef", "--kl-loss-type": "kl_loss_type", "--entropy-coef": "entropy_coef",
        "--use-tis": "use_tis", "--tis-cap": "tis_cap",
        "--lr": "lr", "--min-lr": "min_lr", "--lr-warmup-steps": "lr_warmup_steps",
        "--lr-decay-style": "lr_decay_style", "--lr-decay-steps": "lr_decay_steps", "--weight-decay": "weight_decay",
        "--adam-beta1": "adam_beta1", "--adam-beta2": "adam_beta2", "--adam-eps": "adam_eps",
        "--clip-grad": "clip_grad", "--max-tokens-per-gpu": "max_tokens_per_gpu",
        "--gradient-checkpointing": "gradient_checkpointing", "--lora-rank": "lora_rank", "--lora-alpha": "lora_alpha",
        "--ref-on-cpu": "ref_on_cpu", "--critic-lr": "critic_lr", "--value-clip": "value_clip",
    }

    lr: float = 1e-6
    """Peak learning rate of AdamW."""
    min_lr: float = 0.0
    """Final learning rate of the cosine decay."""
    lr_warmup_steps: int = 0
    """Optimiser steps of linear warm-up from 0."""
    lr_decay_style: Literal["constant", "cosine", "linear"] = "constant"
    """How the learning rate decays after warm-up."""
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
    max_length_norm: float | None = field(default=None, metadata={"derived": True})
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
    rollout_temperature: float = field(default=1.0, metadata={"derived": True})
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
    use_critic: bool = field(default=False, metadata={"derived": True})
    """Train a value model (set for the gae estimator)."""
    seed: int = field(default=0, metadata={"derived": True})
    """Seed of parameter initialisation (LoRA, value head) and shuffling."""

    def problems(self) -> list[str]:
        """Settings that cannot work, each naming its flag (the loss settings are checked where the
        objective is built, :meth:`agentrl.algo.ObjectiveConfig.from_train_config`)."""
        out = []
        for flag, value, low in (("--max-tokens-per-gpu", self.max_tokens_per_gpu, 1),
                                 ("--lr-warmup-steps", self.lr_warmup_steps, 0), ("--lr", self.lr, 0),
                                 ("--min-lr", self.min_lr, 0), ("--weight-decay", self.weight_decay, 0),
                                 ("--clip-grad", self.clip_grad, 0), ("--critic-lr", self.critic_lr, 0),
                                 ("--lora-rank", self.lora_rank, 0), ("--entropy-coef", self.entropy_coef, 0),
                                 ("--kl-loss-coef", self.kl_loss_coef, 0), ("--adam-eps", self.adam_eps, 0),
                                 ("--lora-alpha", self.lora_alpha, 1)):  # alpha 0 scales the adapter to nothing
            if value is None or not value >= low:
                out.append(f"{flag} must be >= {low}; got {value}")
        for flag, value in (("--adam-beta1", self.adam_beta1), ("--adam-beta2", self.adam_beta2)):
            if value is None or not 0 <= value < 1:  # what torch.optim.AdamW accepts, said before the model loads
                out.append(f"{flag} must be in [0, 1); got {value}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            out.append(f"--lr-decay-steps must be >= 1; got {self.lr_decay_steps}")
        if self.use_kl_loss and self.kl_loss_coef == 0:
            out.append("--use-kl-loss is on but --kl-loss-coef is 0: set a coefficient (e.g. 0.001) or drop --use-kl-loss")
        return out
