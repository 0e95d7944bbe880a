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
from typing import Any

import torch
import torch.nn.functional as F

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def fast_path_unsupported(model: Any, max_seq_len: int) -> str | None:
    """Why ``model`` cannot run on the fast path, or None when it can."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in FAST_MODEL_TYPES:
        return f"model_type {model_type!r} has no fast path (covered: {', '.join(FAST_MODEL_TYPES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} is not silu"
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


# --- element-wise blocks (module level so torch.compile caches them once) -------------------


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm exactly as the HF Llama/Qwen modules compute it."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(dtype)


def _add_rms_norm(x: torch.Tensor, delta: torch.Tensor, w: torch.Tensor, eps: float):
    """(x + delta, rms_norm(x + delta)): the residual add and the next layer's input norm."""
    x = x + delta
    return x, _rms_norm(x, w, eps)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding. x [N, heads, D]; cos, sin [N, D] (each half repeated, as HF builds them)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :half], sin[:, None, :half]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@dataclass
class _Layer:
    """References to one decoder layer's weights (fused copies when enabled)."""

    attn: Any
    mlp: Any
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv_w: torch.Tensor | None = None
    qkv_b: torch.Tensor | None = None
    gate_up_w: torch.Tensor | None = None


class FastLM:
    """Prefill and decode steps of a Llama-family model over a :class:`KVCache`.

    ``fuse``: keep fused q/k/v and gate/up weight copies. ``compile``: ``torch.compile`` the
    element-wise blocks (dynamic shapes, compiled once per block).
    """

    def __init__(self, model: Any, *, max_seq_len: int, fuse: bool = False, compile: bool = False) -> None:
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
        self.eps = float(self.inner.norm.variance_epsilon if hasattr(self.inner.norm, "variance_epsilon") else cfg.rms_norm_eps)
        self.qk_norm = hasattr(attn0, "q_norm")
        self.fuse = fuse
        self.max_seq_len = max_seq_len
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.vocab_size = model.lm_head.weight.shape[0]
        self.positions = torch.arange(max_seq_len, device=self.device)
        self._build_rope_table()
        if compile:
            self.add_rms_norm = torch.compile(_add_rms_norm, dynamic=True, fullgraph=True)
            self.rms_norm = torch.compile(_rms_norm, dynamic=True, fullgraph=True)
            self.rope = torch.compile(_rope, dynamic=True, fullgraph=True)
            self.silu_mul = torch.compile(_silu_mul, dynamic=True, fullgraph=True)
        else:
            self.add_rms_norm, self.rms_norm, self.rope, self.silu_mul = _add_rms_norm, _rms_norm, _rope, _silu_mul
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
        """Re-read weight references and refill fused copies in place (after a weight update)."""
        old = self.layers
        self.layers = []
        for i, layer in enumerate(self.inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            entry = _Layer(attn=attn, mlp=mlp, ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight)
            if self.fuse:
                prev = old[i] if i < len(old) else None
                entry.qkv_w = _fill(prev and prev.qkv_w, [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
                if attn.q_proj.bias is not None:
                    entry.qkv_b = _fill(prev and prev.qkv_b, [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
                entry.gate_up_w = _fill(prev and prev.gate_up_w, [mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append(entry)

    def weight_pointers(self) -> tuple[int, ...]:
        """Addresses of every tensor the forward reads (a CUDA graph is valid while these hold)."""
        ptrs = [self.inner.embed_tokens.weight.data_ptr(), self.inner.norm.weight.data_ptr(),
                self.model.lm_head.weight.data_ptr()]
        for p in self.model.parameters():
            ptrs.append(p.data_ptr())
        for e in self.layers:
            ptrs += [t.data_ptr() for t in (e.qkv_w, e.qkv_b, e.gate_up_w) if t is not None]
        return tuple(ptrs)

    # --- blocks ------------------------------------------------------------------------------

    def _qkv(self, e: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """h [N, hidden] -> q [N, H, D], k [N, Hkv, D], v [N, Hkv, D] (RoPE applied)."""
        n, d = h.shape[0], self.head_dim
        attn = e.attn
        if e.qkv_w is not None:
            qkv = F.linear(h, e.qkv_w, e.qkv_b)
            q, k, v = qkv.split([self.n_heads * d, self.n_kv_heads * d, self.n_kv_heads * d], dim=-1)
        else:
            q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias)
            k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias)
            v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias)
        q = q.view(n, self.n_heads, d)
        k = k.view(n, self.n_kv_heads, d)
        v = v.view(n, self.n_kv_heads, d)
        if self.qk_norm:
            q = self.rms_norm(q, attn.q_norm.weight, self.eps)
            k = self.rms_norm(k, attn.k_norm.weight, self.eps)
        return self.rope(q, cos, sin), self.rope(k, cos, sin), v

    def _mlp(self, e: _Layer, h: torch.Tensor) -> torch.Tensor:
        mlp = e.mlp
        if e.gate_up_w is not None:
            gate, up = F.linear(h, e.gate_up_w).chunk(2, dim=-1)
        else:
            gate, up = F.linear(h, mlp.gate_proj.weight), F.linear(h, mlp.up_proj.weight)
        return F.linear(self.silu_mul(gate, up), mlp.down_proj.weight, mlp.down_proj.bias)

    def _layers(self, x: torch.Tensor, cos, sin, attend) -> torch.Tensor:
        """Run all decoder layers; ``attend(layer, q, k, v) -> [N, H*D]``. Returns the final-normed hidden."""
        h = self.rms_norm(x, self.layers[0].ln1, self.eps)
        last = len(self.layers) - 1
        for i, e in enumerate(self.layers):
            q, k, v = self._qkv(e, h, cos, sin)
            o = attend(i, q, k, v)
            o = F.linear(o, e.attn.o_proj.weight, e.attn.o_proj.bias)
            x, h = self.add_rms_norm(x, o, e.ln2, self.eps)
            m = self._mlp(e, h)
            next_w = self.layers[i + 1].ln1 if i < last else self.inner.norm.weight
            x, h = self.add_rms_norm(x, m, next_w, self.eps)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        return F.linear(h, head.weight, head.bias)

    # --- steps ---------------------------------------------------------------------------------

    def prefill(self, kv, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Whole prompts, packed. tokens/positions/slots [N] (N = sum(lengths)) -> logits [n, V] at each prompt's end."""
        x = F.embedding(tokens, self.inner.embed_tokens.weight)  # [N, hidden]
        cos, sin = self.cos[positions], self.sin[positions]  # [N, D]
        widx = kv.write_index(slots, positions)
        n, tmax = len(lengths), max(lengths)
        hd = self.n_heads * self.head_dim
        pad_idx = None
        if n > 1:
            rows = torch.repeat_interleave(torch.arange(n, device=self.device), torch.tensor(lengths, device=self.device))
            pad_idx = rows * tmax + positions  # [N] -> place in the [n * tmax] padded layout

        def attend(layer: int, q, k, v):
            kv.write(layer, widx, k, v)
            if pad_idx is None:
                qb, kb, vb = q[None], k[None], v[None]  # [1, T, heads, D]
            else:
                qb, kb, vb = (_pad(t, pad_idx, n, tmax) for t in (q, k, v))  # right padding
            o = F.scaled_dot_product_attention(
                qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2),
                is_causal=True, scale=self.scale, enable_gqa=self.group > 1,
            )  # [n, H, T, D]; right padding + causal: real queries never see padding
            o = o.transpose(1, 2).reshape(-1, hd)
            return o if pad_idx is None else o.index_select(0, pad_idx)

        h = self._layers(x, cos, sin, attend)
        ends = torch.tensor(lengths, device=self.device).cumsum(0) - 1
        return self.logits(h.index_select(0, ends))  # [n, V]

    def decode(self, kv, tokens: torch.Tensor, positions: torch.Tensor, length: int, attention: str = "sdpa") -> torch.Tensor:
        """One token for each of slots ``[0, b)``. tokens/positions [b]; ``length`` >= max(positions) + 1
        -> logits [b, V]. Traceable into a CUDA graph (no host syncs)."""
        b = tokens.shape[0]
        x = F.embedding(tokens, self.inner.embed_tokens.weight)  # [b, hidden]
        cos, sin = self.cos[positions], self.sin[positions]
        widx = kv.write_index(self.positions[:b], positions)
        visible = self.positions[:length][None] <= positions[:, None]  # [b, L]
        mask = visible[:, None, None, :]  # [b, 1, 1, L]
        if attention == "matmul":
            bias = torch.zeros(b, 1, 1, length, device=self.device, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
        hd = self.n_heads * self.head_dim

        def attend(layer: int, q, k, v):
            kv.write(layer, widx, k, v)
            kc, vc = kv.block(layer, b, length)  # [b, Hkv, L, D]
            qg = q.view(b, self.n_kv_heads, self.group, self.head_dim)  # query heads sharing a kv head
            if attention == "matmul":
                s = torch.matmul(qg, kc.transpose(-1, -2)).float() * self.scale + bias
                o = torch.matmul(torch.softmax(s, -1).to(q.dtype), vc)
            else:
                o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask, scale=self.scale)
            return o.reshape(b, hd)

        h = self._layers(x, cos, sin, attend)
        return self.logits(h)


def _pad(t: torch.Tensor, index: torch.Tensor, n: int, tmax: int) -> torch.Tensor:
    """Packed [N, heads, D] -> right-padded [n, tmax, heads, D] (zeros in the padding)."""
    out = t.new_zeros(n * tmax, *t.shape[1:])
    return out.index_copy_(0, index, t).view(n, tmax, *t.shape[1:])


def _fill(prev: torch.Tensor | None, parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``parts`` along dim 0, into ``prev`` when its shape still fits (keeps its address)."""
    rows = sum(p.shape[0] for p in parts)
    if prev is None or prev.shape[0] != rows or prev.shape[1:] != parts[0].shape[1:]:
        return torch.cat([p.detach() for p in parts], dim=0)
    torch.cat([p.detach() for p in parts], dim=0, out=prev)
    return prev
