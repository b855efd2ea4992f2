"""A counting HTTP proxy on loopback, in front of one of the real test servers: it forwards every request and
records it, unless the test tells it to answer a request itself (an injected refusal, a token endpoint).

It counts what reaches the wire, so it sees every attempt a client makes, its SDK's own retries included: a
test can assert that a refusal was sent once, not merely that it failed quickly. Nothing leaves the machine:
the proxy listens on 127.0.0.1 and forwards only to the one upstream it is given.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it, and the status it answered."""

    method: str
    path: str  # without the query string
    status: int
    injected: bool  # answered by the proxy itself, not by the upstream server


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


Answer = Callable[[str, str], Reply | None]
"""``answer(method, path)``: the reply to send instead of forwarding, or None to forward."""


class CountingProxy:
    """``with CountingProxy("http://127.0.0.1:4443") as proxy:`` then point the client at ``proxy.url``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost"), upstream
        self.upstream = upstream.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or 80
        self.answer: Answer | None = None
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def seen(self, match: Callable[[Seen], bool] = lambda _: True) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if match(s)]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            connection.request(
                method, path, body=body if body or method in ("POST", "PUT", "PATCH") else None, headers=headers
            )
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test's output, not the proxy's, says what happened

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return b"".join(self._chunks())
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _chunks(self) -> Iterator[bytes]:
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    yield self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers

            def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() in HOP_BY_HOP:
                        continue
                    # A resumable upload's session URL must lead back through the proxy.
                    self.send_header(
                        name, value.replace(proxy.upstream, proxy.url) if name.lower() == "location" else value
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                path = self.path.split("?", 1)[0]
                injected = proxy.answer(self.command, path) if proxy.answer is not None else None
                if injected is not None:
                    proxy._record(Seen(self.command, path, injected.status, injected=True))
                    reason = http.client.responses.get(injected.status, "")
                    self._send(injected.status, reason, [("Content-Type", injected.content_type)], injected.body)
                    return
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                status, reason, reply_headers, data = proxy._forward(self.command, self.path, forwarded, body)
                proxy._record(Seen(self.command, path, status, injected=False))
                self._send(status, reason, reply_headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle  # noqa: N815 - the base class's names

        return Handler
