"""SGLang's native ``/generate`` protocol: parse a request body, shape the answer.

Pure functions, no I/O: :func:`parse_generate_request` turns a JSON body shaped like SGLang's
``GenerateReqInput`` (``python/sglang/srt/managers/io_struct.py``) into a list of
:class:`GenerateItem` (one per prompt and per parallel sample), raising :class:`RequestError`
with a message for the client when the body is malformed; :func:`output_dict` builds the
``{"text", "output_ids", "meta_info"}`` answer SGLang's tokenizer manager returns.

Covered: ``text`` or ``input_ids`` (single or batch), ``sampling_params`` (one dict or one per
prompt, ``n`` parallel samples), ``rid`` (string, list, or generated), ``return_logprob``,
``return_text_in_logprobs``, ``stream``, ``priority`` (an integer; higher values are admitted first,
as in SGLang's default priority scheduling; streamed requests ignore it); ``stop`` holds at most
64 strings of at most 1,024 characters. A temperature below SGLang's ``1e-6`` means greedy, as in
SGLang (the engine divides float32 logits by it: below about ``1e-38`` that gives NaN);
temperatures and ``top_p`` values that float32 cannot hold (above 3.4e38, or a ``top_p`` that
rounds to 0) are refused. A ``text`` longer than ``max_prompt_chars`` is refused before it is
tokenized. Flags must be JSON booleans. Not covered (a clear 400, never silently wrong): prompt
logprobs (``logprob_start_len >= 0``), top logprobs, multimodal inputs, embeddings, LoRA,
sessions, hidden states, and the sampling parameters of :data:`NEUTRAL_SAMPLING` (penalties,
``min_p``, ``min_new_tokens``, grammars) at any value but their neutral one. Fields of
``GenerateReqInput`` that only tune routing or logging (``log_metrics``, ``routed_dp_rank``...)
are accepted and ignored.
"""

from __future__ import annotations

import collections
import difflib
import math
import uuid
from dataclasses import dataclass
from typing import Any

from agentrl.engine.base import GREEDY_BELOW, Completion, SamplingParams
from agentrl.utils.safe_json import is_int

DEFAULT_MAX_NEW_TOKENS = 128
"""SGLang's default ``max_new_tokens`` when a request does not set it."""
MAX_ITEMS = 65_536
"""Most completions (prompts x ``n``) one request may ask for."""
MAX_STOP_STRINGS = 64
MAX_STOP_CHARS = 1024
"""Most stop strings, and longest, one prompt may give (each is searched for after every generated token)."""
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38

SUPPORTED_FIELDS = frozenset({
    "rid", "text", "input_ids", "sampling_params", "return_logprob", "return_text_in_logprobs",
    "stream", "logprob_start_len", "top_logprobs_num", "token_ids_logprob", "priority",
})
UNSUPPORTED_FIELDS = frozenset({
    "input_embeds", "image_data", "video_data", "audio_data", "lora_path", "lora_id",
    "session_params", "custom_logit_processor", "return_hidden_states", "return_routed_experts",
    "positional_embed_overrides", "return_entropy", "return_sampling_mask",
    "return_flat_raw_top_logprobs", "multi_item_delimiter_indices", "return_indexer_topk",
    "max_thinking_tokens", "require_reasoning", "return_bytes",
})
"""``GenerateReqInput`` fields that change the answer in ways this server cannot honour."""
IGNORED_FIELDS = frozenset({
    "session_id", "mm_hashes", "mm_content_hashes", "use_audio_in_video", "video_config",
    "return_flat_raw_top_logprobs_b64", "log_metrics", "routed_experts_start_len", "modalities",
    "bootstrap_host", "bootstrap_port", "bootstrap_room", "bootstrap_pair_key", "decode_tp_size",
    "routed_dp_rank", "data_parallel_rank", "disagg_prefill_dp_rank", "kv_router_hint",
    "routing_key", "conversation_id", "http_worker_ipc", "background", "extra_key",
    "no_logs", "custom_labels", "return_prompt_token_ids", "external_trace_header",
    "received_time", "need_wait_for_mm_inputs", "num_items_assigned", "encoder_urls",
    "max_dynamic_patch", "min_dynamic_patch", "image_max_dynamic_patch",
    "video_max_dynamic_patch", "images_config", "cache_salt",
})
"""``GenerateReqInput`` fields about routing, scheduling or logging: accepted, no effect here."""

_TEXT_OPTIONS = ("skip_special_tokens", "no_stop_trim", "spaces_between_special_tokens")
NEUTRAL_SAMPLING = {"min_new_tokens": 0, "frequency_penalty": 0, "presence_penalty": 0, "repetition_penalty": 1,
                    "min_p": 0, "regex": None, "json_schema": None, "ebnf": None, "structural_tag": None,
                    "custom_params": None, "logit_bias": None}
"""SGLang ``sampling_params`` this server cannot honour, with the value that leaves sampling unchanged:
accepted at that value (clients send SGLang's defaults), refused otherwise."""


class RequestError(ValueError):
    """A malformed request: the message is sent back to the client with status 400."""


@dataclass
class GenerateItem:
    """One prompt to complete: a row of a (possibly batched, possibly ``n``-fold) request."""

    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    return_logprob: bool = False
    return_text_in_logprobs: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    priority: int = 0
    """SGLang's: higher values first (the engine's :func:`~agentrl.engine.base.request_priority` is its negative)."""


@dataclass
class GenerateRequest:
    """A parsed ``/generate`` body."""

    items: list[GenerateItem]
    is_single: bool
    """True when the answer is one dict rather than a list (one prompt, ``n == 1``)."""
    stream: bool = False


def parse_generate_request(
    body: Any,
    *,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_prompt_chars: int | None = None,
) -> GenerateRequest:
    """Validate an SGLang ``/generate`` body and expand it into items.

    ``max_prompt_chars``: a ``text`` prompt longer than this is refused without tokenizing it
    (the server derives it from the context length and the longest token of the vocabulary).

    Batches and parallel samples expand prompt-major, as SGLang does: with prompts ``p0, p1``
    and ``n = 2`` the items are ``p0, p0, p1, p1``. A string ``rid`` on a batch becomes
    ``rid_0, rid_1, ...``.

    Example::

        >>> req = parse_generate_request({"input_ids": [[1, 2], [3]], "rid": "r"})
        >>> [(i.rid, i.input_ids) for i in req.items], req.is_single
        ([('r_0', [1, 2]), ('r_1', [3])], False)
    """
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object; got {type(body).__name__}")
    _check_fields(body)
    prompts, is_single = _prompts(body, tokenizer, max_prompt_chars)
    batch = len(prompts)
    params = _sampling_dicts(body.get("sampling_params"), batch)
    n = _parallel_n(params)
    if n > 1:
        is_single = False
    return_logprob = _per_prompt_bool(body, "return_logprob", batch)
    text_in_logprobs = body.get("return_text_in_logprobs")
    if text_in_logprobs is not None and not isinstance(text_in_logprobs, bool):
        raise RequestError(f"'return_text_in_logprobs' must be true or false; got {_short(text_in_logprobs)}")
    rids = _rids(body.get("rid"), batch * n, batch)
    priority = body.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise RequestError(f"'priority' must be an integer; got {_short(priority)}")

    items: list[GenerateItem] = []
    for p, (ids, raw) in enumerate(zip(prompts, params)):
        _check_token_ids(ids, vocab_size, where=f"input_ids[{p}]" if not is_single else "input_ids")
        sampling, options = _sampling(raw, default_max_new_tokens, where=p if batch > 1 else None)
        for k in range(n):
            items.append(GenerateItem(
                rid=rids[p * n + k], input_ids=list(ids), sampling=sampling.replace(),
                return_logprob=return_logprob[p], return_text_in_logprobs=bool(text_in_logprobs),
                skip_special_tokens=options["skip_special_tokens"],
                no_stop_trim=options["no_stop_trim"], priority=priority or 0,
            ))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false; got {stream!r}")
    return GenerateRequest(items=items, is_single=is_single, stream=stream)


def finish_reason_dict(completion: Completion, max_new_tokens: int) -> dict[str, Any]:
    """SGLang's ``meta_info.finish_reason``: ``{"type": "stop"|"length"|"abort", ...}``."""
    if completion.finish_reason == "length":
        return {"type": "length", "length": max_new_tokens}
    if completion.finish_reason == "abort":
        return {"type": "abort", "message": "request aborted"}
    matched = completion.matched_stop
    if matched is None and completion.token_ids:
        matched = completion.token_ids[-1]  # an eos token
    return {"type": "stop", "matched": matched}


def output_dict(
    item: GenerateItem,
    completion: Completion,
    *,
    tokenizer: Any,
    weight_version: str,
    finished: bool = True,
    e2e_latency: float | None = None,
) -> dict[str, Any]:
    """The answer for one item, shaped like SGLang's: ``text``, ``output_ids``, ``meta_info``.

    ``finished=False`` builds a streaming chunk (cumulative tokens, ``finish_reason`` null).
    ``text`` is left out when the server has no tokenizer (as SGLang's ``skip_tokenizer_init``).
    """
    ids = list(completion.token_ids)
    meta: dict[str, Any] = {
        "id": item.rid,
        "finish_reason": finish_reason_dict(completion, item.sampling.max_new_tokens) if finished else None,
        "prompt_tokens": completion.prompt_tokens or len(item.input_ids),
        "completion_tokens": len(ids),
        "cached_tokens": 0,
        "weight_version": weight_version,
    }
    if e2e_latency is not None:
        meta["e2e_latency"] = round(e2e_latency, 6)
    if item.return_logprob:
        texts = ([_decode(tokenizer, [t], False) for t in ids]
                 if item.return_text_in_logprobs and tokenizer is not None else [None] * len(ids))
        meta["output_token_logprobs"] = [
            [_finite(lp), t, s] for lp, t, s in zip(completion.logprobs, ids, texts)
        ]
        meta["input_token_logprobs"] = []
        meta["output_top_logprobs"] = []
        meta["input_top_logprobs"] = []
    out: dict[str, Any] = {}
    if tokenizer is not None:
        out["text"] = _output_text(item, completion, tokenizer, finished)
    out["output_ids"] = ids
    out["meta_info"] = meta
    return out


# --- parsing helpers ---------------------------------------------------------------------


def _check_fields(body: dict[str, Any]) -> None:
    known = SUPPORTED_FIELDS | UNSUPPORTED_FIELDS | IGNORED_FIELDS
    for key, value in body.items():
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(SUPPORTED_FIELDS), n=1, cutoff=0.6) if len(key) < 100 else []
            raise RequestError(
                f"unknown field {_short(key)} in the /generate request"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" Supported fields: {sorted(SUPPORTED_FIELDS)}"
            )
        if key in UNSUPPORTED_FIELDS and value not in (None, False, [], {}, 0, ""):
            raise RequestError(f"field {key!r} is not supported by this server (it serves token and text prompts only)")
    if body.get("logprob_start_len") not in (None, -1):
        raise RequestError("prompt logprobs (logprob_start_len >= 0) are not supported; send logprob_start_len=-1 or leave it out")
    if body.get("top_logprobs_num") not in (None, 0):
        raise RequestError("top logprobs (top_logprobs_num > 0) are not supported; leave it out or send 0")
    if body.get("token_ids_logprob") not in (None, []):
        raise RequestError("token_ids_logprob is not supported; leave it out")


def _prompts(body: dict[str, Any], tokenizer: Any, max_chars: int | None) -> tuple[list[list[int]], bool]:
    text, input_ids = body.get("text"), body.get("input_ids")
    if text is None and input_ids is None:
        raise RequestError("give either 'text' or 'input_ids' (a prompt, or a list of prompts for a batch)")
    if text is not None and input_ids is not None:
        raise RequestError("give either 'text' or 'input_ids', not both")
    if input_ids is not None:
        if not isinstance(input_ids, list) or not input_ids:
            raise RequestError(f"'input_ids' must be a non-empty list of token ids (or a list of such lists); got {_short(input_ids)}")
        if all(is_int(t) for t in input_ids):
            return [list(input_ids)], True
        if all(isinstance(row, list) for row in input_ids):
            for i, row in enumerate(input_ids):
                if not row or not all(is_int(t) for t in row):
                    raise RequestError(f"input_ids[{i}] must be a non-empty list of integer token ids; got {_short(row)}")
            return [list(r) for r in input_ids], False
        raise RequestError(f"'input_ids' must be a list of integer token ids or a list of such lists; got {_short(input_ids)}")
    if tokenizer is None:
        raise RequestError("this server was started without a tokenizer: send 'input_ids' instead of 'text'")
    if isinstance(text, str):
        return [_encode(tokenizer, text, "text", max_chars)], True
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        return [_encode(tokenizer, t, f"text[{i}]", max_chars) for i, t in enumerate(text)], False
    raise RequestError(f"'text' must be a string or a non-empty list of strings; got {_short(text)}")


def _encode(tokenizer: Any, text: str, where: str, max_chars: int | None) -> list[int]:
    if max_chars is not None and len(text) > max_chars:
        raise RequestError(f"{where} has {len(text):,} characters: more tokens than the server's context can hold "
                           f"(at most {max_chars:,} characters); shorten the prompt")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise RequestError(f"{where} is empty after tokenization; send a non-empty prompt")
    return ids


def _check_token_ids(ids: list[int], vocab_size: int | None, where: str) -> None:
    bad = [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise RequestError(f"{where} has token ids out of range {bound}: {bad[:5]}")


def _sampling_dicts(raw: Any, batch: int) -> list[dict[str, Any]]:
    if raw is None:
        return [{} for _ in range(batch)]
    if isinstance(raw, dict):
        return [dict(raw) for _ in range(batch)]
    if isinstance(raw, list) and all(isinstance(d, dict) for d in raw):
        if len(raw) != batch:
            raise RequestError(f"'sampling_params' is a list of {len(raw)} dicts but the batch has {batch} prompts")
        return [dict(d) for d in raw]
    raise RequestError(f"'sampling_params' must be a dict (or a list of dicts, one per prompt); got {_short(raw)}")


def _parallel_n(params: list[dict[str, Any]]) -> int:
    ns = [d.get("n", 1) for d in params]
    bad = next((n for n in ns if not is_int(n) or n < 1), None)
    if bad is not None:
        raise RequestError(f"sampling_params 'n' must be an integer >= 1; got {_short(bad)}")
    if len(set(ns)) > 1:
        raise RequestError(f"sampling_params 'n' must be the same for every prompt of a batch; got {sorted(set(ns))[:10]}")
    if len(params) * ns[0] > MAX_ITEMS:
        raise RequestError(f"{len(params)} prompts x n={ns[0]} samples is more than the {MAX_ITEMS:,} completions "
                           "one request may ask for; split the batch")
    return ns[0]


def _per_prompt_bool(body: dict[str, Any], key: str, batch: int) -> list[bool]:
    value = body.get(key)
    if value is None:
        return [False] * batch
    if isinstance(value, bool):
        return [value] * batch
    if isinstance(value, list) and len(value) == batch and all(isinstance(v, bool) for v in value):
        return list(value)
    raise RequestError(f"{key!r} must be true/false (or a list of {batch} booleans); got {_short(value)}")


def _rids(raw: Any, total: int, batch: int) -> list[str]:
    if raw is None:
        return [uuid.uuid4().hex for _ in range(total)]
    if isinstance(raw, str):
        return [raw] if total == 1 else [f"{raw}_{i}" for i in range(total)]
    if isinstance(raw, list) and all(isinstance(r, str) for r in raw):
        if len(raw) != batch:
            raise RequestError(f"'rid' is a list of {len(raw)} ids but the batch has {batch} prompts")
        if len(set(raw)) != len(raw):
            counts = collections.Counter(raw)
            raise RequestError(f"'rid' has duplicate request ids: {sorted(r for r, c in counts.items() if c > 1)[:10]}")
        n = total // batch
        return list(raw) if n == 1 else [f"{r}_{k}" for r in raw for k in range(n)]
    raise RequestError(f"'rid' must be a string or a list of strings; got {_short(raw)}")


def _sampling(raw: dict[str, Any], default_max_new_tokens: int, where: int | None) -> tuple[SamplingParams, dict[str, bool]]:
    d = dict(raw)
    d.pop("n", None)
    options = {key: d.pop(key, None) for key in _TEXT_OPTIONS}
    for key, value in options.items():
        if value is not None and not isinstance(value, bool):
            raise RequestError(f"sampling_params {key!r} must be true or false; got {_short(value)}")
    options["skip_special_tokens"] = options["skip_special_tokens"] is not False
    options["no_stop_trim"] = options["no_stop_trim"] is True
    _refuse_unsupported(d)
    if d.get("max_new_tokens") is None:
        d["max_new_tokens"] = default_max_new_tokens
    _check_types(d)
    if 0 < (d.get("temperature") or 0) < GREEDY_BELOW:
        d["temperature"] = 0.0  # SGLang: greedy (logits / 1e-40 in float32 are inf, then NaN)
    try:
        sampling = SamplingParams.from_sglang(d)
    except (ValueError, TypeError) as exc:
        prefix = "sampling_params" if where is None else f"sampling_params[{where}]"
        raise RequestError(f"bad {prefix}: {exc}") from None
    return sampling, options


def _refuse_unsupported(d: dict[str, Any]) -> None:
    """Drop the :data:`NEUTRAL_SAMPLING` keys of ``d`` that hold their neutral value; refuse the others
    (a penalty or a grammar silently ignored would give samples, and logprobs, of another distribution)."""
    for key, neutral in NEUTRAL_SAMPLING.items():
        if key not in d:
            continue
        value = d.pop(key)
        if value is None or value == neutral and not isinstance(value, bool) or value in ({}, ""):
            continue
        raise RequestError(f"sampling_params {key!r} = {_short(value)} is not supported by this server "
                           f"(it samples with temperature, top_p and top_k only); leave it out"
                           + (f" or send {neutral!r}" if neutral is not None else ""))


_NUMBER_KEYS = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int,
                "sampling_seed": int, "seed": int}


def _check_types(d: dict[str, Any]) -> None:
    for key, kind in _NUMBER_KEYS.items():
        value = d.get(key)
        if value is None:
            continue
        ok = is_int(value) if kind is int else (isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok or (kind is float and not math.isfinite(value)):
            raise RequestError(f"sampling_params {key!r} must be {'an integer' if kind is int else 'a finite number'}; got {value!r}")
        if kind is int and not -(2**63) <= value < 2**63:
            raise RequestError(f"sampling_params {key!r} must fit in 64 bits; got {_short(value)}")
        if kind is float and abs(value) > FLOAT32_MAX:
            raise RequestError(f"sampling_params {key!r} must be at most {FLOAT32_MAX:.4g} (float32); got {value!r}")
    top_p = d.get("top_p")
    if top_p is not None and 0 < top_p < FLOAT32_TINY:
        raise RequestError(f"sampling_params 'top_p' must be at least {FLOAT32_TINY:.4g} (float32); got {top_p!r}")
    stop = d.get("stop")
    stops: list[Any] = [] if stop is None else [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else [None]
    if not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"sampling_params 'stop' must be a non-empty string or a list of non-empty strings; got {_short(stop)}")
    if len(stops) > MAX_STOP_STRINGS or max(map(len, stops), default=0) > MAX_STOP_CHARS:
        raise RequestError(f"sampling_params 'stop' may hold at most {MAX_STOP_STRINGS} strings of at most "
                           f"{MAX_STOP_CHARS} characters (each is searched for after every token); got {len(stops)} "
                           f"of up to {max(map(len, stops)):,}")
    stop_ids = d.get("stop_token_ids")
    if stop_ids is not None and not (isinstance(stop_ids, list) and all(is_int(t) for t in stop_ids)):
        raise RequestError(f"sampling_params 'stop_token_ids' must be a list of integers; got {_short(stop_ids)}")
    if "ignore_eos" in d and not isinstance(d["ignore_eos"], bool):
        raise RequestError(f"sampling_params 'ignore_eos' must be true or false; got {d['ignore_eos']!r}")


# --- answer helpers ----------------------------------------------------------------------


def _output_text(item: GenerateItem, completion: Completion, tokenizer: Any, finished: bool) -> str:
    ids = list(completion.token_ids)
    matched = completion.matched_stop
    stop_token = finished and completion.finish_reason == "stop" and is_int(matched)
    if stop_token and ids and ids[-1] == matched and not item.no_stop_trim:
        ids = ids[:-1]  # SGLang trims the matched stop token from the text (not from output_ids)
    text = _decode(tokenizer, ids, item.skip_special_tokens)
    if finished and isinstance(matched, str) and matched and not item.no_stop_trim:
        cut = text.rfind(matched)
        if cut >= 0:
            text = text[:cut]
    return text


def _decode(tokenizer: Any, ids: list[int], skip_special_tokens: bool) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _finite(x: float) -> float | None:
    """JSON has no infinities: a non-finite logprob goes out as null (as SGLang's orjson does)."""
    return float(x) if math.isfinite(x) else None


def _short(x: Any, limit: int = 80) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[: limit - 3] + "..."
