"""The viewer's HTTP server: the page's three files and the ``api/...`` paths of :class:`~agentrl.view.data.Sources`.

Standard library only (``http.server``), one thread per request, bound to 127.0.0.1 unless told
otherwise. It answers GET and HEAD; any other method is 405. Nothing is fetched from elsewhere: the page's Content-Security-Policy allows this
server only.

Example::

    >>> from agentrl.view.data import Sources
    >>> server = make_server(Sources.__new__(Sources), port=0)   # doctest: +SKIP
    >>> server.serve_forever()                                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from agentrl.view.data import Sources, ViewError, to_json

log = logging.getLogger(__name__)

ASSETS = {"": ("index.html", "text/html; charset=utf-8"), "index.html": ("index.html", "text/html; charset=utf-8"),
          "app.js": ("app.js", "text/javascript; charset=utf-8"), "app.css": ("app.css", "text/css; charset=utf-8")}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'"


def asset(name: str) -> str:
    """The text of a page file shipped in ``agentrl/view/assets``."""
    return resources.files("agentrl.view").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sources: Sources) -> None:
        self.sources = sources
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def make_server(sources: Sources, host: str = "127.0.0.1", port: int = 8765) -> ViewServer:
    """A server for ``sources`` (``port=0``: any free port; see ``server.url``)."""
    return ViewServer((host, port), sources)


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _refuse(self) -> None:
        """Any other method: 405 (the viewer changes nothing); a body sent with it is not read, so the
        connection is closed after the answer."""
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"the viewer answers GET and HEAD only", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD", "Connection": "close"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT = do_TRACE = _refuse  # noqa: N815

    def _answer(self, head: bool) -> None:
        self._head = head
        if not self._host_allowed():
            self._send(HTTPStatus.FORBIDDEN, b"unexpected Host header", "text/plain; charset=utf-8")
            return
        path = self.path.split("#", 1)[0]
        route = path.lstrip("/").split("?", 1)[0]
        if route in ASSETS:
            name, kind = ASSETS[route]
            self._send(HTTPStatus.OK, asset(name).encode("utf-8"), kind)
        elif route.startswith("api/"):
            try:
                body, status = to_json(self.server.sources.get(path)), HTTPStatus.OK
            except ViewError as e:
                body, status = to_json({"error": str(e)}), HTTPStatus.NOT_FOUND
            except Exception as e:  # a broken file is the page's error message, not a dead server
                log.exception("viewer: %s failed", path)
                body, status = to_json({"error": f"{type(e).__name__}: {e}"}), HTTPStatus.INTERNAL_SERVER_ERROR
            self._send(status, body.encode("utf-8"), "application/json; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain; charset=utf-8")

    def _host_allowed(self) -> bool:
        """A server bound to this machine answers only requests addressed to it by a loopback name: a web page
        elsewhere whose name is made to resolve to 127.0.0.1 (DNS rebinding) cannot read the runs."""
        if self.server.server_address[0] not in LOOPBACK:  # --host 0.0.0.0 or an address: shared on purpose
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        return name in LOOPBACK

    def _send(self, status: HTTPStatus, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not getattr(self, "_head", False):
            self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("viewer: " + fmt, *args)
