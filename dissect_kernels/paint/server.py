"""The local painting server (standard library http.server): the page and its static files
(only the files in static/, by exact name) and a JSON API:

  GET  /api/concepts          layer, units, grid, image size, concepts with their units
  GET  /api/sample?seed=N     {seed, image: PNG data URL} of generated sample N
  POST /api/paint             {seed, concept, mode, mask[, units]} or {seed, edits: [...]}
                              -> {seed, image, ms}: the sample regenerated with the edits

Every request is checked (validate.py); refusals are 4xx with {"error": message}. Bound to
loopback, it also refuses Host headers naming another host (DNS rebinding)."""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from dissect_kernels.paint.session import MAX_SAMPLE
from dissect_kernels.paint.validate import (MAX_BODY, RequestError, parse_json_body, parse_paint,
                                            parse_query, parse_sample)

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png"}
SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class PaintApp:
    """The routes over a Painter, independent of the socket: each returns (status, type, bytes)."""

    def __init__(self, painter, static_dir: Path = STATIC):
        self.painter, self.static_dir = painter, Path(static_dir)
        self.files = {p.name: p for p in self.static_dir.iterdir() if p.is_file() and p.suffix in TYPES}
        self.lock = threading.Lock()          # one forward pass at a time

    def get(self, path: str, query: str):
        if path in ("/", "/index.html"):
            return self.static("index.html")
        if path.startswith("/static/"):
            return self.static(path[len("/static/"):])
        q = parse_query(parse_qs(query, keep_blank_values=True), {"seed"} if path == "/api/sample" else set())
        if path == "/api/concepts":
            return self.json(self.painter.describe())
        if path == "/api/sample":
            if "seed" not in q:
                raise RequestError(400, "/api/sample needs ?seed=N (the sample number)")
            seed = parse_sample(q["seed"], MAX_SAMPLE, text=True)
            with self.lock:
                png = self.painter.render(seed)
            return self.json({"seed": seed, "image": data_url(png)})
        raise RequestError(405 if path == "/api/paint" else 404,
                           "use POST for /api/paint" if path == "/api/paint" else f"no such page: {path[:80]}")

    def post(self, path: str, body: bytes):
        if path != "/api/paint":
            raise RequestError(405 if path in ("/api/concepts", "/api/sample") else 404,
                               f"POST is only for /api/paint, not {path[:80]}")
        seed, edits = parse_paint(parse_json_body(body), self.painter, MAX_SAMPLE)
        t0 = time.perf_counter()
        with self.lock:
            png = self.painter.render(seed, edits)
        ms = round((time.perf_counter() - t0) * 1000, 1)
        return self.json({"seed": seed, "image": data_url(png), "ms": ms, "edits": len(edits)})

    def static(self, name: str):
        file = self.files.get(name)            # exact names only: nothing outside static/
        if file is None:
            raise RequestError(404, f"no such file: {name[:80]}")
        return 200, TYPES[file.suffix], file.read_bytes()

    @staticmethod
    def json(obj, status: int = 200):
        return status, "application/json", json.dumps(obj).encode("utf-8")


class PaintHandler(BaseHTTPRequestHandler):
    """Serves `app` (a PaintApp, set by make_handler); checks Host, body size and type first."""
    app: PaintApp
    quiet = True
    timeout = 30                           # a stalled client cannot hold a thread forever
    server_version = "dissect-kernels-paint"

    def do_GET(self):
        self.answer(lambda url: self.app.get(url.path, url.query))

    def do_POST(self):
        self.answer(lambda url: self.app.post(url.path, self.body()))

    def do_PUT(self):
        self.refuse(RequestError(405, f"method {self.command} is not allowed; use GET or POST"))

    do_DELETE = do_PATCH = do_PUT

    def body(self) -> bytes:
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise RequestError(415, f"Content-Type must be application/json, got {kind[:60]!r}")
        size = self.headers.get("Content-Length")
        if size is None or not size.isdigit():
            raise RequestError(411, "Content-Length is required")
        if int(size) > MAX_BODY:
            raise RequestError(413, f"the body is {size} bytes; at most {MAX_BODY} are accepted")
        return self.rfile.read(int(size))

    def answer(self, route) -> None:
        try:
            self.check_host()
            status, kind, data = route(urlsplit(self.path))
        except RequestError as err:
            self.refuse(err)
            return
        except Exception as err:  # noqa: BLE001 - a bug answers 500 with its message, not a dropped socket
            self.refuse(RequestError(500, f"internal error: {type(err).__name__}: {str(err)[:200]}"))
            return
        self.send(status, kind, data)

    def check_host(self) -> None:
        host = self.server.server_address[0]
        if host in LOOPBACK:
            name = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if name not in LOOPBACK:
                raise RequestError(403, f"Host {name[:60]!r} refused: this server answers on loopback only")

    def refuse(self, err: RequestError) -> None:
        self.close_connection = True
        self.send(err.status, "application/json", json.dumps({"error": err.message}).encode("utf-8"))

    def send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in SECURITY.items():
            self.send_header(k, v)
        if status == 405:
            self.send_header("Allow", "GET, POST")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)


def make_handler(app: PaintApp, *, quiet: bool = True) -> type[BaseHTTPRequestHandler]:
    """A request handler class serving `app` (quiet: no request log on stderr)."""
    return type("Handler", (PaintHandler,), {"app": app, "quiet": quiet})


def make_server(painter, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer for `painter` bound to host:port (port 0: a free one; read
    server.server_address); call serve_forever() (e.g. in a thread) and shutdown()."""
    server = ThreadingHTTPServer((host, port), make_handler(PaintApp(painter), quiet=quiet))
    server.daemon_threads = True
    return server
