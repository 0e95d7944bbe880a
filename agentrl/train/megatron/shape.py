"""The shape of a Llama / Qwen2 / Qwen3 model, read from its Hugging Face config.

One typed record with everything the Megatron model builder and the weight converter need;
it imports neither megatron-core nor the model code, so conversion layouts are testable alone.

Example::

    >>> from agentrl.testing import tiny_config
    >>> s = ModelShape.from_hf(tiny_config("qwen2"))
    >>> (s.family, s.num_query_groups, s.qkv_bias, s.qk_norm, s.tie_embeddings)
    ('qwen2', 2, True, False, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3")


class UnsupportedModelError(ValueError):
    """The HF config describes something the Megatron backend cannot build."""


@dataclass(frozen=True)
class ModelShape:
    """Architecture of a dense decoder-only model (Llama family layout)."""

    family: str
    """llama | qwen2 | qwen3 (HF ``model_type``)."""
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    """Key/value heads (grouped-query attention); equals heads for multi-head attention."""
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    tie_embeddings: bool
    qkv_bias: bool
    """Bias on the q/k/v projections (Qwen2 always; Llama/Qwen3 never here)."""
    qk_norm: bool
    """RMSNorm on each query and key head before RoPE (Qwen3)."""
    norm_eps: float
    rope_base: float
    rope_scaling_factor: float | None
    """Llama 3 style RoPE frequency scaling factor, or None."""
    max_position_embeddings: int
    init_std: float = 0.02

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @property
    def num_parameters(self) -> int:
        """Parameter count (embedding and output layer counted once when tied)."""
        h, kv = self.hidden_size, self.num_query_groups * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        attn += 2 * self.head_dim if self.qk_norm else 0
        mlp = 3 * h * self.ffn_hidden_size
        layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + emb + h

    @classmethod
    def from_hf(cls, config: Any) -> "ModelShape":
        """Read a transformers config (``LlamaConfig``, ``Qwen2Config``, ``Qwen3Config``)."""
        family = getattr(config, "model_type", None)
        if family not in FAMILIES:
            raise UnsupportedModelError(
                f"the Megatron backend builds model_type one of {FAMILIES}; got {family!r}. "
                f"Use the torch backend (--trainer torch) for other architectures"
            )
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"expected hidden_act 'silu' (SwiGLU); got {act!r}")
        if getattr(config, "mlp_bias", False):
            raise UnsupportedModelError("mlp_bias=True is not supported by the Megatron backend")
        attention_bias = bool(getattr(config, "attention_bias", False))
        if family in ("llama", "qwen3") and attention_bias:
            raise UnsupportedModelError(
                f"{family} with attention_bias=True puts a bias on o_proj too; megatron-core's "
                f"add_qkv_bias covers q/k/v only. Use the torch backend for this model"
            )
        if getattr(config, "use_sliding_window", False):
            raise UnsupportedModelError("sliding-window attention is not supported by the Megatron backend")
        heads = int(config.num_attention_heads)
        groups = int(getattr(config, "num_key_value_heads", None) or heads)
        if heads % groups:
            raise UnsupportedModelError(f"num_attention_heads ({heads}) must be a multiple of "
                                        f"num_key_value_heads ({groups})")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        base, factor = _rope(config)
        return cls(
            family=family,
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            num_attention_heads=heads,
            num_query_groups=groups,
            head_dim=int(head_dim),
            ffn_hidden_size=int(config.intermediate_size),
            vocab_size=int(config.vocab_size),
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=family == "qwen2",
            qk_norm=family == "qwen3",
            norm_eps=float(config.rms_norm_eps),
            rope_base=base,
            rope_scaling_factor=factor,
            max_position_embeddings=int(getattr(config, "max_position_embeddings", 4096)),
            init_std=float(getattr(config, "initializer_range", 0.02)),
        )


# Llama 3 RoPE scaling constants that megatron-core hard-codes (rotary_pos_embedding._apply_scaling)
_MEGATRON_LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _rope(config: Any) -> tuple[float, float | None]:
    """(rope_theta, llama3 scaling factor or None) from transformers 4 or 5 configs."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None)
    if legacy and not params.get("rope_type"):
        params.update(legacy)
    base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type == "default":
        return float(base), None
    if rope_type == "llama3":
        for key, want in _MEGATRON_LLAMA3.items():
            if float(params.get(key, want)) != want:
                raise UnsupportedModelError(
                    f"llama3 RoPE scaling with {key}={params[key]} is not supported; megatron-core "
                    f"fixes it at {want}"
                )
        return float(base), float(params["factor"])
    raise UnsupportedModelError(f"RoPE type {rope_type!r} is not supported; expected 'default' or 'llama3'")
