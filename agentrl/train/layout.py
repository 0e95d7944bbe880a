"""Where the trainer's ranks go, and whether a layout can work, decided before anything loads.

A trainer of ``world = --actor-num-nodes x --actor-num-gpus-per-node`` ranks is split into
tensor (TP), pipeline (PP) and context (CP) parallel groups; the rest is data parallel:
``DP = world / (TP x PP x CP)``. The torch trainer shards with FSDP2 over all ranks (DP = world).
:func:`layout_problems` reports each inconsistent layout as one line, reading only the model's
``config.json`` (no weights): ranks not divisible by TP x PP x CP, heads or KV heads not divisible
by TP, layers not divisible by PP, a global batch not divisible by DP (x the micro-batch size, 1:
micro-batches are cut by ``--max-tokens-per-gpu``), context parallelism (none of the attention
backends shipped splits a sequence over ranks), TP / PP with the torch trainer. Whether the
cluster has as many GPUs as ranks is checked when the run joins it
(:func:`agentrl.cluster.trainer_group.check_cluster`).

Example::

    >>> layout = TrainerLayout("megatron", world=8, tp=2)
    >>> layout.dp, layout.describe()
    (4, 'megatron trainer: 8 ranks (1 node x 8), TP 2 x PP 1 x CP 1 x DP 4')
    >>> dims = ModelDims(num_layers=28, num_heads=28, num_kv_heads=4)
    >>> layout_problems(TrainerLayout("megatron", world=8, tp=8), dims, global_batch_size=64)  # doctest: +NORMALIZE_WHITESPACE
    ['--tensor-model-parallel-size 8 must divide the attention heads (28) and the KV heads (4) of the model']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainerLayout:
    """Sizes of the trainer's parallel groups."""

    trainer: str
    """torch | megatron."""
    world: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    nodes: int = 1
    sequence_parallel: bool = False

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def dp(self) -> int:
        """Data-parallel size (0 when the model-parallel size does not divide the ranks)."""
        return self.world // self.model_parallel if self.world % self.model_parallel == 0 else 0

    @classmethod
    def of(cls, cfg: Any) -> "TrainerLayout":
        """The layout a :class:`~agentrl.config.RunConfig` asks for."""
        m = cfg.megatron
        return cls(cfg.trainer, cfg.group.world_size, tp=m.tensor_parallel,
                   pp=m.pipeline_parallel, cp=m.context_parallel, nodes=cfg.group.actor_num_nodes,
                   sequence_parallel=m.sequence_parallel)

    def describe(self) -> str:
        per_node = self.world // max(self.nodes, 1)
        return (f"{self.trainer} trainer: {self.world} rank{'s' * (self.world != 1)} ({self.nodes} "
                f"node{'s' * (self.nodes != 1)} x {per_node}), TP {self.tp} x PP {self.pp} x CP {self.cp} x DP {self.dp}")


@dataclass(frozen=True)
class ModelDims:
    """What the layout checks read from a model's config."""

    num_layers: int
    num_heads: int
    num_kv_heads: int


def layout_problems(layout: TrainerLayout, dims: ModelDims | None, global_batch_size: int | None) -> list[str]:
    """Every reason ``layout`` cannot train this model, one line each (empty: it can)."""
    out = []
    flags = ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size")
    ranks = (f"{layout.world} trainer rank(s) (--actor-num-nodes {layout.nodes} x --actor-num-gpus-per-node "
             f"{layout.world // max(layout.nodes, 1)})")
    if layout.trainer == "torch" and (layout.tp > 1 or layout.pp > 1):
        out.append(f"{flags[0]} {layout.tp} x {flags[1]} {layout.pp}: the torch trainer shards with FSDP2 over all "
                   "ranks (data parallel = ranks); tensor and pipeline parallelism need --trainer megatron")
        return out
    if layout.cp > 1:
        out.append(f"{flags[2]} {layout.cp}: the attention backends agentrl ships (sdpa, local) attend over whole "
                   "sequences and cannot split one over ranks; use --sequence-parallel with tensor parallelism for long "
                   "sequences, or --context-parallel-size 1")
    if layout.world % layout.model_parallel:
        out.append(f"{flags[0]} {layout.tp} x {flags[1]} {layout.pp} x {flags[2]} {layout.cp} = {layout.model_parallel} "
                   f"does not divide the {ranks}; e.g. --actor-num-gpus-per-node {layout.model_parallel * layout.nodes}")
    if dims is not None and layout.trainer == "megatron":
        if dims.num_heads % layout.tp or dims.num_kv_heads % layout.tp:
            out.append(f"{flags[0]} {layout.tp} must divide the attention heads ({dims.num_heads}) and the KV heads "
                       f"({dims.num_kv_heads}) of the model")
        if dims.num_layers % layout.pp:
            out.append(f"{flags[1]} {layout.pp} must divide the layers ({dims.num_layers}) of the model")
    if layout.dp and global_batch_size is not None and global_batch_size % layout.dp:
        out.append(f"--global-batch-size {global_batch_size} must be divisible by the data-parallel size {layout.dp} "
                   f"x the micro-batch size 1 (micro-batches are cut by --max-tokens-per-gpu)")
    return out


def model_config(model_path: str) -> dict[str, Any] | None:
    """The ``config.json`` of ``model_path`` as a dict, read without loading weights or touching the network:
    a local folder, an alias (the tiny models' shapes, or a cached alias folder), else None (a hub id not
    downloaded yet: the trainer checks its shape when it builds the model)."""
    from agentrl.models import _TINY_ALIASES, cache_dir

    name = str(model_path).lower()
    if name in _TINY_ALIASES:
        from agentrl.testing.tiny import TINY_SHAPES

        return {"vocab_size": 49152, **TINY_SHAPES[name.removeprefix("tiny-")]}  # SmolLM2's tokenizer
    for folder in (Path(model_path).expanduser(), cache_dir() / "models" / name):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text())
    return None


def model_dims(config: dict[str, Any] | None) -> ModelDims | None:
    """Layers, heads and KV heads of an HF config dict (None when unknown)."""
    if not config or "num_attention_heads" not in config:
        return None
    heads = int(config["num_attention_heads"])
    return ModelDims(num_layers=int(config.get("num_hidden_layers") or config.get("num_layers") or 0),
                     num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads))
