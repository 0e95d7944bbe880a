"""Running the SGLang-compatible server: ``agentrl serve`` (:func:`serve_main`) and
:class:`BackgroundServer` (uvicorn in a thread, for tests and notebooks)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from agentrl.engine.base import Engine, SamplingParams
from agentrl.engine.embedded.config import EngineConfig
from agentrl.utils.flags import Flag, FlagTable

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


@dataclass
class ServeArgs:
    """Settings of ``agentrl serve``; each field's doc is its ``--help`` text."""

    FLAGS: ClassVar[dict[str, Any]] = {
        "--model-path": "model_path", "--tokenizer-path": "tokenizer_path", "--host": "host", "--port": "port",
        "--engine-device": Flag("--engine-device", "device", aliases=("--device",)),
        "--engine-dtype": Flag("--engine-dtype", "dtype", aliases=("--dtype",)),
        "--served-model-name": "served_model_name", "--log-level": "log_level", "--engine": "engine",
        "--fake-latency": "fake_latency", "--max-request-bytes": "max_request_bytes",
        "--weight-load-timeout": "weight_load_timeout",
    }

    model_path: str | None = None
    """HF model folder, hub id or alias (smollm2-135m-instruct, tiny-qwen2, ...). Required for the embedded engine."""
    tokenizer_path: str | None = None
    """Tokenizer folder, hub id or alias (default: the model's own)."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 for all interfaces)."""
    port: int = 30000
    """Port to listen on (SGLang's default is 30000; 0: a free one, reported when bound)."""
    device: str | None = None
    """Device of the embedded engine: cpu, cuda or cuda:N (default: cuda if available)."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Dtype of the embedded engine's weights (default: float32 on the CPU, bfloat16 on CUDA)."""
    served_model_name: str | None = None
    """Name reported by /get_model_info and /v1/models (default: --model-path as given; OpenAI clients may name the
    model by it or by the folder it resolves to)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Logging level."""
    engine: Literal["embedded", "fake"] = "embedded"
    """embedded runs the model; fake answers with deterministic tokens and loads no model (for testing clients,
    launchers and restarts)."""
    fake_latency: float = 0.0
    """With --engine fake: seconds each request takes."""
    max_request_bytes: int = 64 * 2**20
    """Largest request body accepted, in bytes (larger: 413 before it is read)."""
    weight_load_timeout: float = 600.0
    """Seconds /update_weights_from_disk may spend reading the weight files (longer: 400)."""
    embedded: EngineConfig = field(default_factory=EngineConfig)

    def problems(self) -> list[str]:
        out = self.embedded.problems()
        if self.engine == "embedded" and not self.model_path:
            out.append("--model-path is required (a model folder, hub id or alias such as tiny-qwen2)")
        if not 0 <= self.port <= 65535:
            out.append(f"--port {self.port} is not a TCP port (0-65535)")
        if self.max_request_bytes < 1 or not self.weight_load_timeout > 0:
            out.append(f"--max-request-bytes must be >= 1 and --weight-load-timeout > 0; got {self.max_request_bytes}, "
                       f"{self.weight_load_timeout}")
        return out


TABLE = FlagTable(ServeArgs, aliases={"--engine-max-batch-size": ("--max-batch-size",),
                                      "--engine-max-seq-len": ("--max-seq-len",),
                                      "--engine-admit-wait-steps": ("--admit-wait-steps",)})
DESCRIPTION = ("Serve a model with SGLang's native HTTP API (/generate, /health, /update_weights_from_disk...) and "
               "OpenAI's (/v1/chat/completions, /v1/completions, /v1/models).")


def build_parser():
    return TABLE.parser("agentrl serve", DESCRIPTION, config_file=True)


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of ``agentrl serve``: parse ``argv``, load the engine, serve until stopped."""
    import uvicorn

    args, _, problems = TABLE.parse(list(sys.argv[1:] if argv is None else argv), prog="agentrl serve",
                                    description=DESCRIPTION)
    problems += args.problems()
    if problems:
        print("agentrl serve: invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
                   "max_batch_size": args.embedded.max_batch_size, "max_seq_len": args.embedded.max_seq_len,
                   "admit_wait_steps": getattr(getattr(engine, "config", None), "admit_wait_steps", None),
                   "engine_kind": args.engine, "max_request_bytes": args.max_request_bytes,
                   "weight_load_timeout": args.weight_load_timeout}
    from agentrl.engine.server import create_app

    app = create_app(engine, tokenizer, model_path=model_path,  # clients name the model as --model-path was given
                     served_model_name=args.served_model_name or args.model_path,
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


def _build_engine(args: ServeArgs) -> tuple[Engine, Any, str]:
    from agentrl.models import load_tokenizer, resolve_model_path

    if args.engine == "fake":
        from agentrl.testing import FakeEngine

        tokenizer = load_tokenizer(args.tokenizer_path) if args.tokenizer_path else None
        vocab = len(tokenizer) if tokenizer is not None else 32000

        def responder(ids: list[int], sampling: SamplingParams) -> list[int]:
            return [(ids[-1] + k + 1) % vocab for k in range(8)]  # a function of the prompt

        return FakeEngine(responder=responder, latency=args.fake_latency), tokenizer, args.model_path or "fake"
    from agentrl.engine.embedded import EmbeddedEngine

    assert args.model_path is not None  # ServeArgs.problems: the embedded engine needs --model-path
    path = resolve_model_path(args.model_path)
    tokenizer = load_tokenizer(args.tokenizer_path) if args.tokenizer_path else None
    engine = EmbeddedEngine(path, tokenizer, device=args.device, dtype=args.dtype, config=args.embedded)
    return engine, engine.tokenizer, path
