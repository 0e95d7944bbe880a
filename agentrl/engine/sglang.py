"""The SGLang engine: an :class:`~agentrl.engine.base.Engine` over SGLang servers via HTTP.

:class:`SGLangEngine` talks to one or more servers that speak SGLang's native API (SGLang's own
``sglang.launch_server``, an ``sglang_router`` in front of several, or ``agentrl serve``):
token ids in (``POST /generate`` with ``input_ids`` and ``return_logprob``), token ids and
logprobs out. It pools connections (one ``httpx.AsyncClient``), spreads requests over several
server URLs (least-loaded or round-robin), and retries with exponential back-off when a server
cannot be reached or drops the connection (a server restarting), raising a clear
:class:`~agentrl.engine.base.EngineError` after the last try.

:func:`launch_sglang` starts SGLang servers (and a router) as subprocesses and returns a
:class:`SGLangCluster` that waits for health and shuts them down on exit.

Weights: :meth:`SGLangEngine.update_weights` loads an HF folder through
``/update_weights_from_disk`` on every server. The in-memory paths
(:meth:`~SGLangEngine.update_weights_from_tensor`, :meth:`~SGLangEngine.init_weights_update_group`
+ :meth:`~SGLangEngine.update_weights_from_distributed`) are thin calls to SGLang's endpoints of the
same names; they need real SGLang servers (``agentrl serve`` answers them with a 400).

Example (against ``agentrl serve --engine fake --port 30000``)::

    >>> async def main():                                                  # doctest: +SKIP
    ...     async with SGLangEngine("http://127.0.0.1:30000") as engine:
    ...         c = await engine.generate([1, 2, 3], SamplingParams(max_new_tokens=4))
    ...         return c.token_ids, c.finish_reason
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, cast

import httpx

from agentrl.engine._sglang_launch import SGLangCluster, launch_sglang
from agentrl.engine.base import Completion, EngineError, FinishReason, SamplingParams, current_request_priority

log = logging.getLogger(__name__)

__all__ = ["SGLangCluster", "SGLangEngine", "launch_sglang"]

_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
              httpx.WriteError)
"""The server is down, restarting, or died while answering: try again (maybe elsewhere)."""
_RETRYABLE_STATUS = (502, 503, 504)


class SGLangEngine:
    """An engine backed by SGLang-compatible HTTP servers.

    Args:
        urls: one server URL, a list of server URLs, or one sglang-router URL.
        worker_urls: the servers behind a router, for control calls that must reach every
            server (weight updates, flush, abort-all). Default: ``urls`` themselves; with a single
            URL, the router's worker list is asked for (``/list_workers`` or ``/workers``).
        timeout: seconds to wait for one answer (a long generation).
        connect_timeout: seconds to wait for a connection.
        max_retries: retries after a connection error, a dropped connection or a 502/503/504.
        backoff: first retry delay in seconds; doubles on each retry (with jitter).
        max_backoff: longest delay between retries.
        max_connections: size of the connection pool (all servers together).
        policy: ``"least_loaded"`` (fewest requests in flight from this client) or
            ``"round_robin"``.

    Example::

        >>> engine = SGLangEngine(["http://10.0.0.1:30000", "http://10.0.0.2:30000"])
        >>> engine.urls
        ['http://10.0.0.1:30000', 'http://10.0.0.2:30000']
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        worker_urls: Sequence[str] | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_connections: int = 256,
        policy: Literal["least_loaded", "round_robin"] = "least_loaded",
    ) -> None:
        self.urls = [_normalise_url(u) for u in ([urls] if isinstance(urls, str) else list(urls))]
        if not self.urls:
            raise ValueError("SGLangEngine needs at least one server URL; got none")
        if policy not in ("least_loaded", "round_robin"):
            raise ValueError(f"policy must be 'least_loaded' or 'round_robin'; got {policy!r}")
        if max_retries < 0 or backoff < 0:
            raise ValueError(f"max_retries and backoff must be >= 0; got {max_retries}, {backoff}")
        self.worker_urls = [_normalise_url(u) for u in worker_urls] if worker_urls else None
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.max_connections = max_connections
        self.policy = policy
        self.num_retries = 0
        """How many times a request was retried (a metric: restarts, flaky networks)."""
        self._weight_version = 0
        self._load = {u: 0 for u in self.urls}
        self._down_until = {u: 0.0 for u in self.urls}
        self._failures = {u: 0 for u in self.urls}  # consecutive connection failures per server
        self._turn = itertools.count()
        self._inflight: dict[str, tuple[str, str]] = {}
        """rid -> (url, rid sent on the current attempt) of every request in flight."""
        self._aborted: set[str] = set()
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    # --- the Engine protocol -----------------------------------------------------------------

    @property
    def weight_version(self) -> int:
        return self._weight_version

    async def generate(self, input_ids: list[int], sampling: SamplingParams, *, rid: str | None = None) -> Completion:
        """``POST /generate`` with ``input_ids``; the answer's ``output_ids``, logprobs and
        ``finish_reason`` become a :class:`Completion`. Retries (with a fresh request id suffix,
        so a server that still runs the first try never sees a duplicate id) on connection loss."""
        if not input_ids:
            raise ValueError("input_ids is empty; a prompt needs at least one token")
        rid = rid or uuid.uuid4().hex
        payload: dict[str, Any] = {"input_ids": list(input_ids), "sampling_params": sampling.to_sglang(),
                                   "return_logprob": True}
        priority = current_request_priority()
        if priority:  # agentrl's lower-first as SGLang's higher-first (used with --enable-priority-scheduling)
            payload["priority"] = -priority
        self._inflight[rid] = ("", rid)
        try:
            attempt_rids = (rid if k == 0 else f"{rid}.retry{k}" for k in itertools.count())
            data = await self._call("POST", "/generate", payload, rid=rid, attempt_rids=attempt_rids)
        finally:
            self._inflight.pop(rid, None)
            aborted = rid in self._aborted
            self._aborted.discard(rid)
        if data is None:  # aborted while waiting to retry
            return Completion([], [], "abort", self._weight_version, len(input_ids))
        completion = self._parse(data, len(input_ids))
        if aborted and completion.finish_reason != "abort":
            log.debug("request %s finished before its abort arrived", rid)
        return completion

    async def update_weights(self, weights: Any = None, *, version: int | None = None,
                             abort_all_requests: bool = False) -> int:
        """Load the HF model folder ``weights`` on every server (``/update_weights_from_disk``).

        The path must be readable by the servers. The new version (``version``, else the current
        one + 1) is sent as SGLang's ``weight_version`` and comes back in each answer's
        ``meta_info``. Raises :class:`EngineError` naming each server that failed.
        """
        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(
                "SGLangEngine.update_weights needs the path of a Hugging Face model folder the servers can "
                f"read; got {type(weights).__name__}. For in-memory tensors use update_weights_from_tensor or "
                "update_weights_from_distributed (SGLang servers only)"
            )
        new = self._weight_version + 1 if version is None else int(version)
        payload = {"model_path": os.fspath(weights), "weight_version": str(new),
                   "abort_all_requests": abort_all_requests, "flush_cache": True}
        await self._broadcast("/update_weights_from_disk", payload, what=f"update weights from {os.fspath(weights)!r}")
        self._weight_version = new
        return new

    async def update_weights_from_disk(self, path: str | os.PathLike, *, version: int | None = None) -> int:
        """:meth:`update_weights` from the HF folder at ``path`` (``LoadsWeightsFromDisk``)."""
        return await self.update_weights(path, version=version)

    async def abort(self, rid: str | None = None) -> None:
        """Abort one request (by the ``rid`` given to :meth:`generate`) or, with None, every
        request on every server. Best effort: unreachable servers are logged, not raised."""
        if rid is None:
            self._aborted.update(self._inflight)
            await self._broadcast("/abort_request", {"abort_all": True}, what="abort all", best_effort=True)
            return
        url, sent_rid = self._inflight.get(rid, ("", rid))
        if rid in self._inflight:
            self._aborted.add(rid)
        behind_router = self.worker_urls is not None and url not in self.worker_urls  # None or a non-empty list
        targets = [url] if url and not behind_router else await self._control_urls()
        await asyncio.gather(*(self._post_best_effort(u, "/abort_request", {"rid": sent_rid}) for u in targets))

    async def health(self) -> bool:
        """True when at least one server answers ``/health_generate`` with 200 (it can generate)."""
        return any((await self.health_status()).values())

    async def require_health(self) -> None:
        """Raise :class:`EngineError` when no server answers ``/health_generate`` (log those that do not)."""
        healthy = await self.health_status()
        if not any(healthy.values()):
            raise EngineError(f"no server answers /health_generate at {', '.join(healthy)}: is it running? "
                              "(agentrl serve --model-path MODEL, or SGLang's launch_server)")
        if not all(healthy.values()):
            log.warning("not answering /health_generate: %s", ", ".join(u for u, ok in healthy.items() if not ok))

    # --- more of SGLang's API ----------------------------------------------------------------

    async def health_status(self) -> dict[str, bool]:
        """``/health_generate`` of each URL in :attr:`urls`: url -> healthy."""
        async def one(url: str) -> bool:
            try:
                r = await self._http().get(url + "/health_generate", timeout=min(self.timeout, 60.0))
                return r.status_code == 200
            except httpx.HTTPError:
                return False
        return dict(zip(self.urls, await asyncio.gather(*(one(u) for u in self.urls))))

    async def get_model_info(self) -> dict[str, Any]:
        return await self._call("GET", "/get_model_info", None)

    async def get_server_info(self) -> dict[str, Any]:
        return await self._call("GET", "/get_server_info", None)

    async def flush_cache(self) -> None:
        """Drop every server's prefix cache."""
        await self._broadcast("/flush_cache", {}, what="flush cache", json_answer=False)

    async def update_weights_from_tensor(self, serialized_named_tensors: list[str], *, url: str | None = None,
                                         load_format: str | None = None, flush_cache: bool = True,
                                         version: int | None = None) -> int:
        """SGLang only: ``/update_weights_from_tensor`` on one server.

        ``serialized_named_tensors`` holds one entry per tensor-parallel rank, each made on the
        GPU process with SGLang's ``MultiprocessingSerializer.serialize(named_tensors,
        output_str=True)`` (CUDA IPC handles, so the trainer must share the server's GPUs).
        With several servers, pass ``url`` and call once per server.
        """
        target = self._single_target(url, "update_weights_from_tensor")
        new = self._weight_version + 1 if version is None else int(version)
        payload = {"serialized_named_tensors": list(serialized_named_tensors), "load_format": load_format,
                   "flush_cache": flush_cache, "weight_version": str(new)}
        await self._control(target, "/update_weights_from_tensor", payload, what="update weights from tensor")
        self._weight_version = new
        return new

    async def init_weights_update_group(self, master_address: str, master_port: int, rank_offset: int,
                                        world_size: int, *, group_name: str = "weight_update_group",
                                        backend: str = "nccl", url: str | None = None) -> None:
        """SGLang only: join the server's ranks to a process group rooted at the trainer
        (rank 0), for :meth:`update_weights_from_distributed`. One call per server, each with its
        own ``rank_offset`` (1 + the tp ranks of the servers before it)."""
        target = self._single_target(url, "init_weights_update_group")
        payload = {"master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
                   "world_size": world_size, "group_name": group_name, "backend": backend}
        await self._control(target, "/init_weights_update_group", payload, what="init weights update group")

    async def update_weights_from_distributed(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                                              *, group_name: str = "weight_update_group", flush_cache: bool = True,
                                              version: int | None = None) -> int:
        """SGLang only: every server receives the named tensors by a broadcast from the trainer.
        Await this while the trainer runs ``torch.distributed.broadcast`` of the same tensors in
        the same order (the servers block until they arrive)."""
        new = self._weight_version + 1 if version is None else int(version)
        payload = {"names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name,
                   "flush_cache": flush_cache, "weight_version": str(new)}
        await self._broadcast("/update_weights_from_distributed", payload, what="update weights from distributed")
        self._weight_version = new
        return new

    def note_weight_version(self, version: int) -> None:
        """The servers now hold weight version ``version``, sent by someone else (a trainer that posts
        ``/update_weights_from_distributed`` to them itself)."""
        self._weight_version = int(version)

    async def close(self) -> None:
        """Close the HTTP client (the servers keep running); as :meth:`aclose` (``Closable``)."""
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None

    async def __aenter__(self) -> "SGLangEngine":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # --- plumbing ----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop (a client cannot cross event loops)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                                             limits=limits)
            self._client_loop = loop
        return self._client

    def _pick(self) -> str:
        now = time.monotonic()
        up = [u for u in self.urls if self._down_until[u] <= now] or [min(self.urls, key=self._down_until.__getitem__)]
        turn = next(self._turn)
        if self.policy == "round_robin":
            return up[turn % len(up)]
        rotated = up[turn % len(up):] + up[: turn % len(up)]  # ties go round the list
        return min(rotated, key=self._load.__getitem__)

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None, *, url: str | None = None,
                    rid: str | None = None, attempt_rids: Any = None) -> Any:
        """One request with retries; returns the JSON answer (None if ``rid`` was aborted)."""
        last_error, target = "", url or self.urls[0]
        for attempt in range(self.max_retries + 1):
            if rid is not None and rid in self._aborted:
                return None
            target = url or self._pick()
            body = payload
            if attempt_rids is not None:  # generate's call: with rid and a payload
                assert rid is not None and payload is not None
                sent_rid = next(attempt_rids)
                body = {**payload, "rid": sent_rid}
                self._inflight[rid] = (target, sent_rid)
            self._load[target] = self._load.get(target, 0) + 1
            try:
                response = await self._http().request(method, target + path, json=body)
            except _RETRYABLE as exc:
                last_error = f"{type(exc).__name__}: {exc or 'connection lost'}"
                # a server that keeps failing stays out of rotation longer (doubling, capped), so a
                # dead one is not picked again while live ones are busy
                self._failures[target] = self._failures.get(target, 0) + 1
                hold = min(self.max_backoff, self.backoff * 2 ** self._failures[target])
                self._down_until[target] = time.monotonic() + hold
            except httpx.TimeoutException as exc:
                raise EngineError(f"{method} {target}{path} timed out ({type(exc).__name__}, timeout {self.timeout} s); "
                                  "raise SGLangEngine(timeout=...) for long generations") from exc
            else:
                if response.status_code in _RETRYABLE_STATUS:
                    last_error = f"HTTP {response.status_code}: {_error_message(response)}"
                elif response.status_code >= 400:
                    raise EngineError(f"{method} {target}{path} failed with HTTP {response.status_code}: "
                                      f"{_error_message(response)}")
                else:
                    self._down_until[target] = 0.0
                    self._failures[target] = 0
                    return response.json()
            finally:
                self._load[target] -= 1
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
                log.warning("%s %s%s failed (%s); retry %d/%d in %.2f s", method, target, path, last_error,
                            attempt + 1, self.max_retries, delay)
                self.num_retries += 1
                await asyncio.sleep(delay)
        raise EngineError(f"{method} {path} failed after {self.max_retries + 1} attempts; last server tried: "
                          f"{target}; last error: {last_error}. Is the SGLang server running at that address?")

    async def _control_urls(self) -> list[str]:
        """Every server (not the router): where weight updates, flushes and abort-alls go."""
        if self.worker_urls:
            return self.worker_urls
        if len(self.urls) > 1:
            return self.urls
        url = self.urls[0]
        for path, key in (("/list_workers", "urls"), ("/workers", "workers")):
            try:
                r = await self._http().get(url + path, timeout=self.connect_timeout)
            except httpx.HTTPError:
                break
            if r.status_code == 200:
                try:
                    found = r.json().get(key) or []
                except ValueError:
                    continue
                workers = [_normalise_url(w["url"] if isinstance(w, dict) else w) for w in found]
                if workers:
                    return workers
        return [url]

    def _single_target(self, url: str | None, what: str) -> str:
        if url is not None:
            return _normalise_url(url)
        if self.worker_urls and len(self.worker_urls) > 1 or len(self.urls) > 1:
            raise ValueError(f"{what} is per server: pass url= (one call per server)")
        return (self.worker_urls or self.urls)[0]

    async def _control(self, url: str, path: str, payload: dict[str, Any], *, what: str,
                       json_answer: bool = True) -> None:
        try:
            data = await self._call("POST", path, payload, url=url)
        except EngineError as exc:
            raise EngineError(f"{what} failed on {url}: {exc}") from exc
        except ValueError:  # not JSON (e.g. /flush_cache answers with text)
            if json_answer:
                raise
            return
        if json_answer and isinstance(data, dict) and data.get("success") is False:
            raise EngineError(f"{what} failed on {url}: {data.get('message')}")

    async def _broadcast(self, path: str, payload: dict[str, Any], *, what: str, best_effort: bool = False,
                         json_answer: bool = True) -> None:
        targets = await self._control_urls()
        if best_effort:
            await asyncio.gather(*(self._post_best_effort(u, path, payload) for u in targets))
            return
        results = await asyncio.gather(*(self._control(u, path, payload, what=what, json_answer=json_answer)
                                         for u in targets), return_exceptions=True)
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        if errors:
            raise EngineError(f"{what}: {len(errors)} of {len(targets)} server(s) failed: " + "; ".join(errors))

    async def _post_best_effort(self, url: str, path: str, payload: dict[str, Any]) -> None:
        try:
            r = await self._http().post(url + path, json=payload, timeout=self.connect_timeout)
            if r.status_code >= 400:
                log.warning("POST %s%s -> HTTP %d: %s", url, path, r.status_code, _error_message(r))
        except httpx.HTTPError as exc:
            log.warning("POST %s%s failed: %s", url, path, exc)

    def _parse(self, data: Any, prompt_len: int) -> Completion:
        if isinstance(data, list):  # a single request never gets a list; be clear if it does
            raise EngineError(f"expected one /generate answer, got a list of {len(data)}")
        try:
            ids = [int(t) for t in data["output_ids"]]
            meta = data["meta_info"]
            reason = meta.get("finish_reason") or {}
            kind = reason.get("type") if isinstance(reason, dict) else str(reason)
            entries = meta.get("output_token_logprobs")
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"malformed /generate answer (expected output_ids and meta_info): {str(data)[:300]}") from exc
        if kind not in ("stop", "length", "abort"):
            raise EngineError(f"unknown finish_reason {reason!r} in /generate answer; expected stop, length or abort")
        if entries is None:
            raise EngineError("the /generate answer has no meta_info.output_token_logprobs; the server ignored return_logprob")
        if len(entries) != len(ids) or any(int(e[1]) != t for e, t in zip(entries, ids)):
            raise EngineError(f"output_token_logprobs ({len(entries)} entries) do not match output_ids ({len(ids)} tokens)")
        logprobs = [float(e[0]) if e[0] is not None else float("-inf") for e in entries]
        matched = reason.get("matched") if isinstance(reason, dict) and kind == "stop" else None
        return Completion(ids, logprobs, cast(FinishReason, kind), _parse_version(meta.get("weight_version"), self._weight_version),
                          int(meta.get("prompt_tokens", prompt_len)), matched)


def _parse_version(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default  # SGLang's initial version is the string "default"


def _normalise_url(url: str) -> str:
    url = str(url).strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        return str(data.get("message") or (err.get("message") if isinstance(err, dict) else err) or data)[:500]
    return str(data)[:500]
