"""Model steps for the scheduler: prefill new prompts, decode one token for every running slot.

Two runners share one interface (slots ``0 .. n-1`` are the running requests, in order):

* :class:`FastRunner`: :class:`~agentrl.engine.embedded.fast_model.FastLM` over a
  :class:`~agentrl.engine.embedded.kv_cache.KVCache`; on CUDA the decode step is captured in
  CUDA graphs, one per (batch bucket, length bucket) (with the Triton decode kernel, per (batch
  bucket, split count): it reads each row's own positions), replayed with one small host-to-device
  copy of (token, position) per row;
* :class:`HFRunner`: the HF model's own forward with one ``DynamicCache`` per request, for any
  causal LM (one forward per request per step: correct everywhere, not fast).

Both sample too (:mod:`~agentrl.engine.embedded.sampling`) and return ``[2, rows]`` float64 on the
device: the sampled ids and their logprobs, so the scheduler needs one device-to-host copy per
step. The fast runner's CUDA graphs include the sampling when no row uses top-k/top-p.

With ``mixed``, the fast runner also runs *mixed steps* (:meth:`FastRunner.mixed`, see
:mod:`~agentrl.engine.embedded.mixed`): the decode rows and the new prompt tokens of several
requests in one forward pass, one CUDA graph per token bucket.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from agentrl.engine.embedded import gpu_attention
from agentrl.engine.embedded import mixed as mixed_step
from agentrl.engine.embedded import prefill_attention
from agentrl.engine.embedded.fast_model import FastLM
from agentrl.utils.attention import attention_kernels_as_set
from agentrl.utils.compile import MaybeCompiled
from agentrl.engine.embedded.kv_cache import KVCache
from agentrl.engine.embedded.sampling import SamplingRows, sample, sample_greedy, sample_plain

log = logging.getLogger(__name__)


class Runner(Protocol):
    kind: str
    vocab_size: int
    supports_pipeline: bool
    """``launch(None, ...)`` works: the next step's input tokens can stay on the device."""

    def allocate(self) -> None: ...
    def release(self) -> None: ...
    def prefill(self, slots: list[int], prompts: list[list[int]], rows: SamplingRows) -> torch.Tensor: ...
    def launch(self, tokens: np.ndarray | None, positions: np.ndarray, rows: SamplingRows) -> Any:
        """Start a decode step for slots ``[0, n)`` (``tokens`` None: the previous step's samples)."""
    def collect(self, handle: Any) -> np.ndarray:
        """Wait for a launched step; its sampled ids and logprobs as host ``[2, n]`` float64."""
    def move(self, src: int, dst: int, length: int) -> None: ...
    def free(self, slot: int) -> None: ...
    def refresh_weights(self) -> None: ...


class MixedRunner(Runner, Protocol):
    """A runner whose ``supports_mixed`` is true: decode and prefill in one step."""

    def mixed(self, tokens: np.ndarray, positions: np.ndarray, parts: list[mixed_step.Part],
              rows: SamplingRows) -> np.ndarray: ...
    def launch_mixed(self, tokens: np.ndarray | None, positions: np.ndarray, parts: list[mixed_step.Part],
                     rows: SamplingRows) -> Any:
        """Start a mixed step (``tokens`` None: the decode rows' inputs are the last step's samples, on
        the device); :meth:`collect` reads it. Its samples stay on the device as the next step's inputs."""


class PrefixRunner(Runner, Protocol):
    """A runner whose ``supports_prefix`` is true: slots' keys/values can trade places."""

    def swap(self, a: int, b: int, length: int) -> None: ...


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


@dataclass
class _MixedHandle:
    """A launched mixed step (CUDA graphs): its samples' pinned host copy [2, rows] and the event after it."""

    host: torch.Tensor
    event: Any


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
        pack: int = 0,
        mixed: bool = False,
    ) -> None:
        self.lm = FastLM(model, max_seq_len=max_seq_len, fuse=fuse, compile=compile, attention=attention, pack=pack)
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
        # CUDA-graph buffers; a graph of batch bucket b uses the first b (4b, 2b) entries:
        # keyed by (batch, length, mode) for decode steps, ("mixed", tokens, mode) for mixed ones
        self._graphs: dict[tuple[int | str, int, str], Any] = {}
        self._uses: dict[tuple[int | str, int, str], int] = {}
        self.capture_after = 1 if attention == "triton" else 3
        """A decode shape is captured on this use. With SDPA, one graph per (batch, length, mode)
        bucket, the third: rarer ones run eagerly, so the many shapes seen while requests trickle in
        do not each cost a capture. With the Triton kernel the graphs are few (a split count or
        two per batch bucket), so the first: a steady workload stops capturing once each batch size
        has been seen, instead of capturing (and running eager steps) whenever it first reaches a
        length three times."""
        self.capture_mixed_after = 1
        """A mixed step's token bucket (at most 16 per sampling mode) is captured on this use."""
        self._tok: torch.Tensor | None = None  # [b] input tokens; each graph writes its samples back
        self._par: torch.Tensor | None = None  # [4, b] float64: position, temperature, greedy, uniform
        self._out: torch.Tensor | None = None  # [2, b] float64: sampled id, logprob
        self._logits: torch.Tensor | None = None  # [slots, V] float32 (graphs that leave sampling out)
        self._pool: Any = None  # the CUDA graphs' memory pool (torch.cuda.graph_pool_handle())
        self.last_step_graphed = False
        """Whether the last :meth:`launch` replayed a CUDA graph."""
        self.capture_s = 0.0
        """Host seconds spent capturing decode graphs."""
        self.graphs_captured = 0
        self._weight_ptrs = self._weight_pointers()
        self._prev_ids: torch.Tensor | None = None
        self._ring = 0
        self._pin_tok: list[torch.Tensor] = []  # pinned host copies, two of each (one per step in flight)
        self._pin_par: list[torch.Tensor] = []
        self._pin_out: list[torch.Tensor] = []
        self.supports_pipeline = True
        self.supports_mixed = mixed
        """:meth:`mixed` serves steps that prefill and decode together (else the scheduler prefills apart)."""
        self.graph_tokens = mixed_step.GRAPH_TOKENS if mixed and self.use_graphs else None
        """The most tokens of a mixed step replayed from a CUDA graph (None: no graphs)."""
        # the Triton kernel where it runs (CUDA; the CPU with decode_attention="triton", in Triton's
        # interpreter), else one attention call per sequence
        kernel = mixed and (self.device.type == "cuda" or attention == "triton")
        why = prefill_attention.unsupported(self.device, self.lm.dtype, self.lm.head_dim) if kernel else "not asked for"
        if kernel and why:
            log.info("mixed steps: attention per sequence (%s)", why)
        self.varlen_kernel = why is None
        self._block_t = prefill_attention.block_tokens(self.lm.group)
        self._mmeta: torch.Tensor | None = None  # int64 layout of a bucket's step (_mixed_layout)
        self._mpar: torch.Tensor | None = None  # [3, S] float64 sampling parameters
        self._mout: torch.Tensor | None = None  # [2, S] float64 sampled ids, logprobs
        self._pin_mmeta: torch.Tensor | None = None  # pinned host copies of the three above
        self._pin_mpar: torch.Tensor | None = None
        self._pin_mout: torch.Tensor | None = None
        self._mixed_seqs: np.ndarray | None = None  # the step's sequences, for the per-sequence attention

    def allocate(self) -> None:
        self.kv.allocate()
        if self.use_graphs and self._tok is None:
            s, dev = self.max_slots, self.device
            self._tok = torch.zeros(s, dtype=torch.long, device=dev)
            self._par = torch.zeros(4 * s, dtype=torch.float64, device=dev)
            self._out = torch.zeros(2 * s, dtype=torch.float64, device=dev)
            self._logits = torch.zeros(s, self.vocab_size, dtype=torch.float32, device=dev)
            pin = dev.type == "cuda"
            self._pin_tok = [torch.zeros(s, dtype=torch.long, pin_memory=pin) for _ in range(2)]
            self._pin_par = [torch.zeros(4 * s, dtype=torch.float64, pin_memory=pin) for _ in range(2)]
            self._pin_out = [torch.zeros(2 * s, dtype=torch.float64, pin_memory=pin) for _ in range(2)]
            if self.supports_mixed:
                size = self._mixed_layout(mixed_step.GRAPH_TOKENS)[-1]
                self._mmeta = torch.zeros(size, dtype=torch.long, device=dev)
                self._mpar = torch.zeros(3 * s, dtype=torch.float64, device=dev)
                self._mout = torch.zeros(2 * s, dtype=torch.float64, device=dev)
                self._pin_mmeta = torch.zeros(size, dtype=torch.long, pin_memory=pin)
                self._pin_mpar = torch.zeros(3 * s, dtype=torch.float64, pin_memory=pin)
                self._pin_mout = torch.zeros(2 * s, dtype=torch.float64, pin_memory=pin)

    def release(self) -> None:
        self._graphs.clear()
        self._uses.clear()
        self._tok = self._par = self._out = self._logits = self._pool = None
        self._mmeta = self._mpar = self._mout = self._pin_mmeta = self._pin_mpar = self._pin_mout = None
        self._pin_tok, self._pin_par, self._pin_out = [], [], []
        self.kv.release()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    supports_prefix = True
    """Prompts may start from keys/values already in their slot (``prefill(..., cached=)``)."""

    def prefill(self, slots: list[int], prompts: list[list[int]], rows: SamplingRows,
                cached: list[int] | None = None) -> torch.Tensor:
        """Prefill ``prompts`` into ``slots``; ``cached[i]`` leading tokens of prompt ``i`` already
        have their keys/values in its slot (reused prefix), so only the rest is computed."""
        self.kv.flush()  # queued moves first (a CUDA graph reads the cache without asking for it)
        cached = cached or [0] * len(prompts)
        full = [len(p) for p in prompts]
        self.kv.ensure_clean_slots(slots, full)
        lengths = [n - c for n, c in zip(full, cached)]
        flat = np.fromiter((t for p, c in zip(prompts, cached) for t in p[c:]), dtype=np.int64, count=sum(lengths))
        positions = np.concatenate([np.arange(c, n, dtype=np.int64) for n, c in zip(full, cached)])
        slot_ids = np.repeat(np.asarray(slots, dtype=np.int64), lengths)
        host = torch.from_numpy(np.stack([flat, positions, slot_ids]))
        dev = host.to(self.device, non_blocking=True)
        prefix = list(zip(slots, cached)) if any(cached) else None
        logits = self.lm.prefill(self.kv, dev[0], dev[1], dev[2], lengths, prefix=prefix)
        return _packed(*sample(logits.float(), rows))

    def mixed(self, tokens: np.ndarray, positions: np.ndarray, parts: list[mixed_step.Part],
              rows: SamplingRows) -> np.ndarray:
        """One step that decodes slots ``[0, n)`` (input ``tokens`` at ``positions``, [n] each) and
        prefills ``parts`` (:mod:`~agentrl.engine.embedded.mixed`). ``rows``: sampling of the decode
        rows, then of the parts whose prompt ends here. Returns their ids and logprobs, host [2, rows]."""
        return self.collect(self.launch_mixed(tokens, positions, parts, rows))

    def launch_mixed(self, tokens: np.ndarray | None, positions: np.ndarray, parts: list[mixed_step.Part],
                     rows: SamplingRows) -> Any:
        """:meth:`mixed`, started: returns a handle for :meth:`collect`. ``tokens`` None: the decode rows'
        inputs are the samples of the step launched before (on the device, not read yet). The sampled
        ids of the decode rows and of the prompts that end here (slots ``[0, rows)`` in order) become
        the next decode step's inputs on the device, so that it can be launched before these are read."""
        self.kv.flush()
        n = len(positions)
        device_tokens = tokens is None
        if device_tokens:
            tokens = np.zeros(n, np.int64)  # placeholders, replaced on the device
        assert tokens is not None
        if n:
            self.kv.ensure_clean(n, int(positions.max()) + 1)  # the CPU zeroes slots lazily
        self.kv.ensure_clean_slots([p.slot for p in parts], [p.start + len(p.tokens) for p in parts])
        step = mixed_step.pack(tokens, positions, parts, self._block_t)
        total, picked = len(step.tokens), len(step.select)
        self._mixed_seqs = step.seqs
        if not self.use_graphs or total > mixed_step.GRAPH_TOKENS:
            self.last_step_graphed = False
            host = torch.from_numpy(np.concatenate([step.tokens, step.positions, step.slots, step.select,
                                                    step.tiles.reshape(-1), step.seqs.reshape(-1)]))
            dev = host.to(self.device, non_blocking=True)
            cut = np.cumsum([total, total, total, picked, step.tiles.size])
            tok, pos, slot, sel, tiles, seqs = torch.tensor_split(dev, cut.tolist())
            if device_tokens and n:
                tok[:n].copy_(self._last_samples(n))
            logits = mixed_step.forward(self.lm, self.kv, tok, pos, slot, sel, seqs.view(-1, prefill_attention.SEQ_FIELDS),
                                        tiles.view(-1, 2), kernel=self.varlen_kernel, seqs_host=step.seqs)
            ids, lps = sample(logits.float(), rows)
            self._keep_samples(ids)
            return _packed(ids, lps)
        # allocate() made them (with graphs and mixed steps)
        assert self._mmeta is not None and self._pin_mmeta is not None and self._mout is not None
        assert self._mpar is not None and self._pin_mpar is not None and self._pin_mout is not None
        assert self._logits is not None and self._tok is not None
        t = mixed_step.token_bucket(total)
        offsets = self._mixed_layout(t)
        s = offsets[4] - offsets[3]
        meta = self._pin_mmeta.numpy()
        o_tok, o_pos, o_slot, o_sel, o_tiles, o_seqs, end = offsets
        meta[o_tok:o_sel] = 0
        meta[o_tok : o_tok + total] = step.tokens
        meta[o_pos : o_pos + total] = step.positions
        meta[o_slot : o_slot + total] = step.slots
        meta[o_slot + total : o_sel] = self.kv.scratch  # padding tokens write where nobody reads
        meta[o_sel:o_tiles] = 0
        meta[o_sel : o_sel + picked] = step.select
        meta[o_tiles:o_seqs] = -1
        meta[o_tiles : o_tiles + step.tiles.size] = step.tiles.reshape(-1)
        meta[o_seqs : o_seqs + step.seqs.size] = step.seqs.reshape(-1)
        self._mmeta[:end].copy_(self._pin_mmeta[:end], non_blocking=True)
        if device_tokens and n:
            self._mmeta[o_tok : o_tok + n].copy_(self._tok[:n])
        par = self._pin_mpar[: 3 * s].view(3, s)
        par.zero_()
        par[0:2] = 1.0  # padding rows: greedy
        par[:, :picked] = torch.from_numpy(rows.packed())
        self._mpar[: 3 * s].copy_(par.view(-1), non_blocking=True)
        mode = "greedy" if rows.all_greedy else "logits" if rows.filtered.any() else "plain"
        key = ("mixed", t, mode)
        graph = self._graphs.get(key)
        if graph is None:
            self._uses[key] = uses = self._uses.get(key, 0) + 1
            if uses >= self.capture_mixed_after:
                graph = self._record_mixed(self._mixed_fn(t, mode), self._mmeta[:t])
                if graph is not None:
                    self._graphs[key] = graph
                    self.graphs_captured += 1
        self.last_step_graphed = graph is not None
        if graph is not None:
            graph.replay()
        else:
            self._mixed_fn(t, mode)()
        out = self._mout[: 2 * s].view(2, s)
        if mode == "logits":
            ids, lps = sample(self._logits[:picked], rows)
            out[0, :picked].copy_(ids)
            out[1, :picked].copy_(lps)
        self._tok[:picked].copy_(out[0, :picked])  # the next decode step's inputs
        pin = self._pin_mout[: 2 * s]
        pin.copy_(self._mout[: 2 * s], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return _MixedHandle(pin.view(2, s)[:, :picked], event)

    def _last_samples(self, n: int) -> torch.Tensor:
        """The last step's sampled ids of rows ``[0, n)``, on the device."""
        if self.use_graphs:
            assert self._tok is not None
            return self._tok[:n]
        assert self._prev_ids is not None  # launch(None, ...) / launch_mixed(None, ...) follow a step
        return self._prev_ids[:n]

    def _keep_samples(self, ids: torch.Tensor) -> None:
        """Keep an eager step's sampled ids [rows] on the device as the next step's inputs."""
        self._prev_ids = ids
        if self._tok is not None:
            self._tok[: ids.shape[0]].copy_(ids)

    def _mixed_layout(self, t: int) -> tuple[int, ...]:
        """Offsets in the int64 metadata of a step of bucket ``t``: tokens, positions, slots [t], sampled
        rows [S], tiles [NT, 2], sequences [slots, 6], end."""
        s = min(t, self.max_slots)
        tiles = t // self._block_t + self.max_slots  # each sequence adds at most one partial tile
        at = np.cumsum([0, t, t, t, s, 2 * tiles, prefill_attention.SEQ_FIELDS * self.max_slots])
        return tuple(int(x) for x in at)

    def _mixed_fn(self, t: int, mode: str):
        """The mixed step of token bucket ``t`` as a closure over the static buffers (what a CUDA graph
        captures; also run eagerly for rarely seen buckets)."""
        assert self._mmeta is not None and self._mpar is not None and self._mout is not None and self._logits is not None
        o_tok, o_pos, o_slot, o_sel, o_tiles, o_seqs, end = self._mixed_layout(t)
        m = self._mmeta
        tok, pos, slot, sel = m[o_tok:o_pos], m[o_pos:o_slot], m[o_slot:o_sel], m[o_sel:o_tiles]
        tiles, seqs = m[o_tiles:o_seqs].view(-1, 2), m[o_seqs:end].view(-1, prefill_attention.SEQ_FIELDS)
        s = o_tiles - o_sel
        par, out, logits_out = self._mpar[: 3 * s].view(3, s), self._mout[: 2 * s].view(2, s), self._logits

        def step() -> None:
            logits = mixed_step.forward(self.lm, self.kv, tok, pos, slot, sel, seqs, tiles, kernel=self.varlen_kernel,
                                        seqs_host=self._mixed_seqs)  # [S, V]
            self._sample_into(logits, mode, par, out, logits_out)

        return step

    def _sample_into(self, logits: torch.Tensor, mode: str, par: torch.Tensor, out: torch.Tensor,
                     logits_out: torch.Tensor) -> torch.Tensor | None:
        """A step's sampling (CUDA-graph safe): ids and logprobs into ``out`` [2, b] and the ids returned,
        or for ``mode == "logits"`` (top-k/top-p rows, sampled outside) the logits into ``logits_out``."""
        if mode == "logits":
            logits_out[: logits.shape[0]].copy_(logits)
            return None
        ids, lps = self._greedy(logits) if mode == "greedy" else self._plain(logits, par.float())
        out[0].copy_(ids)
        out[1].copy_(lps)
        return ids

    def _record_mixed(self, step, tok: torch.Tensor):
        """Capture a mixed step (its attention reads no cuDNN flag: nothing to wait for)."""
        return self._timed_capture(step, tok)

    def launch(self, tokens: np.ndarray | None, positions: np.ndarray, rows: SamplingRows) -> Any:
        self.kv.flush()
        n = len(positions)
        need = int(positions.max()) + 1
        if not self.use_graphs:
            self.kv.ensure_clean(n, need)
            pos = torch.from_numpy(positions.astype(np.int64)).to(self.device)
            tok = self._prev_ids if tokens is None else torch.from_numpy(tokens.astype(np.int64)).to(self.device)
            assert tok is not None  # launch(None, ...) follows a step, whose samples _prev_ids holds
            logits = self.lm.decode(self.kv, tok, pos, need).float()
            ids, lps = sample(logits, rows)
            self._prev_ids = ids
            return _packed(ids, lps)
        assert self._tok is not None and self._par is not None and self._out is not None  # allocate() made them
        assert self._logits is not None
        b = batch_bucket(n, self.max_slots)
        length = length_bucket(need, self.max_seq_len)
        self.kv.ensure_clean(b, length)  # a no-op on CUDA, where the cache starts zeroed
        if self.attention == "triton":  # the kernel reads each row's own positions: the graph depends on
            # the split count only (see _step_fn)
            length = gpu_attention.graph_splits(b, self.lm.n_kv_heads, length, self.device)
        mode = "greedy" if rows.all_greedy else "logits" if rows.filtered.any() else "plain"
        ring, self._ring = self._ring, self._ring ^ 1  # this ring's last copies finished a step ago
        par = self._pin_par[ring][: 4 * b]
        view = par.view(4, b)
        view.zero_()
        # padding rows: greedy, at the last position of a free slot (a slot may hold a parked prefix
        # at positions below max_seq_len - 1, which parking never uses)
        view[0, n:] = self.max_seq_len - 1
        view[1:3, n:] = 1.0
        view[0, :n] = torch.from_numpy(positions.astype(np.float64))
        view[1:, :n] = torch.from_numpy(rows.packed())
        self._par[: 4 * b].copy_(par, non_blocking=True)
        if tokens is not None:  # else: the previous step's graph left its samples in _tok
            tok = self._pin_tok[ring][:b]
            tok.zero_()
            tok[:n] = torch.from_numpy(tokens.astype(np.int64))
            self._tok[:b].copy_(tok, non_blocking=True)
        key = (b, length, mode)
        graph = self._graphs.get(key)
        if graph is None:
            self._uses[key] = uses = self._uses.get(key, 0) + 1
            if uses >= self.capture_after:
                graph = self._record_graph(self._step_fn(*key), self._tok[:b])
                if graph is not None:
                    self._graphs[key] = graph
                    self.graphs_captured += 1
                    log.debug("captured decode graph batch=%d %s=%d %s (%d graphs)", b,
                              "splits" if self.attention == "triton" else "length", length, mode, len(self._graphs))
        self.last_step_graphed = graph is not None
        if graph is not None:
            graph.replay()
        else:  # a shape seen only once or twice so far (e.g. while requests trickle in): run it eagerly
            self._step_fn(*key)()
        if mode == "logits":  # top-k / top-p rows: sample outside the graph
            ids, lps = sample(self._logits[:n], rows)
            out = self._out[: 2 * b].view(2, b)
            out[0, :n].copy_(ids)
            out[1, :n].copy_(lps)
            self._tok[:n].copy_(ids)
        self._pin_out[ring][: 2 * b].copy_(self._out[: 2 * b], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return ring, n, b, event

    def collect(self, handle: Any) -> np.ndarray:
        if isinstance(handle, torch.Tensor):
            return handle.cpu().numpy()
        if isinstance(handle, _MixedHandle):
            if handle.event is not None:
                handle.event.synchronize()
            return handle.host.numpy().copy()
        ring, n, b, event = handle
        if event is not None:
            event.synchronize()
        return self._pin_out[ring][: 2 * b].view(2, b)[:, :n].numpy().copy()

    def _step_fn(self, b: int, length: int, mode: str):
        """The decode step of batch bucket ``b`` over ``length`` positions, as a closure over the
        static buffers (what a CUDA graph captures; also run eagerly for rarely seen shapes).

        With the Triton kernel ``length`` is its split count instead: every row attends to its own
        positions whatever the length, so the step reads up to the whole cache, and the padding rows
        (at its last position, which no request's keys/values reach) read nothing. One graph then
        serves every length of a batch bucket (with SDPA the mask spans ``length`` positions)."""
        assert self._tok is not None and self._par is not None and self._out is not None and self._logits is not None
        tok, par, out, logits_out = self._tok[:b], self._par[: 4 * b].view(4, b), self._out[: 2 * b].view(2, b), self._logits
        span, splits, skip_at = length, None, -1
        if self.attention == "triton":
            span, splits, skip_at = self.max_seq_len, length, self.max_seq_len - 1

        def step() -> None:
            logits = self.lm.decode(self.kv, tok, par[0].long(), span, splits=splits, skip_at=skip_at)  # [b, V]
            ids = self._sample_into(logits, mode, par[1:], out, logits_out)
            if ids is not None:
                tok.copy_(ids)  # the next step's input tokens stay on the device

        return step

    def _record_graph(self, step, tok: torch.Tensor):
        """Capture ``step`` in a CUDA graph (an object with ``replay()``). With SDPA in the step: None,
        capturing nothing, while a trainer pass holds cuDNN's attention off: the graph would keep the
        kernels it is captured with (cuDNN's where PyTorch prefers it), so the step runs eagerly and a
        later use of its shape captures it (waiting for the pass instead would stall every request).
        The Triton decode kernel reads no such flag."""
        if self.attention not in ("sdpa", "efficient"):  # no SDPA in the step: no flag to wait for
            return self._timed_capture(step, tok)
        with attention_kernels_as_set(self.device, wait=False) as free:
            return self._timed_capture(step, tok) if free else None

    def _timed_capture(self, step, tok: torch.Tensor):
        t0 = time.perf_counter()
        try:
            return self._capture(step, tok)
        finally:
            self.capture_s += time.perf_counter() - t0

    def _capture(self, step, tok: torch.Tensor):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Warm-up runs compute the very step about to be replayed (same inputs; the tokens they
        # sample are put back), so their cache writes are the real ones; they also trigger any
        # torch.compile work, which must not happen during capture.
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            saved = tok.clone()
            for _ in range(2):
                step()
                tok.copy_(saved)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a trainer thread working on the GPU while a decode shape is captured (async
        # training) must not invalidate the capture, nor be refused by it
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            step()
        return graph

    def move(self, src: int, dst: int, length: int) -> None:
        self.kv.move(src, dst, length)

    def swap(self, a: int, b: int, length: int) -> None:
        self.kv.swap(a, b, length)

    def free(self, slot: int) -> None:
        pass

    def _weight_pointers(self) -> tuple[int, ...]:
        return self.lm.weight_pointers()

    def refresh_weights(self) -> None:
        self.lm.refresh()
        ptrs = self._weight_pointers()
        if ptrs != self._weight_ptrs:  # tensors were replaced, not updated in place
            self._graphs.clear()
            self._uses.clear()
            self._weight_ptrs = ptrs


class HFRunner:
    """The HF model's own forward, one request at a time, one ``DynamicCache`` per request."""

    kind = "hf"
    supports_pipeline = False

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

    def launch(self, tokens: np.ndarray | None, positions: np.ndarray, rows: SamplingRows) -> torch.Tensor:
        if tokens is None:
            raise ValueError("the HF runner needs the input tokens on the host (no pipelining)")
        logits = []
        for slot, token in enumerate(tokens.tolist()):
            row, self._caches[slot] = self._forward([token], self._caches[slot])
            logits.append(row)
        return _packed(*sample(torch.cat(logits), rows))

    def collect(self, handle: torch.Tensor) -> np.ndarray:
        return handle.cpu().numpy()

    def move(self, src: int, dst: int, length: int) -> None:
        self._caches[dst], self._caches[src] = self._caches[src], None

    def free(self, slot: int) -> None:
        self._caches[slot] = None

    def refresh_weights(self) -> None:
        pass
