"""Model steps for the scheduler: prefill new prompts, decode one token for every running slot.

Two runners share one interface (slots ``0 .. n-1`` are the running requests, in order):

* :class:`FastRunner`: :class:`~agentrl.engine.embedded.fast_model.FastLM` over a
  :class:`~agentrl.engine.embedded.kv_cache.KVCache`; on CUDA the decode step is captured in
  CUDA graphs, one per (batch bucket, length bucket), replayed with one small host-to-device
  copy of (token, position) per row;
* :class:`HFRunner`: the HF model's own forward with one ``DynamicCache`` per request, for any
  causal LM (one forward per request per step: correct everywhere, not fast).

Both sample too (:mod:`~agentrl.engine.embedded.sampling`) and return ``[2, rows]`` float64 on the
device: the sampled ids and their logprobs, so the scheduler needs one device-to-host copy per
step. The fast runner's CUDA graphs include the sampling when no row uses top-k/top-p.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Protocol

import numpy as np
import torch

from agentrl.engine.embedded.fast_model import FastLM, MaybeCompiled
from agentrl.engine.embedded.kv_cache import KVCache
from agentrl.engine.embedded.sampling import SamplingRows, sample, sample_greedy, sample_plain

log = logging.getLogger(__name__)


class Runner(Protocol):
    kind: str
    vocab_size: int

    def allocate(self) -> None: ...
    def release(self) -> None: ...
    def prefill(self, slots: list[int], prompts: list[list[int]], rows: SamplingRows) -> torch.Tensor: ...
    def decode(self, tokens: np.ndarray, positions: np.ndarray, rows: SamplingRows) -> torch.Tensor: ...
    def move(self, src: int, dst: int, length: int) -> None: ...
    def free(self, slot: int) -> None: ...
    def refresh_weights(self) -> None: ...


def batch_bucket(n: int, cap: int) -> int:
    """Padded batch size for a CUDA graph: 1, 2, 4, 8, then steps of 8 / 16 / 32."""
    if n <= 8:
        b = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    elif n <= 32:
        b = -(-n // 8) * 8
    elif n <= 128:
        b = -(-n // 16) * 16
    else:
        b = -(-n // 32) * 32
    return min(b, cap)


def length_bucket(n: int, cap: int) -> int:
    """Attention length for a CUDA graph: a multiple of max(128, n/4 rounded to a power of 2)."""
    step = max(128, 1 << max(0, int(math.log2(max(n, 1))) - 2))
    return min(-(-n // step) * step, cap)


def _packed(ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    return torch.stack((ids.double(), logprobs.double()))  # [2, n]


class FastRunner:
    kind = "fast"

    def __init__(
        self,
        model: Any,
        *,
        max_slots: int,
        max_seq_len: int,
        cuda_graphs: bool,
        compile: bool,
        fuse: bool,
        attention: str = "sdpa",
    ) -> None:
        self.lm = FastLM(model, max_seq_len=max_seq_len, fuse=fuse, compile=compile, attention=attention)
        self.device = self.lm.device
        self.vocab_size = self.lm.vocab_size
        self.max_slots = max_slots
        self.max_seq_len = max_seq_len
        self.attention = attention
        self.kv = KVCache(
            n_layers=self.lm.n_layers, n_slots=max_slots, n_kv_heads=self.lm.n_kv_heads, max_len=max_seq_len,
            head_dim=self.lm.head_dim, dtype=self.lm.dtype, device=self.device,
        )
        self.use_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._greedy = MaybeCompiled(sample_greedy, compile and self.use_graphs)
        self._plain = MaybeCompiled(sample_plain, compile and self.use_graphs)
        self._graphs: dict[tuple[int, int, str], Any] = {}
        self._inputs: torch.Tensor | None = None  # [5, slots] float64: token, position, temperature, greedy, u
        self._logits: torch.Tensor | None = None  # [slots, V] float32
        self._out: torch.Tensor | None = None  # [2, slots] float64: sampled id, logprob
        self._pool = None
        self._weight_ptrs = self.lm.weight_pointers()

    def allocate(self) -> None:
        self.kv.allocate()
        if self.use_graphs and self._inputs is None:
            self._inputs = torch.zeros(5, self.max_slots, dtype=torch.float64, device=self.device)
            self._logits = torch.zeros(self.max_slots, self.vocab_size, dtype=torch.float32, device=self.device)
            self._out = torch.zeros(2, self.max_slots, dtype=torch.float64, device=self.device)
            self._pool = torch.cuda.graph_pool_handle()

    def release(self) -> None:
        self._graphs.clear()
        self._inputs = self._logits = self._out = self._pool = None
        self.kv.release()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def prefill(self, slots: list[int], prompts: list[list[int]], rows: SamplingRows) -> torch.Tensor:
        lengths = [len(p) for p in prompts]
        self.kv.ensure_clean_slots(slots, lengths)
        flat = np.fromiter((t for p in prompts for t in p), dtype=np.int64, count=sum(lengths))
        positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        slot_ids = np.repeat(np.asarray(slots, dtype=np.int64), lengths)
        host = torch.from_numpy(np.stack([flat, positions, slot_ids]))
        dev = host.to(self.device, non_blocking=True)
        logits = self.lm.prefill(self.kv, dev[0], dev[1], dev[2], lengths)
        return _packed(*sample(logits.float(), rows))

    def decode(self, tokens: np.ndarray, positions: np.ndarray, rows: SamplingRows) -> torch.Tensor:
        n = len(tokens)
        need = int(positions[:n].max()) + 1
        if not self.use_graphs:
            self.kv.ensure_clean(n, need)
            dev = torch.from_numpy(np.stack([tokens, positions]).astype(np.int64)).to(self.device)
            logits = self.lm.decode(self.kv, dev[0], dev[1], need).float()
            return _packed(*sample(logits, rows))
        assert self._inputs is not None and self._logits is not None
        b = batch_bucket(n, self.max_slots)
        length = length_bucket(need, self.max_seq_len)
        mode = "greedy" if rows.all_greedy else "logits" if rows.filtered.any() else "plain"
        host = np.zeros((5, b), dtype=np.float64)  # padding rows: token 0 at position 0 of a free slot
        host[0, :n], host[1, :n] = tokens, positions
        host[2] = 1.0
        host[2:, :n] = rows.packed()
        self._inputs[:, :b].copy_(torch.from_numpy(host), non_blocking=True)
        graph = self._graphs.get((b, length, mode))
        if graph is None:
            graph = self._capture(b, length, mode)
        graph.replay()
        if mode == "logits":
            return _packed(*sample(self._logits[:n], rows))
        return self._out[:, :n]

    def _capture(self, b: int, length: int, mode: str):
        assert self._inputs is not None and self._logits is not None
        inputs, logits_out, out = self._inputs, self._logits, self._out

        def step() -> None:
            tokens, positions = inputs[0, :b].long(), inputs[1, :b].long()
            logits = self.lm.decode(self.kv, tokens, positions, length)  # [b, V], model dtype
            if mode == "logits":
                logits_out[:b].copy_(logits)
                return
            if mode == "greedy":
                ids, lps = self._greedy(logits)
            else:
                ids, lps = self._plain(logits, inputs[2:, :b].float())
            out[0, :b].copy_(ids)
            out[1, :b].copy_(lps)

        # Warm-up runs compute the very step about to be replayed (same inputs), so their cache
        # writes are the real ones; they also trigger any torch.compile work outside the capture.
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            step()
            step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            step()
        self._graphs[(b, length, mode)] = graph
        log.debug("captured decode graph batch=%d length=%d %s (%d graphs)", b, length, mode, len(self._graphs))
        return graph

    def move(self, src: int, dst: int, length: int) -> None:
        self.kv.move(src, dst, length)

    def free(self, slot: int) -> None:
        pass

    def refresh_weights(self) -> None:
        self.lm.refresh()
        ptrs = self.lm.weight_pointers()
        if ptrs != self._weight_ptrs:  # tensors were replaced, not updated in place
            self._graphs.clear()
            self._weight_ptrs = ptrs


class HFRunner:
    """The HF model's own forward, one request at a time, one ``DynamicCache`` per request."""

    kind = "hf"

    def __init__(self, model: Any, *, max_slots: int, max_seq_len: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_slots = max_slots
        self._caches: list[Any] = [None] * max_slots
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" in params

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:
            return DynamicCache()

    def _forward(self, ids: list[int], cache: Any) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if self._keep_kw:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=torch.tensor([ids], device=self.device), **kwargs)
        returned = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[:, -1].float(), (returned if returned is not None else cache)

    def allocate(self) -> None:
        pass

    def release(self) -> None:
        self._caches = [None] * self.max_slots
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def prefill(self, slots: list[int], prompts: list[list[int]], rows: SamplingRows) -> torch.Tensor:
        logits = []
        for slot, prompt in zip(slots, prompts):
            row, self._caches[slot] = self._forward(prompt, self._new_cache())
            logits.append(row)
        return _packed(*sample(torch.cat(logits), rows))

    def decode(self, tokens: np.ndarray, positions: np.ndarray, rows: SamplingRows) -> torch.Tensor:
        logits = []
        for slot, token in enumerate(tokens.tolist()):
            row, self._caches[slot] = self._forward([token], self._caches[slot])
            logits.append(row)
        return _packed(*sample(torch.cat(logits), rows))

    def move(self, src: int, dst: int, length: int) -> None:
        self._caches[dst], self._caches[src] = self._caches[src], None

    def free(self, slot: int) -> None:
        self._caches[slot] = None

    def refresh_weights(self) -> None:
        pass
