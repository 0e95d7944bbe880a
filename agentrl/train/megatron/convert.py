"""Weight conversion between Hugging Face (Llama / Qwen2 / Qwen3) and megatron-core ``GPTModel``.

Layouts (``np`` query heads, ``ng`` KV groups, ``d`` head dim, ``h`` hidden, ``f`` ffn):

* ``linear_qkv.weight [ng * (np/ng + 2) * d, h]``: for each KV group its ``np/ng`` query heads,
  then its key head, then its value head (Megatron's grouped layout). Tensor parallelism splits
  along dim 0 into ``tp`` equal parts, which are whole groups. The Qwen2 bias follows the same
  layout.
* ``linear_fc1.weight [2f, h]`` = ``[gate; up]`` *per tensor-parallel rank*: rank r holds
  ``[gate_r; up_r]``, so a TP=2 shard is not a slice of the TP=1 tensor.
* column-parallel (dim 0): ``word_embeddings``, ``output_layer`` (vocabulary, zero-padded to a
  multiple of TP); row-parallel (dim 1): ``linear_proj``, ``linear_fc2``; norms are replicated.

Every public function takes a :class:`~agentrl.train.megatron.shape.ModelShape`. The functions
that touch a model work on this rank's shard and stage; :func:`export_hf_weights` gathers the
tensor-parallel shards (a collective: every TP rank of a stage must call it) and, with
``gather_pipeline=True``, broadcasts every stage's tensors to all pipeline ranks.

Example::

    >>> load_hf_weights(model, shape, "/path/to/hf_folder")             # doctest: +SKIP
    >>> hf = dict(export_hf_weights(model, shape))                      # doctest: +SKIP
    >>> save_hf_checkpoint(model, shape, "/tmp/out", hf_config=config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from agentrl.train.megatron.shape import ModelShape

log = logging.getLogger(__name__)

KINDS = ("replicated", "column", "row", "qkv", "fc1", "vocab")


class WeightConversionError(ValueError):
    """A checkpoint that does not fit the model (missing, unexpected or mis-shaped tensors)."""


# -- pure layout functions ---------------------------------------------------------------------
def qkv_to_megatron(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """HF ``q [np*d, ...]``, ``k``/``v`` ``[ng*d, ...]`` -> Megatron grouped ``[ng*(np/ng+2)*d, ...]``."""
    ng, d, per = shape.num_query_groups, shape.head_dim, shape.heads_per_group
    rest = q.shape[1:]
    qg = q.reshape(ng, per * d, *rest)
    kg = k.reshape(ng, d, *rest)
    vg = v.reshape(ng, d, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(ng * (per + 2) * d, *rest)


def qkv_from_megatron(fused: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`qkv_to_megatron`."""
    ng, d, per = shape.num_query_groups, shape.head_dim, shape.heads_per_group
    rest = fused.shape[1:]
    g = fused.reshape(ng, (per + 2) * d, *rest)
    q, k, v = torch.split(g, [per * d, d, d], dim=1)
    return (q.reshape(ng * per * d, *rest).contiguous(), k.reshape(ng * d, *rest).contiguous(),
            v.reshape(ng * d, *rest).contiguous())


def shard(full: torch.Tensor, kind: str, tp_size: int, tp_rank: int, padded_vocab: int | None = None) -> torch.Tensor:
    """This rank's piece of a full (TP=1 layout) Megatron tensor."""
    if kind == "replicated" or tp_size == 1 and kind != "vocab":
        return full
    if kind in ("column", "qkv"):
        return full.chunk(tp_size, dim=0)[tp_rank]
    if kind == "row":
        return full.chunk(tp_size, dim=1)[tp_rank]
    if kind == "fc1":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]])
    if kind == "vocab":
        padded = padded_vocab or full.shape[0]
        if padded > full.shape[0]:
            full = torch.cat([full, full.new_zeros(padded - full.shape[0], *full.shape[1:])])
        return full.chunk(tp_size, dim=0)[tp_rank]
    raise ValueError(f"unknown parallel kind {kind!r}; expected one of {KINDS}")


def unshard(shards: list[torch.Tensor], kind: str, vocab_size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`shard`: the full TP=1 tensor from every rank's piece (vocab padding cut)."""
    if kind == "replicated" or len(shards) == 1 and kind not in ("vocab", "fc1"):
        return shards[0]
    if kind in ("column", "qkv"):
        return torch.cat(shards, dim=0)
    if kind == "row":
        return torch.cat(shards, dim=1)
    if kind == "fc1":
        pairs = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([torch.cat([g for g, _ in pairs]), torch.cat([u for _, u in pairs])])
    if kind == "vocab":
        full = torch.cat(shards, dim=0)
        return full[:vocab_size] if vocab_size is not None else full
    raise ValueError(f"unknown parallel kind {kind!r}; expected one of {KINDS}")


# -- the name map ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamMap:
    """One Megatron parameter and the HF tensor(s) it is made of."""

    megatron: str
    """Name inside ``GPTModel`` (TP=1 layout), e.g. ``decoder.layers.0.mlp.linear_fc1.weight``."""
    hf: tuple[str, ...]
    kind: str
    """How it is split across tensor-parallel ranks (see :data:`KINDS`)."""
    layer: int | None = None
    """Global layer index, None for embedding / final norm / output layer."""

    def to_megatron(self, tensors: list[torch.Tensor], shape: ModelShape) -> torch.Tensor:
        if self.kind == "qkv":
            q, k, v = tensors
            return qkv_to_megatron(q, k, v, shape)
        if self.kind == "fc1":
            return torch.cat(tensors, dim=0)
        return tensors[0]

    def to_hf(self, full: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, ...]:
        if self.kind == "qkv":
            return qkv_from_megatron(full, shape)
        if self.kind == "fc1":
            return tuple(t.contiguous() for t in full.chunk(2, dim=0))
        return (full,)


def layer_maps(shape: ModelShape, layer: int, local_index: int | None = None,
               fused_norms: bool = False) -> list[ParamMap]:
    """The parameters of global layer ``layer`` (named by ``local_index`` within its stage).

    ``fused_norms``: Transformer Engine's spec keeps the pre-attention / pre-MLP norms inside
    ``linear_qkv`` / ``linear_fc1`` (``layer_norm_weight``).
    """
    j = layer if local_index is None else local_index
    m, h = f"decoder.layers.{j}.", f"model.layers.{layer}."
    in_norm = "self_attention.linear_qkv.layer_norm_weight" if fused_norms else "input_layernorm.weight"
    mlp_norm = "mlp.linear_fc1.layer_norm_weight" if fused_norms else "pre_mlp_layernorm.weight"
    attn = h + "self_attn."
    maps = [
        ParamMap(m + in_norm, (h + "input_layernorm.weight",), "replicated", layer),
        ParamMap(m + "self_attention.linear_qkv.weight",
                 (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"), "qkv", layer),
        ParamMap(m + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), "row", layer),
        ParamMap(m + mlp_norm, (h + "post_attention_layernorm.weight",), "replicated", layer),
        ParamMap(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), "fc1", layer),
        ParamMap(m + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",), "row", layer),
    ]
    if shape.qkv_bias:
        maps.append(ParamMap(m + "self_attention.linear_qkv.bias",
                             (attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"), "qkv", layer))
    if shape.qk_norm:
        maps.append(ParamMap(m + "self_attention.q_layernorm.weight", (attn + "q_norm.weight",), "replicated", layer))
        maps.append(ParamMap(m + "self_attention.k_layernorm.weight", (attn + "k_norm.weight",), "replicated", layer))
    return maps


def param_maps(shape: ModelShape, *, layers: Iterable[tuple[int, int]] | None = None,
               pre_process: bool = True, post_process: bool = True,
               fused_norms: bool = False) -> list[ParamMap]:
    """All parameters of one pipeline stage. ``layers``: (global, local) indices of its layers."""
    if layers is None:
        layers = [(i, i) for i in range(shape.num_layers)]
    maps: list[ParamMap] = []
    if pre_process:
        maps.append(ParamMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"))
    for g, j in layers:
        maps.extend(layer_maps(shape, g, j, fused_norms))
    if post_process:
        maps.append(ParamMap("decoder.final_layernorm.weight", ("model.norm.weight",), "replicated"))
        if not shape.tie_embeddings:
            maps.append(ParamMap("output_layer.weight", ("lm_head.weight",), "vocab"))
        elif not pre_process:  # tied, last stage of PP>1: a copy of the embedding
            maps.append(ParamMap("output_layer.weight", ("model.embed_tokens.weight",), "vocab"))
    return maps


def hf_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the model and its shape (``lm_head`` only when untied)."""
    h, d, f = shape.hidden_size, shape.head_dim, shape.ffn_hidden_size
    q, kv = shape.num_attention_heads * d, shape.num_query_groups * d
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab_size, h)}
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        })
        if shape.qkv_bias:
            out.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)})
        if shape.qk_norm:
            out.update({p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)})
    out["model.norm.weight"] = (h,)
    if not shape.tie_embeddings:
        out["lm_head.weight"] = (shape.vocab_size, h)
    return out


# -- models ----------------------------------------------------------------------------------
def local_param_maps(model: torch.nn.Module, shape: ModelShape) -> list[ParamMap]:
    """The :class:`ParamMap` of every parameter this rank's model holds."""
    inner = unwrap(model)
    layers = [(layer.layer_number - 1, j) for j, layer in enumerate(inner.decoder.layers)]
    names = set(inner.state_dict())
    fused = any(n.endswith("linear_qkv.layer_norm_weight") for n in names)
    maps = param_maps(shape, layers=layers, pre_process=inner.pre_process,
                      post_process=inner.post_process, fused_norms=fused)
    return [m for m in maps if m.megatron in names]


def load_hf_weights(model: torch.nn.Module, shape: ModelShape,
                    source: str | Path | Mapping[str, torch.Tensor], *,
                    skip_prefixes: tuple[str, ...] = ()) -> None:
    """Copy HF weights (a folder of safetensors, or a name -> tensor mapping) into this rank's shard.

    Megatron parameters whose names start with one of ``skip_prefixes`` are left as they are
    (e.g. a critic's value head).
    """
    from megatron.core import parallel_state as ps

    inner = unwrap(model)
    get = _tensor_source(source)
    expected = hf_shapes(shape)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    params = {n: p for n, p in inner.named_parameters() if not n.startswith(skip_prefixes)}
    maps = [m for m in local_param_maps(inner, shape) if m.megatron in params]
    covered = {m.megatron for m in maps}
    uncovered = sorted(n for n in params if n not in covered)
    if uncovered:
        raise WeightConversionError(f"no HF source for Megatron parameters {uncovered[:5]}")
    with torch.no_grad():
        for m in maps:
            hf = []
            for name in m.hf:
                t = get(name)
                if tuple(t.shape) != expected[name]:
                    raise WeightConversionError(
                        f"{name}: expected shape {expected[name]} for this config; got {tuple(t.shape)}")
                hf.append(t)
            full = m.to_megatron(hf, shape)
            piece = shard(full, m.kind, tp, rank, padded_vocab=params[m.megatron].shape[0] * tp)
            target = params[m.megatron]
            if piece.shape != target.shape:
                raise WeightConversionError(
                    f"{m.megatron}: the model holds {tuple(target.shape)}, the checkpoint gives "
                    f"{tuple(piece.shape)} (tensor parallel {tp})")
            target.copy_(piece.to(dtype=target.dtype, device=target.device))


def export_hf_weights(model: torch.nn.Module, shape: ModelShape, *, gather_pipeline: bool = False,
                      dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor)`` for this stage's parameters, TP shards gathered.

    Collective over the tensor-parallel group (and the pipeline group with ``gather_pipeline``):
    all those ranks must consume the iterator in step. Tensors stay on the model's device.
    """
    from megatron.core import parallel_state as ps

    inner = unwrap(model)
    params = dict(inner.named_parameters())
    tp_group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    maps = local_param_maps(inner, shape)
    if shape.tie_embeddings:  # the output layer is a copy of the embedding: export it once
        maps = [m for m in maps if m.megatron != "output_layer.weight"]
    with torch.no_grad():
        if not gather_pipeline or ps.get_pipeline_model_parallel_world_size() == 1:
            for m in maps:
                yield from _export_one(m, params[m.megatron], shape, tp, tp_group, dtype)
            return
        yield from _export_pipeline(maps, params, shape, tp, tp_group, dtype)


def _export_one(m: ParamMap, param, shape, tp, tp_group, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    local = param.detach()
    if tp > 1 and m.kind != "replicated":
        pieces = [torch.empty_like(local) for _ in range(tp)]
        torch.distributed.all_gather(pieces, local.contiguous(), group=tp_group)
    else:
        pieces = [local]
    full = unshard(pieces, m.kind, vocab_size=shape.vocab_size)
    for name, t in zip(m.hf, m.to_hf(full, shape)):
        yield name, t if dtype is None else t.to(dtype)


def _export_pipeline(maps, params, shape, tp, tp_group, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Every stage's tensors, in HF order, broadcast from their owner stage to all stages."""
    from megatron.core import parallel_state as ps

    pp_group = ps.get_pipeline_model_parallel_group()
    owned = [name for m in maps for name in m.hf]
    everyone: list[list[str]] = [[] for _ in range(ps.get_pipeline_model_parallel_world_size())]
    torch.distributed.all_gather_object(everyone, owned, group=pp_group)
    owner = {name: stage for stage, names in enumerate(everyone) for name in names}
    expected = hf_shapes(shape)
    ref = next(iter(params.values()))
    out_dtype = dtype or ref.dtype
    by_hf = {name: m for m in maps for name in m.hf}
    ranks = torch.distributed.get_process_group_ranks(pp_group)
    pending: dict[str, torch.Tensor] = {}
    for name in expected:
        stage = owner[name]
        if stage == ps.get_pipeline_model_parallel_rank():
            if name not in pending:
                m = by_hf[name]
                pending.update(_export_one(m, params[m.megatron], shape, tp, tp_group, out_dtype))
            t = pending.pop(name).contiguous()
        else:
            t = torch.empty(expected[name], dtype=out_dtype, device=ref.device)
        torch.distributed.broadcast(t, src=ranks[stage], group=pp_group)
        yield name, t


def save_hf_checkpoint(model: torch.nn.Module, shape: ModelShape, path: str | os.PathLike, *,
                       hf_config: Any = None, dtype: torch.dtype | None = None,
                       max_shard_bytes: int = 4 << 30) -> None:
    """Write an HF folder (safetensors + config) from a (possibly sharded) Megatron model.

    Collective over all model-parallel ranks; rank 0 of the data-parallel group 0 writes.
    """
    from safetensors.torch import save_file

    path = Path(path)
    writer = torch.distributed.get_rank() == 0
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in export_hf_weights(model, shape, gather_pipeline=True, dtype=dtype):
        if not writer:
            continue
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().cpu().contiguous()
        size += nbytes
    if not writer:  # the other ranks only took part in the collectives
        return
    path.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        index: dict[str, Any] = {"metadata": {}, "weight_map": {}}
        for i, part in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(part, str(path / fname), metadata={"format": "pt"})
            index["weight_map"].update({n: fname for n in part})
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if hf_config is not None:
        hf_config.save_pretrained(path)
    log.info("wrote HF checkpoint to %s (%d file(s))", path, len(shards))


def unwrap(model: torch.nn.Module) -> Any:
    """The ``GPTModel`` inside DDP / Float16Module wrappers."""
    inner: Any = model
    while hasattr(inner, "module") and not hasattr(inner, "decoder"):
        inner = inner.module
    return inner


def _tensor_source(source: str | Path | Mapping[str, torch.Tensor]) -> Callable[[str], torch.Tensor]:
    """``name -> tensor`` over a mapping or an HF folder's safetensors (read lazily)."""
    if isinstance(source, Mapping):
        state = source

        def get(name: str) -> torch.Tensor:
            if name in state:
                return state[name]
            if name == "lm_head.weight" and "model.embed_tokens.weight" in state:
                raise WeightConversionError("checkpoint is tied (no lm_head.weight) but the config is untied")
            raise WeightConversionError(f"checkpoint has no tensor {name!r}; " + _near(name, state))
        return get
    folder = Path(source)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightConversionError(f"no *.safetensors files in {folder}; expected a Hugging Face model folder")
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            where.update({k: f for k in h.keys()})

    def get_file(name: str) -> torch.Tensor:
        if name not in where:
            raise WeightConversionError(f"{folder} has no tensor {name!r}; " + _near(name, where))
        with safe_open(str(where[name]), framework="pt") as h:
            return h.get_tensor(name)
    return get_file


def _near(name: str, names: Iterable[str]) -> str:
    import difflib

    stem = re.sub(r"\d+", "0", name)
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f"closest: {close}" if close else f"(looked for pattern {stem})"
