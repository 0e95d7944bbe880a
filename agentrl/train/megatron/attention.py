"""Layer specs for the Megatron-core backend: SDPA core attention and an HF-exact RMSNorm.

megatron-core's local layer spec uses ``DotProductAttention``, an unfused softmax attention that
materialises the ``[b, heads, s, s]`` score matrix: slow, and out of memory at a few thousand
tokens. Without Transformer Engine (the usual case on the GPU machines here) this module gives
the layer spec a core attention on :func:`torch.nn.functional.scaled_dot_product_attention`,
which dispatches to flash / memory-efficient kernels on CUDA. When Transformer Engine is
installed, ``backend="auto"`` keeps megatron-core's own Transformer Engine spec.

Covered: causal attention over padded batches (``bshd``), packed sequences (``thd`` through
``PackedSeqParams``: varlen flash attention when torch offers it on CUDA, else one SDPA call per
sequence), grouped-query attention, explicit boolean masks. Not covered: context parallelism,
sliding windows, attention bias, learnable softmax offsets.

Example::

    >>> spec = block_spec(transformer_config, backend="sdpa")      # doctest: +SKIP
    >>> GPTModel(transformer_config, spec, vocab_size, max_len)    # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from agentrl.train.megatron._compat import require_megatron
from agentrl.utils.attention import sdpa_grouped
from agentrl.utils.compile import MaybeCompiled

require_megatron()

from megatron.core import parallel_state  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from megatron.core.transformer.module import MegatronModule  # noqa: E402
from megatron.core.transformer.spec_utils import ModuleSpec  # noqa: E402
from megatron.core.transformer.transformer_block import (  # noqa: E402
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

BACKENDS = ("auto", "te", "sdpa", "local")
"""``te``: megatron-core's Transformer Engine spec; ``sdpa``: this module's spec; ``local``:
megatron-core's unfused local spec (a baseline); ``auto``: ``te`` when installed, else ``sdpa``."""


def have_transformer_engine() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_backend(backend: str) -> str:
    """Turn ``auto`` into ``te`` or ``sdpa``; reject unknown names."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "auto":
        return "te" if have_transformer_engine() else "sdpa"
    if backend == "te" and not have_transformer_engine():
        raise ImportError("attention backend 'te' needs Transformer Engine; use 'sdpa' or install it")
    return backend


class RMSNorm(torch.nn.Module):
    """RMSNorm computed as Hugging Face Llama/Qwen do: normalise in float32, cast, then scale.

    ``y = weight * (x / sqrt(mean(x^2) + eps)).to(x.dtype)`` (Zhang & Sennrich 2019,
    arXiv:1910.07467). Built by megatron-core as ``RMSNorm(config=..., hidden_size=..., eps=...)``.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_: Any) -> None:
        super().__init__()
        self.eps = eps
        # with the other fusions (MegatronModelConfig.fusions): one compiled kernel each way
        self._norm = MaybeCompiled(_hf_rms_norm, enabled=bool(config.bias_activation_fusion))
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype,
                                                    device=_init_device(config)))
        # megatron-core all-reduces grads of params marked sequence_parallel across TP ranks
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))  # noqa: B010 (an attribute torch.nn.Parameter does not declare)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class SDPAttention(MegatronModule):
    """Core attention on ``scaled_dot_product_attention``; a drop-in for ``DotProductAttention``.

    Inputs as megatron-core hands them over: ``query [sq, b, np, hn]``, ``key``/``value``
    ``[sk, b, ng, hn]`` (``np``/``ng`` are this tensor-parallel rank's query heads / KV groups),
    or ``[t, np, hn]`` / ``[t, ng, hn]`` for packed (``thd``) sequences. Output ``[sq, b, np*hn]``
    (``[t, np*hn]`` when packed). ``attention_mask`` follows megatron-core: True = masked out.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
        **_: Any,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism; use Transformer Engine")
        tp_group = getattr(pg_collection, "tp", None)
        tp = tp_group.size() if tp_group is not None else parallel_state.get_tensor_model_parallel_world_size()
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        self.num_heads = config.num_attention_heads // tp
        self.num_groups = (config.num_query_groups or config.num_attention_heads) // tp
        self.head_dim = config.kv_channels
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.use_varlen = True
        """Packed sequences use torch's varlen flash attention where it works."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise NotImplementedError("SDPAttention does not take an attention bias")
        dropout = self.dropout if self.training else 0.0
        if packed_seq_params is not None and getattr(packed_seq_params, "qkv_format", None) == "thd":
            return self._packed(query, key, value, packed_seq_params, dropout)
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        sq, b = query.shape[0], query.shape[1]
        q = query.permute(1, 2, 0, 3)  # [b, np, sq, hn]
        k = key.permute(1, 2, 0, 3)  # [b, ng, sk, hn]
        v = value.permute(1, 2, 0, 3)
        causal = mask_type in (AttnMaskType.causal, getattr(AttnMaskType, "padding_causal", None))
        mask = None
        if attention_mask is not None:
            mask = ~attention_mask.bool()  # SDPA: True = attend
            if causal:
                mask = mask & torch.ones(sq, k.shape[2], dtype=torch.bool, device=q.device).tril()
            causal = False
        out = sdpa_grouped(q, k, v, mask=mask, causal=causal, dropout=dropout, scale=self.scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.num_heads * self.head_dim)

    def _packed(self, query, key, value, params, dropout: float) -> torch.Tensor:
        # query [t, np, hn]; each sequence of the pack attends causally within itself
        cu = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        t = query.shape[0]
        if self.use_varlen and query.is_cuda and dropout == 0.0 and query.dtype in (torch.float16, torch.bfloat16):
            out = _varlen(query, key, value, cu, int(params.max_seqlen_q), self.scale)
            if out is not None:
                return out.reshape(t, self.num_heads * self.head_dim)
            self.use_varlen = False  # remember the failure: per-sequence SDPA from now on
        bounds = cu.tolist()
        outs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end == start:
                continue
            q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, np, len, hn]
            k = key[start:end].transpose(0, 1).unsqueeze(0)
            v = value[start:end].transpose(0, 1).unsqueeze(0)
            o = sdpa_grouped(q, k, v, causal=True, dropout=dropout, scale=self.scale)
            outs.append(o[0].transpose(0, 1))  # [len, np, hn]
        out = torch.cat(outs, dim=0)
        if out.shape[0] < t:  # padding after the last sequence: zeros, never read by the loss
            out = torch.cat([out, out.new_zeros(t - out.shape[0], *out.shape[1:])])
        return out.reshape(t, self.num_heads * self.head_dim)


@functools.cache
def _varlen_kwargs() -> dict[str, Any] | None:
    """Keyword arguments for causal ``varlen_attn`` in this torch build; None if unavailable."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        kw: dict[str, Any] = {"is_causal": True}
    elif "window_size" in params:
        kw = {"window_size": (-1, 0)}
    else:
        return None
    kw["_scale"] = "scale" in params
    kw["_gqa"] = "enable_gqa" in params
    return kw


def _varlen(query, key, value, cu_seqlens, max_len: int, scale: float) -> torch.Tensor | None:
    kw = _varlen_kwargs()
    if kw is None:
        return None
    from torch.nn.attention.varlen import varlen_attn

    kw = dict(kw)
    has_scale, has_gqa = kw.pop("_scale"), kw.pop("_gqa")
    if not has_scale and not math.isclose(scale, 1.0 / math.sqrt(query.shape[-1])):
        return None
    if has_scale:
        kw["scale"] = scale
    if key.shape[1] != query.shape[1]:
        if has_gqa:
            kw["enable_gqa"] = True
        else:
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    cu = cu_seqlens.to(device=query.device, dtype=torch.int32)
    try:
        out = varlen_attn(query, key, value, cu, cu, max_len, max_len, **kw)
        return out[0] if isinstance(out, tuple) else out  # (output, logsumexp) when asked for the latter
    except (RuntimeError, TypeError, NotImplementedError) as err:  # unsupported head dim, dtype...
        warnings.warn(f"varlen attention unavailable ({err}); using one SDPA call per sequence", stacklevel=2)
        return None


def _init_device(config: TransformerConfig) -> torch.device:
    if config.use_cpu_initialization or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _local_layer_spec(config: TransformerConfig) -> ModuleSpec:
    return get_gpt_layer_local_spec(qk_layernorm=bool(config.qk_layernorm), normalization="RMSNorm")


def sdpa_layer_spec(config: TransformerConfig) -> ModuleSpec:
    """megatron-core's local layer spec with SDPA core attention and :class:`RMSNorm` norms."""
    spec = _local_layer_spec(config)
    sub = spec.submodules
    sub.input_layernorm = RMSNorm
    sub.pre_mlp_layernorm = RMSNorm
    attn = sub.self_attention.submodules
    attn.core_attention = SDPAttention
    if config.qk_layernorm:
        attn.q_layernorm = RMSNorm
        attn.k_layernorm = RMSNorm
    return spec


def block_spec(config: TransformerConfig, backend: str = "auto", vp_stage: int | None = None):
    """The decoder spec handed to ``GPTModel`` for ``backend`` (see :data:`BACKENDS`)."""
    backend = resolve_backend(backend)
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=bool(config.qk_layernorm))
    if backend == "local":
        return _local_layer_spec(config)
    layer = sdpa_layer_spec(config)
    # a block spec lists this pipeline stage's layers; megatron-core numbers them from its offset
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=RMSNorm)
