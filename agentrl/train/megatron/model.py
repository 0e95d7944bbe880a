"""A megatron-core ``GPTModel`` built from a Hugging Face Llama / Qwen2 / Qwen3 config.

The mapping (Hugging Face -> ``TransformerConfig``): ``num_key_value_heads`` -> grouped-query
``num_query_groups``; ``head_dim`` -> ``kv_channels``; ``rope_theta`` -> ``rotary_base`` (Llama 3
frequency scaling -> ``rope_scaling``); ``rms_norm_eps`` -> ``layernorm_epsilon``; Qwen2's q/k/v
bias -> ``add_qkv_bias``; Qwen3's per-head q/k RMSNorm -> ``qk_layernorm``;
``tie_word_embeddings`` -> ``share_embeddings_and_output_weights``; SwiGLU MLP ->
``gated_linear_unit`` with SiLU. No dropout (RL fine-tuning).

Tensor / pipeline sizes come from ``megatron.core.parallel_state``, which must be initialised
first (:func:`agentrl.train.megatron.parallel.init_parallel`).

Example::

    >>> from agentrl.testing import tiny_config
    >>> init_parallel()                                               # doctest: +SKIP
    >>> model = build_gpt_model(tiny_config("qwen3"), MegatronModelConfig(dtype="float32"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agentrl.train.megatron._compat import require_megatron
from agentrl.train.megatron.shape import ModelShape

require_megatron()

from megatron.core import parallel_state  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from agentrl.train.megatron.attention import block_spec, resolve_backend  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RECOMPUTE = ("none", "full", "selective")


@dataclass
class MegatronModelConfig:
    """How to build the Megatron model (the architecture itself comes from the HF config)."""

    dtype: str = "bfloat16"
    """Parameter and compute dtype: float32 | bfloat16 | float16."""
    attention: str = "auto"
    """Layer spec: auto (Transformer Engine if installed, else sdpa) | te | sdpa | local."""
    recompute: str = "none"
    """Activation recompute: none | full (whole layers, uniform) | selective (core attention)."""
    recompute_num_layers: int = 1
    """With recompute=full: layers per recompute chunk."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (splits norms/dropout activations across TP ranks)."""
    vocab_multiple: int = 1
    """Pad the vocabulary to a multiple of ``vocab_multiple * tensor_parallel_size``."""
    fusions: bool = False
    """megatron-core's fused SwiGLU and bias-dropout-add, and a compiled RMSNorm (``torch.compile``d on
    first use, and again for new shapes); off by default: eager kernels, no compile time with varying lengths."""

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {RECOMPUTE}; got {self.recompute!r}")
        resolve_backend(self.attention)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def padded_vocab_size(vocab_size: int, tp_size: int, multiple: int = 1) -> int:
    """Smallest size >= ``vocab_size`` divisible by ``multiple * tp_size``."""
    step = max(1, multiple) * tp_size
    return -(-vocab_size // step) * step


def transformer_config(shape: ModelShape, options: MegatronModelConfig | None = None,
                       **overrides: Any) -> TransformerConfig:
    """The ``TransformerConfig`` for ``shape`` under the current ``parallel_state``."""
    options = options or MegatronModelConfig()
    options.validate()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if shape.num_query_groups % tp or shape.num_attention_heads % tp:
        raise ValueError(
            f"tensor parallel size {tp} must divide the attention heads ({shape.num_attention_heads}) "
            f"and KV heads ({shape.num_query_groups})"
        )
    if shape.num_layers % pp:
        raise ValueError(f"pipeline parallel size {pp} must divide num_layers ({shape.num_layers})")
    cuda = torch.cuda.is_available()
    fusions = options.fusions
    dtype = options.torch_dtype
    kw: dict[str, Any] = dict(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.head_dim,
        ffn_hidden_size=shape.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        qk_layernorm=shape.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=shape.init_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=options.sequence_parallel and tp > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not cuda,
        variable_seq_lengths=True,
        moe_token_dispatcher_type="alltoall",  # dense model; only to allow variable_seq_lengths
        bias_activation_fusion=fusions,
        bias_dropout_fusion=fusions,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        attention_softmax_in_fp32=True,
    )
    if options.recompute == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform",
                  recompute_num_layers=options.recompute_num_layers)
    elif options.recompute == "selective":
        kw.update(recompute_granularity="selective")
    kw.update(overrides)
    return TransformerConfig(**kw)


def build_gpt_model(
    hf_config: Any,
    options: MegatronModelConfig | None = None,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    **config_overrides: Any,
) -> GPTModel:
    """Build this rank's ``GPTModel`` (its TP shard and PP stage) with random weights.

    Load real weights with :func:`agentrl.train.megatron.convert.load_hf_weights`.
    ``pre_process``/``post_process`` default to this rank being the first/last pipeline stage.
    """
    options = options or MegatronModelConfig()
    shape = hf_config if isinstance(hf_config, ModelShape) else ModelShape.from_hf(hf_config)
    config = transformer_config(shape, options, **config_overrides)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    model = GPTModel(
        config,
        block_spec(config, options.attention, vp_stage=vp_stage),
        vocab_size=padded_vocab_size(shape.vocab_size, tp, options.vocab_multiple),
        max_sequence_length=shape.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=shape.rope_base,
        rope_scaling=shape.rope_scaling_factor is not None,
        rope_scaling_factor=shape.rope_scaling_factor or 8.0,
        vp_stage=vp_stage,
    )
    if torch.cuda.is_available():
        model = model.cuda(torch.cuda.current_device())
    return model
