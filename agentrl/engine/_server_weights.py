"""``/update_weights_from_disk`` of ``agentrl serve``: weight files read off the engine and the event loop.

The files are read into CPU memory in a daemon thread of their own, under the server's
``weight_load_timeout``, and the engine gets tensors: its worker never opens a file, so a file
that blocks on open or read (a FIFO, a hung network file system) costs that one request a 400,
not every request. Files that are not regular files are refused before they are opened. Reading
first needs host memory for one copy of the weights.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

log = logging.getLogger("agentrl.engine.server")

WEIGHT_LOAD_TIMEOUT_S = 600.0
"""Default seconds ``/update_weights_from_disk`` may spend reading the weight files."""


async def update_weights_from_disk(state: Any, body: dict[str, Any]) -> JSONResponse:
    def fail(message: str) -> JSONResponse:
        return JSONResponse({"success": False, "message": message, "num_paused_requests": 0}, status_code=400)

    model_path = body.get("model_path")
    if not isinstance(model_path, str) or not model_path:
        return fail(f"'model_path' must be the path of a Hugging Face model folder; got {model_path!r}")
    try:
        label, version = weight_version_label(body.get("weight_version"))
        abort_all, flush_after = flag(body, "abort_all_requests", False), flag(body, "flush_cache", True)
    except ValueError as exc:
        return fail(str(exc))
    if state.weight_read is not None and not state.weight_read.done():
        return fail("an earlier weight load is still reading its files (stuck on the file system?); try again later")
    path = Path(model_path).expanduser()
    state.weight_read = _in_daemon_thread(read_weight_files, path)
    try:  # the engine gets tensors in memory: its worker never waits on a file
        weights = await asyncio.wait_for(asyncio.wrap_future(state.weight_read), state.weight_load_timeout)
    except asyncio.TimeoutError:
        log.error("reading weights from %s took longer than %g s", model_path, state.weight_load_timeout)
        return fail(f"reading the weight files of {model_path!r} took longer than {state.weight_load_timeout:g} s")
    except (OSError, ValueError) as exc:
        return fail(f"Failed to update weights from {model_path!r}: {exc}")
    except Exception as exc:  # noqa: BLE001 - not a weight file (torch's or safetensors' own error types)
        return fail(f"Failed to update weights from {model_path!r}: not a readable weight file "
                    f"({type(exc).__name__}: {_first_line(exc)})")
    if abort_all:
        await state.abort(None)
    try:
        new_version = await state.engine.update_weights(weights, version=version)
    except Exception as exc:
        log.exception("update_weights_from_disk(%s) failed", model_path)
        return fail(f"Failed to update weights from {model_path!r}: {type(exc).__name__}: {exc}")
    if label is not None:
        state.version_labels[new_version] = str(label)
    flush = getattr(state.engine, "flush_cache", None)
    if flush_after and flush is not None:
        result = flush()
        if asyncio.iscoroutine(result):
            await result
    message = "Succeeded to update model weights."
    if label is not None:
        message += f" Weight version updated to {label}."
    log.info("weights loaded from %s (weight_version %s)", model_path, state.label(new_version))
    return JSONResponse({"success": True, "message": message, "num_paused_requests": 0})


MAX_VERSION_CHARS = 256
"""Longest ``weight_version`` label accepted."""


def weight_version_label(raw: Any) -> tuple[str | None, int | None]:
    """``(label, engine version)`` of a request's ``weight_version``: a string or an integer (SGLang's
    versions are strings); a label of digits also numbers the engine's version. ``ValueError`` otherwise."""
    if raw is None:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or (isinstance(raw, str) and not raw):
        raise ValueError(f"'weight_version' must be a non-empty string (or an integer); got {raw!r}")
    if isinstance(raw, int):
        if not 0 <= raw < 2**63:
            raise ValueError(f"an integer 'weight_version' must be in [0, 2**63); got {raw}")
        return str(raw), raw
    if len(raw) > MAX_VERSION_CHARS:
        raise ValueError(f"'weight_version' must be at most {MAX_VERSION_CHARS} characters; got {len(raw):,}")
    digits = raw.isascii() and raw.isdigit() and len(raw) <= 18  # isdigit() alone also takes '²', which int() refuses
    return raw, int(raw) if digits else None


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean field of a request body: true, false or absent (``default``); ``ValueError`` otherwise
    (a string such as "no" is not taken for its truth value)."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"'{key}' must be true or false; got {value!r}")
    return value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _in_daemon_thread(fn: Any, *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` in a new daemon thread: unlike an executor's threads, one that never returns
    does not hold up the process's exit."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="agentrl-serve-weights").start()
    return future


def read_weight_files(path: Path) -> dict[str, Any]:
    """Every tensor of the ``*.safetensors`` (else ``pytorch_model*.bin``) files of a model folder
    (or of one weight file), read into CPU memory. Files that are not regular files (a FIFO, a
    device) are refused before they are opened: opening one could block for ever."""
    import torch

    if not path.exists():
        raise ValueError(f"model_path {str(path)!r} does not exist on the server")
    files = [path] if path.is_file() or not path.is_dir() else (
        sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin")))
    if not files:
        raise ValueError(f"{path} holds no *.safetensors or pytorch_model*.bin weight files")
    for f in files:
        if not stat.S_ISREG(os.stat(f).st_mode):
            raise ValueError(f"{f} is not a regular file")
    weights: dict[str, Any] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load

            weights.update(load(f.read_bytes()))
        else:
            weights.update(torch.load(f, map_location="cpu", weights_only=True))
    return weights




# -- /init_weights_update_group, /update_weights_from_distributed, /destroy_weights_update_group ------------------
# SGLang's in-memory path (its io_struct's InitWeightsUpdateGroupReqInput, UpdateWeightsFromDistributedReqInput):
# the server joins a process group with the trainer (agentrl.cluster.weight_broadcast.init_update_group) and
# receives each bucket of tensors broadcast from rank 0. The blocking collectives run in worker threads.
async def init_weights_update_group(state: Any, body: dict[str, Any]) -> JSONResponse:
    from agentrl.cluster.weight_broadcast import init_update_group

    try:
        address, port = str(body["master_address"]), int(body["master_port"])
        rank, world = int(body["rank_offset"]), int(body["world_size"])
    except (KeyError, TypeError, ValueError) as exc:
        return _fail(f"give master_address, master_port, rank_offset and world_size: {exc}")
    name, backend = str(body.get("group_name", "weight_update_group")), str(body.get("backend", "nccl"))
    if backend not in ("nccl", "gloo"):
        return _fail(f"backend must be nccl or gloo; got {backend!r}")
    device = getattr(state.engine, "device", None)
    if backend == "nccl" and (device.type != "cuda" if device is not None else not _cuda_available()):
        return _fail("backend nccl needs the engine on a CUDA GPU; this server runs on the CPU: use backend gloo")
    if name in state.update_groups:
        return _fail(f"weight update group {name!r} exists; destroy it first (/destroy_weights_update_group)")
    try:
        state.update_groups[name] = await asyncio.to_thread(init_update_group, address, port, rank, world, name,
                                                            backend, state.weight_load_timeout)
    except Exception as exc:  # noqa: BLE001 - the client gets the reason
        return _fail(f"Failed to init group {name!r}: {type(exc).__name__}: {exc}")
    log.info("joined weight update group %s (%s) as rank %d of %d at %s:%d", name, backend, rank, world, address, port)
    return JSONResponse({"success": True, "message": f"Succeeded to initialize group {name}."})


async def update_weights_from_distributed(state: Any, body: dict[str, Any]) -> JSONResponse:
    from agentrl.cluster.weight_broadcast import pg_backend, receive_bucket

    names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
    if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)
            and len(names) == len(dtypes) == len(shapes)):
        return _fail("give names, dtypes and shapes: lists of the same length")
    name = str(body.get("group_name", "weight_update_group"))
    pg = state.update_groups.get(name)
    if pg is None:
        return _fail(f"no weight update group {name!r}: call /init_weights_update_group first")
    try:
        label, version = weight_version_label(body.get("weight_version"))
        abort_all = flag(body, "abort_all_requests", False)
    except ValueError as exc:
        return _fail(str(exc))
    device = "cpu" if pg_backend(pg) == "gloo" else getattr(state.engine, "device", "cuda")
    try:
        weights = await asyncio.to_thread(receive_bucket, pg, names, dtypes, shapes, device)
        if abort_all:
            await state.abort(None)
        new_version = await state.engine.update_weights(weights, version=version)
    except Exception as exc:  # noqa: BLE001
        log.exception("update_weights_from_distributed failed")
        return _fail(f"Failed to update weights: {type(exc).__name__}: {exc}")
    if label is not None:
        state.version_labels[new_version] = str(label)
    return JSONResponse({"success": True, "message": "Succeeded to update parameter online."})


async def destroy_weights_update_group(state: Any, body: dict[str, Any]) -> JSONResponse:
    from agentrl.cluster.weight_broadcast import destroy_update_group

    name = str(body.get("group_name", "weight_update_group"))
    pg = state.update_groups.pop(name, None)
    if pg is None:
        return _fail(f"no weight update group {name!r}")
    await asyncio.to_thread(destroy_update_group, pg)
    return JSONResponse({"success": True, "message": f"Succeeded to destroy group {name}."})


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _fail(message: str) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=400)
