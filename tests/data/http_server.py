"""A real HTTP server on 127.0.0.1 that serves images and every way a download goes wrong (for URL lists)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageServer:
    """``/img/<name>``: an image; ``/missing``: 404; ``/error``: always 500; ``/flaky/<name>``: 500 once, then the
    image; ``/busy/<name>``: 503 with ``Retry-After: 0`` once, then the image; ``/stall``: headers and a few
    bytes, then silence; ``/slow``: one byte every 0.2 s; ``/truncated``: closes after 100 of 5000 declared bytes;
    ``/big``: declares ``big`` bytes; ``/big-undeclared``: streams ``big`` bytes without a length; ``/html``:
    a web page instead of an image. :attr:`hits` counts requests per path."""

    def __init__(self, images: dict[str, bytes], big: int):
        self.images, self.big = images, big
        self.hits: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with server._lock:
                    server.hits[self.path] += 1
                    hit = server.hits[self.path]
                kind, _, name = self.path.strip("/").partition("/")
                try:
                    server.route(self, kind, name, hit)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.Handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def route(self, h, kind: str, name: str, hit: int) -> None:
        if kind == "img" and name in self.images:
            h._send(200, self.images[name])
        elif kind == "flaky" and name in self.images:
            h._send(500, b"try again", "text/plain") if hit == 1 else h._send(200, self.images[name])
        elif kind == "busy" and name in self.images:
            h._send(503, b"busy", "text/plain", Retry_After="0") if hit == 1 else h._send(200, self.images[name])
        elif kind == "error":
            h._send(500, b"broken", "text/plain")
        elif kind == "html":
            h._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif kind == "stall":
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b"\xff\xd8\xff")
            h.wfile.flush()
            self.stop_event.wait(10)
        elif kind == "slow":
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            for _ in range(1000):
                if self.stop_event.wait(0.2):
                    return
                h.wfile.write(b"x")
                h.wfile.flush()
        elif kind == "truncated":
            h.send_response(200)
            h.send_header("Content-Length", "5000")
            h.end_headers()
            h.wfile.write(b"\xff\xd8" + b"\x00" * 98)
            h.wfile.flush()
            h.close_connection = True
        elif kind == "big":
            h.send_response(200)
            h.send_header("Content-Length", str(self.big))
            h.end_headers()
            h.wfile.write(b"\x00" * 1024)
        elif kind == "big-undeclared":
            h.send_response(200)
            h.end_headers()  # HTTP/1.0, no length: the body ends when the connection closes
            chunk = b"\x00" * 65536
            for _ in range(self.big // len(chunk) + 2):
                h.wfile.write(chunk)
            h.close_connection = True
        else:
            h._send(404, b"not found", "text/plain")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.lstrip('/')}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        time.sleep(0.05)
