"""The explorer's web server: the standard library's ``ThreadingHTTPServer``, bound to localhost by default.

Why the standard library and not an ASGI framework: the server has one page, three static files and two JSON
endpoints, and the model draws one grid at a time behind a lock, so an event loop, routing library or
worker pool would add a dependency without adding speed; ``http.server`` ships with Python, starts in
milliseconds and is enough for one person exploring on their own machine. It is not a public web server (the
standard library says so too): it listens on 127.0.0.1 unless told otherwise, refuses Host headers other
than localhost names while it does (a guard against DNS rebinding), answers GET only, serves only its fixed
files, and every grid request is bounded (``Limits``).

Routes: ``/`` the page, ``/explorer.js`` and ``/explorer.css`` its code and style, ``/api/info`` the
model's classes, samplers, guidance methods, limits and defaults, ``/api/grid?...`` one grid as JSON (a PNG
data: URI plus NFE and timings). A bad request gets a 4xx with ``{"error": "one line"}``; an unexpected
failure gets a 500 with a one-line message, its traceback going to the server's log, never to the page.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cfgdiff.serve.explorer import BusyError, Explorer

STATIC = {  # path -> (file in static/, content type)
    "/": ("explorer.html", "text/html; charset=utf-8"),
    "/index.html": ("explorer.html", "text/html; charset=utf-8"),
    "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
    "/explorer.css": ("explorer.css", "text/css; charset=utf-8"),
}
LOCAL_HOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_QUERY_FIELDS = 32
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
}


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (127.0.0.0/8, ::1)."""
    if host in LOCAL_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a Host header ("localhost:8000" -> "localhost", "[::1]:8000" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.index("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _static_bytes(name: str) -> bytes:
    return resources.files("cfgdiff.serve").joinpath("static", name).read_bytes()


class ExplorerHandler(BaseHTTPRequestHandler):
    """GET routes of the explorer (see the module docstring)."""

    server: ExplorerHTTPServer
    server_version = "cfgdiff-explorer"
    sys_version = ""
    timeout = 15  # seconds a client may take to send its request (an idle connection holds a thread)
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache" if cache else "no-store")
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, allow_nan=False).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": status})

    def _host_allowed(self) -> bool:
        if not self.server.check_host:
            return True
        return _host_name(self.headers.get("Host", "")) in LOCAL_HOST_NAMES

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away (e.g. a newer request replaced this one)
        except Exception:  # never a traceback in the page: one line there, the traceback in the log
            sys.stderr.write(traceback.format_exc())
            with contextlib.suppress(OSError):
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error while drawing the grid; see the "
                                                              "server's log")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _not_allowed(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported; the explorer answers GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def _get(self) -> None:
        if not self._host_allowed():
            self._error(HTTPStatus.FORBIDDEN, "this explorer answers requests to localhost only")
            return
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            self._send(HTTPStatus.OK, _static_bytes(name), content_type, cache=True)
        elif url.path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", cache=True)
        elif url.path == "/api/info":
            self._json(HTTPStatus.OK, self.server.explorer.info())
        elif url.path == "/api/grid":
            self._grid(url.query)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")

    def _grid(self, query_string: str) -> None:
        try:
            pairs = parse_qsl(query_string, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, f"too many query parameters (at most {MAX_QUERY_FIELDS})")
            return
        query: dict[str, str] = {}
        for key, value in pairs:
            if key in query:
                self._error(HTTPStatus.BAD_REQUEST, f"parameter {key!r} is given twice")
                return
            query[key] = value
        explorer = self.server.explorer
        try:
            request = explorer.parse(query)
            result = explorer.render(request)
        except BusyError as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
            return
        except ValueError as err:  # RequestError, or a library check on the combination (one line)
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self._error(HTTPStatus.BAD_REQUEST, message)
            return
        self._json(HTTPStatus.OK, result.to_json(explorer.class_names))


class ExplorerHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` holding the explorer; threads are daemons, so an idle browser connection never
    delays shutdown (the model lock is waited for instead, see ``ExplorerServer.stop``)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], explorer: Explorer, *, check_host: bool,
                 log: Callable[[str], None] | None) -> None:
        self.explorer = explorer
        self.check_host = check_host
        self.log = log
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ExplorerHandler)


class ExplorerServer:
    """The explorer on ``host:port`` (port 0: a free one), served from a background thread.

    ``start()`` serves in a background thread and returns; ``stop()`` stops accepting, closes the socket and
    waits for a grid being drawn to finish. Use as a context manager in tests.
    """

    def __init__(self, explorer: Explorer, *, host: str = "127.0.0.1", port: int = 8000,
                 log: Callable[[str], None] | None = None) -> None:
        self.explorer = explorer
        self.host = host
        self.httpd = ExplorerHTTPServer((host, port), explorer, check_host=is_loopback(host), log=log)
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def start(self) -> ExplorerServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="cfgdiff-explorer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, close the socket, and wait (up to ``timeout`` s) for a grid in progress."""
        if self._stopped:
            return
        self._stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.explorer.lock.acquire(timeout=timeout):
            self.explorer.lock.release()

    def __enter__(self) -> ExplorerServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
