"""The explorer's web server: the standard library's threading HTTP server (no dependency; the whole
app is one page and a few JSON routes, less code than a framework's set-up), serving only its own
page and API. Every route is in the two tables below; nothing maps a request to a file path.

A bad request gets a 4xx and a JSON body {"error": "..."}; the server goes on serving."""

from __future__ import annotations

import errno
import inspect
import io
import json
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..files import parse_json
from .views import MAX_ABS_Z, MAX_BATCH, MAX_STEPS, RequestError, RunView

MAX_BODY = 256 * 1024   # bytes of a request body: 256 codes of 50 numbers fit ten times over
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_CONNECTIONS = 64    # open at once (a browser keeps about 6); one more is answered 503 and closed at once
REQUEST_SECONDS = 20    # from waiting for a request's first byte to its body's last: a slow or idle client is cut off
HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?")   # RFC 3986 host[:port]
LENGTH = re.compile(r"[0-9]{1,12}")   # Content-Length: ASCII digits only (str.isdigit takes '²' and '١')

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
          "/explore.css": ("explore.css", "text/css; charset=utf-8")}

# POST /api/NAME with a JSON object {"run": 0 or 1, FIELD: ...}: the RunView method that answers it
API = {"points": RunView.points, "decode": RunView.decode, "test": RunView.test_image, "interpolate": RunView.interpolate,
       "samples": RunView.samples, "codes": RunView.decode_codes, "redraw": RunView.redraw}


def _fields(method) -> tuple[set[str], set[str]]:
    """The request fields a RunView method takes: (all, required)."""
    params = list(inspect.signature(method).parameters.values())[1:]   # after self
    return {p.name for p in params}, {p.name for p in params if p.default is inspect.Parameter.empty}


FIELDS = {name: _fields(method) for name, method in API.items()}
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


class ExploreServer(ThreadingHTTPServer):
    """Serves the page and the API for one or two runs (views[0], views[1])."""

    daemon_threads = True       # Ctrl-C does not wait for open connections (a browser keeps its connections
    block_on_close = False      # open): server_close() would join every connection's thread otherwise
    request_queue_size = 128    # many page loads or benchmark clients at once

    def __init__(self, views: list[RunView], host: str, port: int):
        self.views = views
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.info = {"runs": [v.info() for v in views],   # what GET /api/info answers: fixed while the server runs
                     "limits": {"body_bytes": MAX_BODY, "batch": MAX_BATCH, "abs_z": MAX_ABS_Z, "steps": MAX_STEPS}}
        self.static = {path: (resources.files(__package__).joinpath("static", name).read_bytes(), kind)
                       for path, (name, kind) in STATIC.items()}
        self.address_family = _family(host)
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (another `vaekit explore`?); pass --port N "
                                  "with a free port, or stop the other server") from None
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise ConfigError(f"--host {host} is not an address of this machine; use 127.0.0.1 (this machine "
                                  "only) or 0.0.0.0 (every network it is on)") from None
            if e.errno == errno.EACCES:
                raise ConfigError(f"port {port} needs privileges to bind; use a port above 1023") from None
            raise
        self.loopback = host in LOOPBACK

    def process_request(self, request, client_address):
        """A thread per connection, up to MAX_CONNECTIONS; beyond, 503 and close (about 1,020 idle connections used
        to leave it answering no one)."""
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        """A client gone mid-answer, or cut off by the deadline, is routine: nothing on the terminal (it was a 27-line
        traceback); anything else is one line."""
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return
        print(f"vaekit explore: a connection from {client_address[0]} failed: {type(e).__name__}: {str(e)[:200]}",
              file=sys.stderr)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _busy() -> bytes:
    """The whole answer to a connection beyond MAX_CONNECTIONS, written before any thread is started for it."""
    body = json.dumps({"error": f"more than {MAX_CONNECTIONS} open connections; close some and try again"}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Content-Type": "application/json", "Content-Length": len(body),
                                                  "Connection": "close", **HEADERS}.items())
    return f"HTTP/1.1 503 Service Unavailable\r\n{head}\r\n".encode() + body


BUSY = _busy()


class DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read given only the time left before the handler's deadline: a client that sends
    a byte every few seconds cannot hold a connection for ever, as it could with a timeout per read."""

    def __init__(self, sock: socket.socket, handler: Handler):
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    server: ExploreServer
    protocol_version = "HTTP/1.1"   # keep-alive: a page's pointer requests reuse one connection
    timeout = 30                    # a client that stops sending does not hold a thread for ever
    disable_nagle_algorithm = True  # headers and body leave at once: with Nagle, a kept-alive answer waited ~40 ms
                                    # for the client's delayed ACK (measured: 44 ms median per pointer decode)
    server_version = "vaekit-explore"
    sys_version = ""

    def log_message(self, format, *args):   # noqa: A002  (the base class's name)
        pass   # one line per request would drown the terminal: errors are reported below

    def setup(self):
        super().setup()
        self.deadline = time.monotonic() + REQUEST_SECONDS
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self))

    def handle_one_request(self):
        self.deadline = time.monotonic() + REQUEST_SECONDS   # each request of a kept-alive connection: its own
        try:
            super().handle_one_request()
        except TimeoutError:
            self.close_connection = True

    # ---- answers
    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_allowed(self) -> bool:
        """Bound to loopback, answer only requests addressed to it: a web page elsewhere cannot reach this
        server through a name that resolves to 127.0.0.1 (DNS rebinding)."""
        if not self.server.loopback:
            return True
        hosts = self.headers.get_all("Host") or []
        m = HOST.fullmatch(hosts[0].strip()) if len(hosts) == 1 else None
        return m is not None and (m["v6"] or m["name"]).lower() in LOOPBACK

    # ---- methods
    def do_GET(self):
        path = urlsplit(self.path).path
        if not self._host_allowed():
            return self._error(HTTPStatus.FORBIDDEN, "this explorer answers only requests to 127.0.0.1 or localhost")
        if path in self.server.static:
            return self._send(HTTPStatus.OK, *self.server.static[path])
        if path == "/api/info":
            return self._json(HTTPStatus.OK, self.server.info)
        if path.startswith("/api/") and path[5:] in API:
            return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST with a JSON body")
        self._error(HTTPStatus.NOT_FOUND, f"no such page: {path[:100]}; the explorer serves / and /api/*")

    do_HEAD = do_GET

    def not_allowed(self):
        self.close_connection = True   # a body it may carry is not read
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served: the page takes GET, the API POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = not_allowed

    def do_POST(self):
        path = urlsplit(self.path).path
        try:
            status, answer = HTTPStatus.OK, self._answer(path)
        except RequestError as e:
            status, answer = e.status, {"error": str(e)}
        except Exception as e:  # noqa: BLE001  (a failing model call must not stop the server: say it, serve on)
            print(f"vaekit explore: {path} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            status, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        self._json(status, answer)

    def _read_json(self) -> dict:
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            self.close_connection = True
            raise RequestError("send the body with a Content-Length header", HTTPStatus.LENGTH_REQUIRED)
        length = lengths[0].strip()
        if len(lengths) > 1 or not LENGTH.fullmatch(length):
            self.close_connection = True
            raise RequestError(f"Content-Length {', '.join(lengths)[:40]!r} is not one whole number of bytes")
        if int(length) > MAX_BODY:
            self.close_connection = True   # the body is not read: the connection cannot carry another request
            raise RequestError(f"the body is {int(length):,} bytes; the limit is {MAX_BODY:,}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self.rfile.read(int(length))
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind != "application/json":
            raise RequestError("send the body as Content-Type: application/json", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            request = parse_json(body)
        except ValueError as e:
            raise RequestError(f"the body is not JSON: {str(e)[:100]}") from None
        if not isinstance(request, dict):
            raise RequestError("the body must be a JSON object, e.g. {\"run\": 0, ...}")
        return request

    def _answer(self, path: str) -> dict:
        if not self._host_allowed():
            raise RequestError("this explorer answers only requests to 127.0.0.1 or localhost", HTTPStatus.FORBIDDEN)
        name = path[5:] if path.startswith("/api/") else None
        if name not in API:
            if path == "/api/info":
                raise RequestError("/api/info takes GET", HTTPStatus.METHOD_NOT_ALLOWED)
            raise RequestError(f"no such API: {path[:100]}; see the README's explorer API", HTTPStatus.NOT_FOUND)
        request = self._read_json()
        views = self.server.views
        run = request.pop("run", 0)
        if isinstance(run, bool) or not isinstance(run, int) or not 0 <= run < len(views):
            raise RequestError(f"no run {run!r}: this explorer has run 0{' and run 1' if len(views) > 1 else ''}",
                               HTTPStatus.NOT_FOUND)
        allowed, required = FIELDS[name]
        unknown = sorted(set(request) - allowed)
        if unknown:
            raise RequestError(f"unknown field {unknown[0]!r} for /api/{name}; it takes run, {', '.join(sorted(allowed))}")
        missing = sorted(required - set(request))
        if missing:
            raise RequestError(f"/api/{name} needs the field {missing[0]!r}")
        return API[name](views[run], **request)
