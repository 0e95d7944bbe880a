"""The engine's own forward pass for the Llama family, run on the HF module's own weights.

Covers ``LlamaForCausalLM`` (and SmolLM2), ``MistralForCausalLM``, ``Qwen2ForCausalLM`` (q/k/v
bias) and ``Qwen3ForCausalLM`` (per-head q/k RMSNorm): pre-norm decoder layers with RMSNorm
(Zhang & Sennrich 2019), rotary position embeddings (Su et al. 2021) taken from the HF model's
own ``rotary_emb`` (so ``rope_theta`` and the static scaling types match), grouped-query
attention (Ainslie et al. 2023) and a SwiGLU MLP (Shazeer 2020).

The operations and their order follow the HF modules, so in float32 the logits agree with
``model(...)`` to rounding. Weights are read from the HF modules at call time (no copy), except
the optional fused q/k/v and gate/up matrices, which :meth:`FastLM.refresh` rebuilds in place.

Not covered (the engine then uses the HF forward): sliding-window layers shorter than the
engine's ``max_seq_len``, position-dependent RoPE types (``dynamic``, ``longrope``), activations
other than SiLU.

Example::

    >>> from agentrl.models import load_model
    >>> model, tok = load_model("tiny-qwen2", device="cpu")      # doctest: +SKIP
    >>> fast_path_unsupported(model, max_seq_len=512) is None     # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F

from agentrl.engine.embedded import cpu_attention, gpu_attention
from agentrl.utils import cpu_features
from agentrl.utils.attention import no_cudnn_attention, sdpa_grouped
from agentrl.utils.compile import MaybeCompiled

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def fast_path_unsupported(model: Any, max_seq_len: int) -> str | None:
    """Why ``model`` cannot run on the fast path, or None when it can."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in FAST_MODEL_TYPES:
        return f"model_type {model_type!r} has no fast path (covered: {', '.join(FAST_MODEL_TYPES)})"
    if (act := getattr(cfg, "hidden_act", "silu")) != "silu":
        return f"hidden_act {act!r} is not silu"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "model does not have the usual model.layers / lm_head structure"
    rope = getattr(inner, "rotary_emb", None)
    if rope is None:
        return "model has no rotary_emb module"
    rope_type = getattr(rope, "rope_type", "default")
    if rope_type in ("dynamic", "longrope"):
        return f"rope_type {rope_type!r} depends on the sequence length"
    window = getattr(cfg, "sliding_window", None)
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    uses_window = "sliding_attention" in layer_types or (model_type == "mistral" and window is not None)
    if uses_window and window is not None and window < max_seq_len:
        return f"sliding_window={window} is shorter than max_seq_len={max_seq_len}"
    attn = inner.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(attn, name):
            return f"attention has no {name}"
    mlp = inner.layers[0].mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        if not hasattr(mlp, name):
            return f"mlp has no {name}"
    return None


# --- blocks (module level, so torch.compile traces each once for every layer and engine) ------


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm exactly as the HF Llama/Qwen modules compute it."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding. x [N, heads, D]; cos, sin [N, D] (each half repeated, as HF builds them)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :half], sin[:, None, :half]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def packing_unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why weights on ``device`` in ``dtype`` cannot be packed for oneDNN, or None when they can."""
    if device.type != "cpu":
        return f"weight packing is for the CPU; the model is on {device}"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"weight packing covers float32 and bfloat16, not {dtype}"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return "this PyTorch build has no oneDNN (mkldnn) linear"
    if dtype == torch.bfloat16:  # x86 with AVX2 alone has no oneDNN bf16 kernels
        return cpu_features.bf16_packing_unsupported()
    return None


def pack_linear_weight(w: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """A copy of ``w`` [out, in] in oneDNN's blocked layout, laid out for inputs of about
    ``batch_hint`` rows (any row count works). :func:`_linear` with it computes ``F.linear``'s dot
    products in another order, so results agree to float rounding, not bit for bit."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), batch_hint)


def _linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``, or oneDNN's linear when ``w`` came from :func:`pack_linear_weight`."""
    if w.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(h.contiguous(), w, b, "none", [], "")
    return F.linear(h, w, b)


def _linears(h: torch.Tensor, weights: tuple, biases: tuple | None) -> list[torch.Tensor]:
    if len(weights) == 1:
        return [_linear(h, weights[0], biases[0] if biases else None)]
    return [_linear(h, w, biases[i] if biases else None) for i, w in enumerate(weights)]


def _qkv(h, qkv_w: tuple, qkv_b: tuple | None, q_norm, k_norm, n_heads: int, n_kv_heads: int, head_dim: int,
         eps: float):
    """Normed hidden [N, hidden] -> q [N, H, D], k and v [N, Hkv, D] before RoPE (views of one
    matmul's output where the weights are fused; Qwen3's per-head RMSNorm applied)."""
    n = h.shape[0]
    out = _linears(h, qkv_w, qkv_b)
    if len(out) == 1:
        q, k, v = out[0].split([n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
    else:
        q, k, v = out
    q = q.view(n, n_heads, head_dim)
    k = k.view(n, n_kv_heads, head_dim)
    v = v.view(n, n_kv_heads, head_dim)
    if q_norm is not None:  # Qwen3: RMSNorm over each head before RoPE
        q, k = _rms_norm(q, q_norm, eps), _rms_norm(k, k_norm, eps)
    return q, k, v


def _pre_attention(h, qkv_w: tuple, qkv_b: tuple | None, q_norm, k_norm, cos, sin,
                   n_heads: int, n_kv_heads: int, head_dim: int, eps: float):
    """Normed hidden [N, hidden] -> q [N, H, D] and the new keys/values kv [N, 2, Hkv, D] (RoPE applied)."""
    n = h.shape[0]
    if len(qkv_w) == 1 and q_norm is None and h.device.type == "cpu":  # one RoPE call for q and k (fewer small ops)
        out = _linear(h, qkv_w[0], qkv_b[0] if qkv_b else None)
        qk, v = out.split([(n_heads + n_kv_heads) * head_dim, n_kv_heads * head_dim], dim=-1)
        q, k = _rope(qk.reshape(n, n_heads + n_kv_heads, head_dim), cos, sin).split([n_heads, n_kv_heads], dim=1)
        return q, torch.stack((k, v.reshape(n, n_kv_heads, head_dim)), dim=1)
    q, k, v = _qkv(h, qkv_w, qkv_b, q_norm, k_norm, n_heads, n_kv_heads, head_dim, eps)
    return _rope(q, cos, sin), torch.stack((_rope(k, cos, sin), v), dim=1)


def _post_attention(o, x, o_w, o_b, ln2, gu_w: tuple, gu_b: tuple | None, down_w, down_b, next_norm, eps: float):
    """Attention output [N, H*D] and residual x -> (new residual, next layer's normed input)."""
    x = x + _linear(o, o_w, o_b)
    h = _rms_norm(x, ln2, eps)
    out = _linears(h, gu_w, gu_b)
    gate, up = out[0].chunk(2, dim=-1) if len(out) == 1 else out
    x = x + _linear(F.silu(gate).mul_(up), down_w, down_b)
    return x, _rms_norm(x, next_norm, eps)


@dataclass
class _Layer:
    """One decoder layer's weights, detached (fused copies when enabled)."""

    ln1: torch.Tensor
    qkv_w: tuple
    qkv_b: tuple | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    ln2: torch.Tensor
    gu_w: tuple
    gu_b: tuple | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None


class FastLM:
    """Prefill and decode steps of a Llama-family model over a :class:`KVCache`.

    ``fuse``: keep fused q/k/v and gate/up weight copies. ``compile``: ``torch.compile`` the two
    per-layer blocks around attention (one compilation serves every layer). ``attention``: decode
    attention kernel, ``sdpa`` (PyTorch picks), ``efficient`` (memory-efficient SDPA), ``matmul``
    or ``cpu`` (:mod:`~agentrl.engine.embedded.cpu_attention`, float32 on the CPU).
    ``pack``: on the CPU, keep every projection and the LM head as a copy packed for oneDNN
    (:func:`pack_linear_weight`, fused q/k/v and gate/up), laid out for ``pack`` rows per matmul;
    0 leaves the weights as they are.
    """

    def __init__(self, model: Any, *, max_seq_len: int, fuse: bool = False, compile: bool = False,
                 attention: str = "sdpa", pack: int = 0) -> None:
        self.model = model
        self.inner = model.model
        cfg = model.config
        attn0 = self.inner.layers[0].self_attn
        self.n_layers = len(self.inner.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.group = self.n_heads // self.n_kv_heads
        self.scale = float(getattr(attn0, "scaling", self.head_dim**-0.5))
        norm = self.inner.norm
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", cfg.rms_norm_eps)))
        self.fuse = fuse
        self.pack = pack
        self.attention = attention
        self.max_seq_len = max_seq_len
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if pack:
            why = packing_unsupported(self.device, self.dtype) or (
                "packed weights run eagerly (torch.compile cannot read their storage); turn compile off" if compile else None)
            if why:
                raise ValueError(f"pack_weights: {why}")
        if attention == "cpu":
            why = cpu_attention.unsupported(self.device, self.dtype)
        elif attention == "triton":
            why = gpu_attention.unsupported(self.device, self.dtype, self.head_dim)
        else:
            why = None
        if why:
            raise ValueError(f"decode_attention={attention!r}: {why}")
        self.vocab_size = model.lm_head.weight.shape[0]
        self.positions = torch.arange(max_seq_len, device=self.device)
        self._build_rope_table()
        self.pre = MaybeCompiled(_pre_attention, compile)
        self.qkv = MaybeCompiled(_qkv, compile and hasattr(attn0, "q_norm"))  # else a matmul and views
        self.post = MaybeCompiled(_post_attention, compile)
        self.layers: list[_Layer] = []
        self.refresh()

    def _build_rope_table(self) -> None:
        with torch.no_grad():
            pos = self.positions[None]  # [1, L]
            probe = torch.empty(1, device=self.device, dtype=self.dtype)
            cos, sin = self.inner.rotary_emb(probe, pos)  # [1, L, D] in the model dtype
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-read the weights (they may have been replaced) and refill fused copies in place."""
        old = self.layers
        self.layers = []
        for i, layer in enumerate(self.inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            prev = old[i] if i < len(old) else None
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            gu = [mlp.gate_proj, mlp.up_proj]
            qkv_b = tuple(_d(m.bias) for m in qkv) if attn.q_proj.bias is not None else None
            gu_b = tuple(_d(m.bias) for m in gu) if mlp.gate_proj.bias is not None else None
            o_w, down_w = _d(attn.o_proj.weight), _d(mlp.down_proj.weight)
            qkv_w: tuple[torch.Tensor, ...]
            gu_w: tuple[torch.Tensor, ...]
            if self.pack:  # fresh packed copies each time (no CUDA graph holds their addresses)
                qkv_w = (pack_linear_weight(torch.cat([m.weight for m in qkv]), self.pack),)
                qkv_b = (torch.cat(qkv_b),) if qkv_b else None
                gu_w = (pack_linear_weight(torch.cat([m.weight for m in gu]), self.pack),)
                gu_b = (torch.cat(gu_b),) if gu_b else None
                o_w, down_w = pack_linear_weight(o_w, self.pack), pack_linear_weight(down_w, self.pack)
            elif self.fuse:
                qkv_w = (_fill(prev.qkv_w[0] if prev else None, [m.weight for m in qkv]),)
                qkv_b = (_fill(prev.qkv_b[0] if prev and prev.qkv_b else None, list(qkv_b)),) if qkv_b else None
                gu_w = (_fill(prev.gu_w[0] if prev else None, [m.weight for m in gu]),)
                gu_b = (_fill(prev.gu_b[0] if prev and prev.gu_b else None, list(gu_b)),) if gu_b else None
            else:
                qkv_w = tuple(_d(m.weight) for m in qkv)
                gu_w = tuple(_d(m.weight) for m in gu)
            self.layers.append(_Layer(
                ln1=_d(layer.input_layernorm.weight), qkv_w=qkv_w, qkv_b=qkv_b,
                q_norm=_d(attn.q_norm.weight) if hasattr(attn, "q_norm") else None,
                k_norm=_d(attn.k_norm.weight) if hasattr(attn, "k_norm") else None,
                o_w=o_w, o_b=_d(attn.o_proj.bias), ln2=_d(layer.post_attention_layernorm.weight),
                gu_w=gu_w, gu_b=gu_b, down_w=down_w, down_b=_d(mlp.down_proj.bias),
            ))
        self.embed_w = _d(self.inner.embed_tokens.weight)
        self.norm_w = _d(self.inner.norm.weight)
        self.head_w, self.head_b = _d(self.model.lm_head.weight), _d(self.model.lm_head.bias)
        self.head_packed = pack_linear_weight(self.head_w, self.pack) if self.pack else None

    def weight_pointers(self) -> tuple[int, ...]:
        """Addresses of every tensor the forward reads (a CUDA graph is valid while these hold)."""
        ptrs = [p.data_ptr() for p in self.model.parameters()]
        for e in self.layers:
            ptrs += [t.data_ptr() for t in (*e.qkv_w, *e.gu_w) if not t.is_mkldnn]  # packed: CPU only, no graphs
        return tuple(ptrs)

    # --- the forward ---------------------------------------------------------------------------

    def _layers(self, x: torch.Tensor, cos, sin, attend) -> torch.Tensor:
        """All decoder layers; ``attend(layer, q, kv) -> [N, H*D]``, with RoPE applied to ``q`` and to
        the new keys in ``kv`` [N, 2, Hkv, D] (``cos`` None: ``q`` and ``kv = (k, v)`` come before
        RoPE, which ``attend`` applies). Returns the final-normed hidden."""
        h = _rms_norm(x, self.layers[0].ln1, self.eps)
        last = len(self.layers) - 1
        for i, e in enumerate(self.layers):
            if cos is None:
                q, *kv = self.qkv(h, e.qkv_w, e.qkv_b, e.q_norm, e.k_norm, self.n_heads, self.n_kv_heads,
                                  self.head_dim, self.eps)
            else:
                q, kv = self.pre(h, e.qkv_w, e.qkv_b, e.q_norm, e.k_norm, cos, sin,
                                 self.n_heads, self.n_kv_heads, self.head_dim, self.eps)
            o = attend(i, q, kv)
            next_norm = self.layers[i + 1].ln1 if i < last else self.norm_w
            x, h = self.post(o, x, e.o_w, e.o_b, e.ln2, e.gu_w, e.gu_b, e.down_w, e.down_b, next_norm, self.eps)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.head_packed is not None:
            return _linear(h, self.head_packed, self.head_b)
        if self.device.type == "cpu" and self.head_b is None and h.shape[0] > 1:
            # Same numbers as F.linear (the same dot products); MKL reads the large [V, hidden]
            # matrix faster in this orientation (measured 1.6-1.8x for SmolLM2 at batch 32).
            return torch.mm(self.head_w, h.t()).t().contiguous()
        return F.linear(h, self.head_w, self.head_b)

    def prefill(self, kv, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, lengths: list[int],
                prefix: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """Whole prompts, packed. tokens/positions/slots [N] (N = sum(lengths)) -> logits [n, V] at each prompt's end.

        ``prefix``: per prompt ``(slot, cached)`` when some prompts continue keys/values already in
        their slot at positions ``[0, cached)``; ``tokens`` then hold only the new tokens."""
        x = F.embedding(tokens, self.embed_w)  # [N, hidden]
        cos, sin = self.cos[positions], self.sin[positions]  # [N, D]
        widx = kv.write_index(slots, positions)
        if prefix is not None:
            return self.logits(self._prefill_over_cache(kv, x, cos, sin, widx, lengths, prefix))
        n, tmax = len(lengths), max(lengths)
        hd = self.n_heads * self.head_dim
        pad_idx = None
        if n > 1:
            rows = torch.repeat_interleave(torch.arange(n, device=self.device), torch.tensor(lengths, device=self.device))
            pad_idx = rows * tmax + positions  # [N] -> place in the [n * tmax] padded layout

        def attend(layer: int, q, new_kv):
            kv.write(layer, widx, new_kv)
            k, v = new_kv[:, 0], new_kv[:, 1]
            if pad_idx is None:
                qb, kb, vb = q[None], k[None], v[None]  # [1, T, heads, D]
            else:
                qb, kb, vb = (_pad(t, pad_idx, n, tmax) for t in (q, k, v))  # right padding
            o = sdpa_grouped(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), causal=True,
                             scale=self.scale)  # [n, H, T, D]; right padding + causal: real queries never see padding
            o = o.transpose(1, 2).reshape(-1, hd)
            return o if pad_idx is None else o.index_select(0, pad_idx)

        with self._prefill_kernels():
            h = self._layers(x, cos, sin, attend)
        ends = torch.tensor(lengths, device=self.device).cumsum(0) - 1
        return self.logits(h.index_select(0, ends))  # [n, V]

    def _prefill_kernels(self):
        """SDPA kernels for prefills on CUDA: flash or memory-efficient, not cuDNN, which builds a graph
        for every new shape while prefills rarely repeat their prompt lengths (on an H100 a prefill
        of ~2.5 ms of GPU work took 58-85 ms with it, 14-36 ms without)."""
        return no_cudnn_attention(self.device)

    PREFIX_ATTENTION_BYTES = 256 << 20
    """Bound on the keys/values (read from the cache, expanded to the query heads) that one attention
    call of a prefill over cached prefixes holds; more prompts than fit go in several calls."""

    def _prefill_over_cache(self, kv, x, cos, sin, widx, lengths: list[int], prefix: list[tuple[int, int]]):
        """Prefill whose prompts attend to their slot's cached keys/values as well: prompt ``i``'s new
        tokens sit at positions ``[cached_i, cached_i + lengths_i)`` of its slot and see positions up to
        their own. Per layer, one masked attention call per group of prompts (queries right-padded to
        the group's longest new part, keys read up to its longest total). Returns each prompt's last hidden."""
        hd = self.n_heads * self.head_dim
        dev = self.device
        per_position = 2 * self.n_heads * self.head_dim * kv.data.element_size()  # expanded keys + values
        plans, token, lo = [], 0, 0
        while lo < len(prefix):  # consecutive prompts, as many as fit the byte bound (at least one)
            hi, longest = lo + 1, prefix[lo][1] + lengths[lo]
            while hi < len(prefix):
                longest_next = max(longest, prefix[hi][1] + lengths[hi])
                if (hi - lo + 1) * longest_next * per_position > self.PREFIX_ATTENTION_BYTES:
                    break
                hi, longest = hi + 1, longest_next
            slots, cached, counts = [s for s, _ in prefix[lo:hi]], [c for _, c in prefix[lo:hi]], lengths[lo:hi]
            n, tq = hi - lo, max(counts)
            kv.ensure_clean_slots(slots, [longest] * n)  # keys past a prompt's end are masked, but must be finite
            counts_t = torch.tensor(counts, device=dev)
            rows = torch.repeat_interleave(torch.arange(n, device=dev), counts_t)
            offset = torch.arange(rows.shape[0], device=dev) - (counts_t.cumsum(0) - counts_t)[rows]
            qpos = torch.tensor(cached, device=dev)[:, None] + torch.arange(tq, device=dev)[None]  # [n, tq]
            mask = (torch.arange(longest, device=dev)[None, None] <= qpos[:, :, None])[:, None]  # [n, 1, tq, L]
            plans.append((token, token + sum(counts), n, tq, longest, torch.tensor(slots, device=dev),
                          rows * tq + offset, mask))  # pad_idx: packed -> [n * tq] padded layout
            token, lo = token + sum(counts), hi

        def attend(layer: int, q, new_kv):
            kv.write(layer, widx, new_kv)
            outs = []
            for a, b, n, tq, longest, slot_idx, pad_idx, mask in plans:
                k, v = kv.blocks_of(layer, slot_idx, longest)  # [n, Hkv, L, D]
                qb = _pad(q[a:b], pad_idx, n, tq).transpose(1, 2)  # [n, H, tq, D]
                o = sdpa_grouped(qb, k, v, mask=mask, scale=self.scale)
                outs.append(o.transpose(1, 2).reshape(n * tq, hd).index_select(0, pad_idx))
            return outs[0] if len(outs) == 1 else torch.cat(outs)

        with self._prefill_kernels():
            h = self._layers(x, cos, sin, attend)
        return h.index_select(0, torch.tensor(lengths, device=dev).cumsum(0) - 1)

    def decode(self, kv, tokens: torch.Tensor, positions: torch.Tensor, length: int, *, splits: int | None = None,
               skip_at: int = -1) -> torch.Tensor:
        """One token for each of slots ``[0, b)``. tokens/positions [b]; ``length`` >= max(positions) + 1
        -> logits [b, V]. Traceable into a CUDA graph (no host syncs). With the Triton kernel,
        ``splits`` and ``skip_at`` go to :func:`~agentrl.engine.embedded.gpu_attention.decode_attention`
        (rows at position ``skip_at`` read no cached position)."""
        b = tokens.shape[0]
        x = F.embedding(tokens, self.embed_w)  # [b, hidden]
        hd = self.n_heads * self.head_dim
        if self.attention == "triton":  # RoPE, the cache write and attention in one kernel per layer
            def attend_fused(layer: int, q, new_kv):
                k_cache, v_cache = kv.caches(layer)
                k, v = new_kv
                return gpu_attention.decode_attention(q, k, v, k_cache, v_cache, positions, self.cos, self.sin,
                                                      length, self.scale, splits=splits, skip_at=skip_at).view(b, hd)

            return self.logits(self._layers(x, None, None, attend_fused))
        cos, sin = self.cos[positions], self.sin[positions]
        widx = kv.write_index(self.positions[:b], positions)
        if self.attention == "cpu":  # the kernel reads each row's own positions (no mask); padding rows of
            # a batch bucket sit past the length block, and clamping keeps their reads inside it
            positions = positions.clamp(0, length - 1)
        else:
            visible = self.positions[:length][None] <= positions[:, None]  # [b, L]
            mask = torch.zeros(b, 1, 1, length, device=self.device, dtype=self.dtype if self.attention != "matmul" else torch.float32)
            mask.masked_fill_(~visible[:, None, None, :], float("-inf"))  # built once, shared by all layers

        def attend(layer: int, q, new_kv):
            kv.write(layer, widx, new_kv)
            kc, vc = kv.block(layer, b, length)  # [b, Hkv, L, D]
            qg = q.reshape(b, self.n_kv_heads, self.group, self.head_dim)  # query heads that share a kv head
            if self.attention == "cpu":
                o = cpu_attention.decode_attention(qg, kc, vc, positions, self.scale, check_positions=False)
            elif self.attention == "matmul":
                s = torch.matmul(qg, kc.transpose(-1, -2)).float() * self.scale + mask
                o = torch.matmul(torch.softmax(s, -1).to(q.dtype), vc)
            elif self.attention == "efficient":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                    o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask, scale=self.scale)
            else:
                o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask, scale=self.scale)
            return o.reshape(b, hd)

        h = self._layers(x, cos, sin, attend)
        return self.logits(h)


@overload
def _d(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _d(t: None) -> None: ...
def _d(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _pad(t: torch.Tensor, index: torch.Tensor, n: int, tmax: int) -> torch.Tensor:
    """Packed [N, heads, D] -> right-padded [n, tmax, heads, D] (zeros in the padding)."""
    out = t.new_zeros(n * tmax, *t.shape[1:])
    return out.index_copy_(0, index, t).view(n, tmax, *t.shape[1:])


def _fill(prev: torch.Tensor | None, parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``parts`` along dim 0, into ``prev`` when its shape still fits (keeps its address)."""
    rows = sum(p.shape[0] for p in parts)
    parts = [p.detach() for p in parts]
    if prev is None or prev.shape[0] != rows or prev.shape[1:] != parts[0].shape[1:]:
        return torch.cat(parts, dim=0)
    torch.cat(parts, dim=0, out=prev)
    return prev
