"""The embedded engine: an in-process HF causal LM behind the :class:`~agentrl.engine.base.Engine` protocol.

Coroutines on the caller's event loop validate requests and hand them to a worker thread (see
:mod:`agentrl.engine.embedded.scheduler`) that owns the model; the event loop never runs a
model step, so HTTP servers and environments stay responsive.

Example::

    >>> import asyncio
    >>> from agentrl.engine import SamplingParams
    >>> async def main():
    ...     async with EmbeddedEngine("tiny-qwen2", max_batch_size=4, max_seq_len=256) as engine:
    ...         c = await engine.generate([1, 2, 3], SamplingParams(temperature=0, max_new_tokens=4))
    ...         return len(c.token_ids), c.finish_reason
    >>> asyncio.run(main())   # doctest: +SKIP
    (4, 'length')
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from agentrl.engine.base import Completion, SamplingParams, current_request_priority
from agentrl.engine.embedded import cpu_attention, gpu_attention, prefill_attention
from agentrl.engine.embedded import mixed as mixed_step
from agentrl.engine.embedded.config import DecodeAttention, EngineConfig, InvalidRequest
from agentrl.engine.embedded.fast_model import fast_path_unsupported, packing_unsupported
from agentrl.engine.embedded.kv_cache import KVCache
from agentrl.engine.embedded.runner import FastRunner, HFRunner, Runner
from agentrl.engine.embedded.request import Request, SchedulerStats
from agentrl.engine.embedded.scheduler import Scheduler
from agentrl.engine.embedded.weights import WeightsSource, load_weights
from agentrl.utils import cpu_features
from agentrl.utils.openmp import release_thread_pool

log = logging.getLogger(__name__)


class EmbeddedEngine:
    """An HF causal LM served in-process with continuous batching.

    ``model`` is an alias, a local HF folder or hub id (loaded with :func:`agentrl.models.load_model`:
    float32 on CPU, bf16 on CUDA), or an already-loaded ``nn.Module`` that the engine shares
    without copying (a colocated trainer may keep training it; call :meth:`update_weights` with no
    arguments afterwards). Keyword options are the fields of :class:`EngineConfig`.

    The worker thread starts on the first call (or with :meth:`start`); :meth:`close` stops it.
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module,
        tokenizer: Any = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        max_batch_size: int | None = None,
        max_seq_len: int | None = None,
        config: EngineConfig | None = None,
        **options: Any,
    ) -> None:
        config = dataclasses.replace(config or EngineConfig(), **options)
        if max_batch_size is not None:
            config.max_batch_size = max_batch_size
        if max_seq_len is not None:
            config.max_seq_len = max_seq_len
        config.validate()
        torch_dtype: torch.dtype | None = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        hf_model: Any  # a transformers causal LM, used through its duck-typed .config and .get_input_embeddings()
        if isinstance(model, (str, os.PathLike)):
            from agentrl.models import load_model

            hf_model, loaded_tok = load_model(str(model), dtype=torch_dtype, device=str(device) if device else None)
            tokenizer = tokenizer if tokenizer is not None else loaded_tok
        elif device is not None or torch_dtype is not None:
            hf_model = model.to(device=device, dtype=torch_dtype)
        else:
            hf_model = model
        hf_model.eval()
        self.model = hf_model
        self.tokenizer = tokenizer
        param = next(hf_model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.config = self._resolve(config)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            _warn_slow_bf16()
        self.vocab_size = self.model.get_input_embeddings().weight.shape[0]
        self.eos_token_ids = _eos_ids(hf_model, tokenizer)
        self.backend = self._choose_backend()
        if self.backend != "fast":  # the HF forward runs the model's own modules: nothing is packed
            self.config.pack_weights = False
        self._rng = random.Random(self.config.seed)
        cfg = self.config
        # _resolve filled in every None (which stands for: choose for this machine)
        assert cfg.max_batch_size is not None and cfg.max_seq_len is not None and cfg.cuda_graphs is not None
        assert cfg.compile is not None and cfg.fuse_weights is not None and cfg.decode_attention is not None
        assert cfg.prefill_token_budget is not None and cfg.overlap is not None and cfg.admit_wait_steps is not None
        runner: Runner
        if self.backend == "fast":
            runner = FastRunner(
                hf_model, max_slots=cfg.max_batch_size, max_seq_len=cfg.max_seq_len, cuda_graphs=cfg.cuda_graphs,
                compile=cfg.compile, fuse=cfg.fuse_weights, attention=cfg.decode_attention,
                pack=cfg.max_batch_size if cfg.pack_weights else 0, mixed=bool(cfg.mixed_prefill),
            )
        else:
            runner = HFRunner(hf_model, max_slots=cfg.max_batch_size, max_seq_len=cfg.max_seq_len)
        self._scheduler = Scheduler(
            runner, max_slots=cfg.max_batch_size, max_seq_len=cfg.max_seq_len, eos_ids=self.eos_token_ids,
            tokenizer=tokenizer, prefill_token_budget=cfg.prefill_token_budget, overlap=cfg.overlap,
            admit_ahead=cfg.admit_ahead,
            admit_wait_steps=cfg.admit_wait_steps, prefix_cache=bool(cfg.prefix_cache),
            high_priority_stream=cfg.high_priority_stream, mixed=bool(cfg.mixed_prefill),
        )
        log.info("embedded engine: %s backend on %s (%s), %d slots x %d tokens%s", self.backend, self.device,
                 self.dtype, cfg.max_batch_size, cfg.max_seq_len,
                 f", decode attention {cfg.decode_attention}" if self.backend == "fast" else "")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "EmbeddedEngine":
        """Load a model by alias / folder / hub id and serve it (same keywords as the constructor)."""
        return cls(name_or_path, **kwargs)

    # --- set-up ------------------------------------------------------------------------------------

    def _resolve(self, cfg: EngineConfig) -> EngineConfig:
        cuda = self.device.type == "cuda"
        cfg = dataclasses.replace(cfg)
        max_pos = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 4096
        if cfg.max_seq_len is None:
            cfg.max_seq_len = min(max_pos, 8192 if cuda else 4096)
        if cfg.cuda_graphs is None:
            cfg.cuda_graphs = cuda
        if cfg.compile is None:
            cfg.compile = bool(cuda and cfg.cuda_graphs)
        if cfg.fuse_weights is None:
            cfg.fuse_weights = cuda
        if cfg.pack_weights is None:  # an explicit True is checked by FastLM, which refuses what it cannot pack
            cfg.pack_weights = not cfg.compile and packing_unsupported(self.device, self.dtype) is None
        if cfg.decode_attention is None:  # an explicit choice is checked by FastLM, like pack_weights
            cfg.decode_attention = self._default_decode_attention()
        if cfg.overlap is None:
            cfg.overlap = cuda
        if cfg.mixed_prefill is None:
            cfg.mixed_prefill = cuda and prefill_attention.unsupported(self.device, self.dtype, self._head_dim()) is None
        if cfg.prefill_token_budget is None:  # mixed steps in CUDA graphs: what the largest graph holds
            cfg.prefill_token_budget = (mixed_step.GRAPH_TOKENS if cfg.admit_ahead and cfg.mixed_prefill
                                        and cfg.cuda_graphs else 8192 if cuda else 4096)
        if cfg.prefix_cache is None:  # reused keys/values differ from recomputed ones in the last bits, which
            cfg.prefix_cache = cuda   # can flip a seeded draw; on the CPU, exact repeatability comes first
        if cfg.admit_wait_steps is None:
            cfg.admit_wait_steps = 8 if cuda else 0
        if cfg.max_batch_size is None:
            cfg.max_batch_size = self._default_batch_size(cfg) if cuda else 32
        return cfg

    def _default_batch_size(self, cfg: EngineConfig) -> int:
        c = self.model.config
        heads: int = c.num_key_value_heads if getattr(c, "num_key_value_heads", None) else getattr(c, "num_attention_heads", 1)
        head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
        assert cfg.max_seq_len is not None  # _resolve sets it before it asks for the batch size
        per_token = KVCache.bytes_per_token(c.num_hidden_layers, heads, head_dim, self.dtype)
        free, _ = torch.cuda.mem_get_info(self.device)
        slots = int(cfg.kv_memory_fraction * free // (per_token * cfg.max_seq_len)) - 1  # and the scratch slot
        if slots < 1:
            raise ValueError(
                f"a KV cache of one {cfg.max_seq_len}-token slot needs {per_token * cfg.max_seq_len / 2**30:.1f} GiB, "
                f"more than kv_memory_fraction={cfg.kv_memory_fraction} of the {free / 2**30:.1f} GiB free; "
                "lower max_seq_len or raise kv_memory_fraction"
            )
        return min(256, slots)

    def _default_decode_attention(self) -> DecodeAttention:
        """The fast path's decode attention: a kernel of ours where it runs here, else SDPA."""
        if self.device.type == "cpu":
            return "cpu" if cpu_attention.unsupported(self.device, self.dtype) is None else "sdpa"
        why = gpu_attention.unsupported(self.device, self.dtype, self._head_dim())
        if why is not None:
            log.info("decode attention: SDPA (%s)", why)
        return "sdpa" if why else "triton"

    def _head_dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _choose_backend(self) -> str:
        want = self.config.backend
        if want == "hf":
            return "hf"
        assert self.config.max_seq_len is not None  # resolved before the backend is chosen
        reason = fast_path_unsupported(self.model, self.config.max_seq_len)
        if reason is None:
            return "fast"
        if want == "fast":
            raise ValueError(f"backend='fast' is not available for this model: {reason}; use backend='auto' or 'hf'")
        log.info("using the HF forward (backend='hf'): %s", reason)
        return "hf"

    # --- the Engine protocol -------------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._scheduler.version

    @property
    def stats(self) -> SchedulerStats:
        """Counters since start: decode steps, prefills, prompt/generated tokens, busy seconds."""
        return self._scheduler.stats

    async def flush_cache(self) -> None:
        """Drop the prefix cache (``agentrl serve``'s ``/flush_cache``); running requests are unaffected."""
        self._scheduler.start()
        await asyncio.wrap_future(self._scheduler.call(self._scheduler.clear_prefix_cache))

    def metrics(self) -> dict[str, float]:
        """``engine/...`` counters since start, for the step metrics (prefills, decode steps, graph replays...)."""
        st = self._scheduler.stats
        m = {"engine/decode_steps": float(st.steps), "engine/graph_steps": float(st.graph_steps),
             "engine/graphs_captured": float(st.graphs_captured), "engine/prefills": float(st.prefills),
             "engine/prompt_tokens": float(st.prompt_tokens), "engine/cached_prompt_tokens": float(st.cached_prompt_tokens),
             "engine/generated_tokens": float(st.generated_tokens), "engine/prefill_s": float(st.prefill_s),
             "engine/decode_s": float(st.decode_s), "engine/launch_s": float(st.launch_s),
             "engine/eager_s": float(st.eager_s), "engine/capture_s": float(st.capture_s)}
        m["engine/busy_s"] = self._scheduler.busy_now()  # read last: it bounds the seconds above
        return m

    async def start(self) -> None:
        self._scheduler.start()

    async def close(self) -> None:
        """Stop the worker; running and queued requests finish with 'abort'. Frees the KV cache."""
        await asyncio.to_thread(self._scheduler.shutdown)

    async def __aenter__(self) -> "EmbeddedEngine":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def generate(
        self, input_ids: Sequence[int], sampling: SamplingParams | None = None, *, rid: str | None = None
    ) -> Completion:
        """Sample one completion of ``input_ids``. Raises :class:`InvalidRequest` for bad input."""
        req = self._request(input_ids, sampling or SamplingParams(), rid)
        if req.max_new == 0:
            return Completion([], [], "length", self.weight_version, len(req.prompt))
        self._scheduler.start()
        if self.device.type == "cpu":  # this thread's idle OpenMP workers would slow the engine's (utils/openmp.py)
            release_thread_pool()
        fut = self._scheduler.submit(req)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self._scheduler.abort(req.rid)
            raise

    async def update_weights(self, weights: WeightsSource = None, *, version: int | None = None) -> int:
        """Load new weights between two decode steps and return the new ``weight_version``.

        ``weights``: a state dict (HF names) or ``(name, tensor)`` pairs, copied in place; a path to
        an HF folder or weight file; or None when the shared model was already updated in place
        (a colocated trainer). Tensors that share storage with the model are skipped. Requests in
        flight continue with the new weights; their completions report the version they started with.
        """

        def apply() -> int:
            if self.config.high_priority_stream and self.device.type == "cuda":
                # the worker's stream is not ordered after the default stream (or the trainer's) that
                # wrote the new weights: let their kernels finish first
                torch.cuda.synchronize(self.device)
            with torch.no_grad():
                load_weights(self.model, weights)
                self._scheduler.runner.refresh_weights()
            self._scheduler.clear_prefix_cache()  # cached keys/values came from the old weights
            self._scheduler.version = self._scheduler.version + 1 if version is None else int(version)
            return self._scheduler.version

        self._scheduler.start()
        return await asyncio.wrap_future(self._scheduler.call(apply))

    async def abort(self, rid: str | None = None) -> None:
        """Abort one request (or all when ``rid`` is None); they return their tokens so far with 'abort'."""
        self._scheduler.abort(rid)

    async def health(self) -> bool:
        s = self._scheduler
        return (s.alive or s._thread is None) and not s._stop

    async def release_memory(self) -> None:
        """Free the KV cache (e.g. around a colocated training step). Waits for running requests;
        new ones wait meanwhile, and the next one allocates the cache again."""
        self._scheduler.start()
        await asyncio.wrap_future(self._scheduler.call(self._scheduler.release_memory, needs_idle=True))

    async def resume_memory(self) -> None:
        """Allocate the KV cache now rather than on the next request."""
        self._scheduler.start()
        await asyncio.wrap_future(self._scheduler.call(self._scheduler.resume_memory))

    # --- helpers -----------------------------------------------------------------------------------

    def _request(self, input_ids: Sequence[int], sampling: SamplingParams, rid: str | None) -> Request:
        if not isinstance(sampling, SamplingParams):
            raise InvalidRequest(f"sampling must be a SamplingParams; got {type(sampling).__name__}")
        try:
            sampling.validate()
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        try:
            prompt = [int(t) for t in input_ids]
        except (TypeError, ValueError):
            raise InvalidRequest(f"input_ids must be a sequence of integer token ids; got {input_ids!r:.80}") from None
        if not prompt:
            raise InvalidRequest("input_ids is empty; a prompt needs at least one token")
        bad = next((i for i, t in enumerate(prompt) if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"token id {prompt[bad]} at position {bad} is outside the vocabulary (expected 0..{self.vocab_size - 1})"
            )
        limit = self.config.max_seq_len
        assert limit is not None  # resolved in __init__
        if len(prompt) >= limit:
            raise InvalidRequest(
                f"prompt of {len(prompt)} tokens does not fit max_seq_len={limit} (which must also hold at least one "
                "new token); shorten the prompt or build the engine with a larger max_seq_len"
            )
        if sampling.stop and self.tokenizer is None:
            raise InvalidRequest("stop strings need a tokenizer; pass tokenizer= to EmbeddedEngine or use stop_token_ids")
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(63)
        return Request(
            rid=rid or uuid.uuid4().hex, prompt=prompt, sampling=sampling, seed=int(seed) & (2**64 - 1),
            max_new=min(sampling.max_new_tokens, limit - len(prompt)), priority=current_request_priority(),
        )


def _warn_slow_bf16() -> None:
    """bf16 runs on any CPU, but without oneDNN's bf16 kernels every matmul is emulated."""
    why = cpu_features.bf16_packing_unsupported()
    if why:
        log.warning("bfloat16 on this CPU: weights are not packed and matmuls are emulated, slower than in float32 "
                    "(%s); pass dtype float32 (--engine-dtype float32, agentrl serve --dtype float32)", why)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the generation config's, the model config's and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value]))
    return ids
