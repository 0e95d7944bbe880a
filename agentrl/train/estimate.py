"""Memory per GPU of a trainer layout, from the model's config alone (``train.py --dry-run``).

Four parts, in bytes, for the GPU that holds the most (the first or the last pipeline stage):

* **weights**: the stage's parameters, TP-sharded (norms replicated), in the parameter dtype; the
  torch trainer keeps float32 master shards (``/ world``) plus the gathered compute copy of the
  layers FSDP2 has in flight (two: the current one and the prefetched next);
* **gradients**: Megatron's float32 gradient buffer (``grad_reduce_in_fp32``) for the stage; FSDP2's
  float32 gradient shards;
* **optimiser state**: AdamW's two moments in float32, plus float32 main weights when the parameters
  are 16-bit; divided by DP with the distributed optimiser (ZeRO-1), by the world with FSDP2;
* **activations** of the layers a micro-batch of ``--max-tokens-per-gpu`` tokens passes through, the
  accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models", arXiv 2205.05198, section 4.1) for this architecture: flash/SDPA attention (no
  ``s x s`` scores), grouped-query attention, a SwiGLU MLP, no dropout. Per token and layer, in the
  compute dtype: the two norms' inputs and outputs (``4h``, divided by TP with sequence parallelism),
  ``q, k, v`` and the attention output (``2 q_dim + 2 kv_dim``, / TP), the MLP's gate, up and product
  (``3f``, / TP). With full recompute only each layer's input is kept (``h``), plus one layer's
  activations during its backward. 1F1B keeps PP micro-batches in flight on the first stage, one on
  the last. Logits: ``V / TP`` per token in the compute dtype and ``V / TP`` float32 for the log-prob
  pass (its gradient and working chunk), so 6 bytes (bf16) per vocabulary entry.

Not counted: the reference model (``--use-kl-loss``: weights once more, no gradients or optimiser
state), a critic, temporary buffers of the collectives, the CUDA context (~0.5 GiB) and allocator
fragmentation. The estimate is a planning figure; docs/scaling.md compares it with measurements.

Example::

    >>> from agentrl.train.layout import TrainerLayout
    >>> qwen_7b = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    ...            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
    >>> m = estimate_memory(qwen_7b, TrainerLayout("megatron", world=8, tp=2, sequence_parallel=True))
    >>> round(m.weights / 2**30, 2), round(m.optimizer / 2**30, 2)
    (7.09, 10.64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrl.train.layout import TrainerLayout

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of a dense decoder (Llama / Qwen2 / Qwen3 layout) read from its HF config."""

    hidden: int
    ffn: int
    layers: int
    q_dim: int
    kv_dim: int
    vocab: int
    tied: bool
    layer_params: int
    """Parameters of one decoder layer (attention, MLP, two norms)."""

    @classmethod
    def of(cls, config: dict[str, Any]) -> "ModelSize":
        h, f = int(config["hidden_size"]), int(config["intermediate_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        d = int(config.get("head_dim") or h // heads)
        q, kv = heads * d, kv_heads * d
        bias = q + 2 * kv if config.get("model_type") == "qwen2" or config.get("attention_bias") else 0
        qk_norm = 2 * d if config.get("model_type") == "qwen3" else 0
        layer = h * (q + 2 * kv) + q * h + bias + qk_norm + 3 * h * f + 2 * h
        return cls(h, f, int(config["num_hidden_layers"]), q, kv, int(config["vocab_size"]),
                   bool(config.get("tie_word_embeddings", False)), layer)

    @property
    def num_parameters(self) -> int:
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU (the fullest one)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def table(self) -> str:
        """A small text table in GiB."""
        rows = [("weights", self.weights), ("gradients", self.gradients), ("optimiser state", self.optimizer),
                ("activations", self.activations), ("total", self.total)]
        return "\n".join(f"  {name:<16} {value / GIB:8.2f} GiB" for name, value in rows)


def estimate_memory(config: dict[str, Any], layout: TrainerLayout, *, dtype: str = "bfloat16",
                    tokens_per_micro_batch: int = 8192, distributed_optimizer: bool = True,
                    recompute: str = "none") -> MemoryEstimate:
    """The memory per GPU of training the model of ``config`` (an HF config dict) under ``layout`` (see the
    module doc for what is counted)."""
    size = ModelSize.of(config)
    p_bytes = DTYPE_BYTES[dtype]
    moments = 8 + (4 if p_bytes < 4 else 0)  # exp_avg, exp_avg_sq (+ float32 main weights)
    acts = _activations(size, layout, p_bytes, tokens_per_micro_batch, recompute)
    if layout.trainer == "torch":
        shards = max(layout.world, 1)
        n = size.num_parameters
        gathered = 2 * size.layer_params * p_bytes if shards > 1 else 0  # FSDP2: the layer in use and the next
        master = 4 if shards > 1 else p_bytes
        opt_bytes = 8 if shards > 1 or p_bytes == 4 else moments
        return MemoryEstimate(n * master / shards + gathered, n * 4 / shards, n * opt_bytes / shards, acts)
    stage = _stage_params(size, layout)
    optimizer = stage * moments / (layout.dp if distributed_optimizer and layout.dp else 1)
    return MemoryEstimate(stage * p_bytes, stage * 4, optimizer, acts)


def _stage_params(size: ModelSize, layout: TrainerLayout) -> float:
    """Parameters on the fullest pipeline stage of one tensor-parallel rank."""
    tp, pp = layout.tp, layout.pp
    layers = size.layers / pp * size.layer_params / tp
    embedding = size.vocab * size.hidden / tp
    first = layers + embedding
    last = layers + (embedding if (not size.tied or pp > 1) else 0) + size.hidden
    return max(first, last) if pp > 1 else layers + embedding * (1 if size.tied else 2) + size.hidden


def _activations(size: ModelSize, layout: TrainerLayout, p_bytes: int, tokens: int, recompute: str) -> float:
    tp = layout.tp
    norms = 4 * size.hidden / (tp if layout.sequence_parallel else 1)
    per_layer = p_bytes * (norms + (2 * size.q_dim + 2 * size.kv_dim) / tp + 3 * size.ffn / tp)  # per token
    layer_input = p_bytes * size.hidden / (tp if layout.sequence_parallel else 1)
    layers = size.layers / layout.pp
    logits = (p_bytes + 4) * size.vocab / tp
    stack = layers * layer_input + per_layer if recompute == "full" else layers * per_layer
    if layout.pp == 1:
        return tokens * (stack + logits)
    return tokens * max(stack * layout.pp, stack + logits)  # 1F1B: PP micro-batches in flight on the first stage


def dry_run_report(cfg: Any) -> str:
    """What ``train.py --dry-run`` prints for a :class:`~agentrl.config.RunConfig`: the layout and the memory
    estimate per GPU (model config only; nothing is loaded)."""
    from agentrl.train.layout import model_config

    layout = TrainerLayout.of(cfg)
    megatron = cfg.trainer == "megatron"
    dtype = (cfg.megatron.dtype if megatron else None) or "bfloat16"
    recompute = (cfg.megatron.recompute if megatron else None) or ("full" if cfg.train.gradient_checkpointing else "none")
    lines = [layout.describe() + (", sequence parallel" if layout.sequence_parallel else ""),
             f"global batch {cfg.global_batch_size} episodes per optimiser step, "
             f"{cfg.global_batch_size // max(layout.dp, 1)} per data-parallel rank, micro-batches of at most "
             f"{cfg.train.max_tokens_per_gpu} tokens"]
    config = model_config(cfg.model_path)
    if config is None or "hidden_size" not in config:
        lines.append(f"memory per GPU: unknown (no config.json of {cfg.model_path} on this machine)")
        return "\n".join(lines)
    size = ModelSize.of(config)
    memory = estimate_memory(config, layout, dtype=dtype, tokens_per_micro_batch=cfg.train.max_tokens_per_gpu,
                             distributed_optimizer=not megatron or cfg.megatron.distributed_optimizer, recompute=recompute)
    sharding = ("FSDP2" if not megatron else "distributed optimiser" if cfg.megatron.distributed_optimizer
                else "optimiser state on every DP rank")
    count = size.num_parameters
    params = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"
    lines.append(f"memory per GPU ({params} parameters, {dtype}, recompute {recompute}, {sharding}):")
    lines.append(memory.table())
    if cfg.train.use_kl_loss:
        lines.append(f"  (+ {memory.weights / GIB:.2f} GiB for the reference model of --use-kl-loss)")
    return "\n".join(lines)
