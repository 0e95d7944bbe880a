"""Running the SGLang-compatible server: ``agentrl serve`` (:func:`serve_main`) and
:class:`BackgroundServer` (uvicorn in a thread, for tests and notebooks)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import threading
import time
from typing import Any

from agentrl.engine.base import Engine, SamplingParams

log = logging.getLogger("agentrl.engine.server")


class BackgroundServer:
    """Run an ASGI app with uvicorn in a daemon thread: for tests and notebooks.

    ``port=0`` picks a free port; read it back from :attr:`url`.

    Example::

        >>> from agentrl.engine.server import create_app
        >>> from agentrl.testing import FakeEngine
        >>> with BackgroundServer(create_app(FakeEngine(script=[]), None, model_path="m")) as s:
        ...     s.url.startswith("http://127.0.0.1:")
        True
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.host = host
        self._sock = listening_socket(host, port)
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        daemon=True, name=f"agentrl-serve-{self.port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        """Start serving (once; later calls return at once); wait until it accepts requests."""
        if self._thread.is_alive() or self._server.started:
            return self
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn to serve on (``port=0``: a free one).

    ``proto=IPPROTO_TCP`` matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    and without it every answer waits ~40 ms for a delayed ACK (Nagle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentrl serve",
        description="Serve a model with SGLang's native HTTP API (/generate, /health, /update_weights_from_disk...).",
    )
    p.add_argument("--model-path", required=False, default=None,
                   help="Hugging Face model folder, hub id or alias (e.g. tiny-qwen2, smollm2-135m-instruct).")
    p.add_argument("--tokenizer-path", default=None,
                   help="Tokenizer folder or alias; default: the model's own tokenizer.")
    p.add_argument("--host", default="127.0.0.1", help="Address to bind (0.0.0.0 for all interfaces).")
    p.add_argument("--port", type=_port, default=30000, help="Port to listen on (SGLang's default is 30000).")
    p.add_argument("--device", default=None, help="Device of the embedded engine: cpu, cuda, cuda:1 (default: cuda if available).")
    p.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"],
                   help="Weights dtype (default: float32 on CPU, bfloat16 on CUDA).")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="Most sequences the embedded engine decodes together (continuous batching).")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="Longest prompt + completion of one request, in tokens (default: the model's "
                        "context, capped at 4096 on CPU and 8192 on CUDA).")
    p.add_argument("--admit-wait-steps", type=int, default=None,
                   help="Decode steps a request arriving while others decode may wait so that several "
                        "arrivals share one prefill (0: at once, lowest latency; default: 8 on CUDA, 0 on CPU).")
    p.add_argument("--served-model-name", default=None, help="Name reported by /get_model_info (default: the model path).")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="Logging level.")
    p.add_argument("--engine", default="embedded", choices=["embedded", "fake"],
                   help="'embedded' (default) runs the model; 'fake' answers with deterministic tokens and "
                        "loads no model: for testing clients, launchers and restarts.")
    p.add_argument("--fake-latency", type=float, default=0.0,
                   help="With --engine fake: seconds each request takes.")
    p.add_argument("--max-request-bytes", type=int, default=64 * 2**20,
                   help="Largest request body accepted, in bytes (larger: 413 before it is read).")
    p.add_argument("--weight-load-timeout", type=float, default=600.0,
                   help="Seconds /update_weights_from_disk may spend reading the weight files (longer: 400).")
    return p


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of ``agentrl serve``: parse ``argv``, load the engine, serve until stopped."""
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.engine == "embedded" and not args.model_path:
        build_parser().error("--model-path is required (a model folder, hub id or alias such as tiny-qwen2)")
    if args.max_request_bytes < 1 or not args.weight_load_timeout > 0:
        build_parser().error(f"--max-request-bytes must be >= 1 and --weight-load-timeout > 0; got "
                             f"{args.max_request_bytes}, {args.weight_load_timeout}")
    from agentrl.models import ModelNotFoundError

    try:  # the port first: a port in use is found before the model is loaded
        sock = listening_socket(args.host, args.port)
    except OSError as exc:
        print(f"agentrl serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        engine, tokenizer, model_path = _build_engine(args)
    except (ModelNotFoundError, ValueError) as exc:  # the model or an engine setting: what the flags asked for
        sock.close()
        print(f"agentrl serve: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]  # --port 0: the free one the system picked
    server_args = {"host": args.host, "port": port, "device": args.device, "dtype": args.dtype,
                   "max_batch_size": args.max_batch_size, "max_seq_len": args.max_seq_len,
                   "admit_wait_steps": getattr(getattr(engine, "config", None), "admit_wait_steps", None),
                   "engine_kind": args.engine, "max_request_bytes": args.max_request_bytes,
                   "weight_load_timeout": args.weight_load_timeout}
    from agentrl.engine.server import create_app

    app = create_app(engine, tokenizer, model_path=model_path, served_model_name=args.served_model_name,
                     tokenizer_path=args.tokenizer_path, server_args=server_args,
                     max_request_bytes=args.max_request_bytes, weight_load_timeout=args.weight_load_timeout)
    log.info("agentrl serve: %s on http://%s:%d", model_path, args.host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, lifespan="off", timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        log.info("agentrl serve: stopped (Ctrl-C)")
    finally:
        sock.close()
    close = getattr(engine, "close", None)
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return 0


def _build_engine(args: argparse.Namespace) -> tuple[Engine, Any, str]:
    from agentrl.models import load_tokenizer, resolve_model_path

    if args.engine == "fake":
        from agentrl.testing import FakeEngine

        tokenizer = load_tokenizer(args.tokenizer_path) if args.tokenizer_path else None
        vocab = len(tokenizer) if tokenizer is not None else 32000

        def responder(ids: list[int], sampling: SamplingParams) -> list[int]:
            return [(ids[-1] + k + 1) % vocab for k in range(8)]  # a function of the prompt

        return FakeEngine(responder=responder, latency=args.fake_latency), tokenizer, args.model_path or "fake"
    from agentrl.engine.embedded import EmbeddedEngine

    path = resolve_model_path(args.model_path)
    tokenizer = load_tokenizer(args.tokenizer_path) if args.tokenizer_path else None
    engine = EmbeddedEngine(path, tokenizer, device=args.device, dtype=args.dtype,
                            max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                            admit_wait_steps=args.admit_wait_steps)
    return engine, engine.tokenizer, path
