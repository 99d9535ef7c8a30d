"""A loopback HTTP proxy that can inject faults between a client and a test server (GCS or S3).

Faults are queued with :meth:`FaultProxy.inject` and consumed by the first matching requests:
``status`` answers with an HTTP status without forwarding; ``reset`` closes the connection without
forwarding; ``lose_response`` forwards the request (so it takes effect upstream) and then closes the
connection without answering — a response lost on the way back; ``garble`` changes the last byte of the
answer's body; ``date`` hands the answer on with its ``Date`` header set to the fault's ``value`` (a
gateway or a server with a wrong clock). Setting :attr:`FaultProxy.clock_offset` stamps every answer
with this machine's time plus that offset instead (a gateway whose clock runs that far off). Every
request is counted. Answers carry the upstream's headers
as they came (its own ``Date`` and ``Server``, not the proxy's too).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    kind: str  # "status", "reset", "lose_response", "garble" or "date"
    method: str | None
    path_contains: str | None
    status: int = 503
    remaining: int = 1
    value: str = ""  # the Date header of a "date" fault


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream_host = target.hostname or "127.0.0.1"
        self.upstream_port = target.port or 80
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.down = False  #: while True, every request is answered 503 (a store outage)
        #: when set, every answer's Date is this machine's time plus it (a gateway's own clock)
        self.clock_offset: timedelta | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and fault.kind == "status":
                    payload = b'{"error": {"code": %d, "message": "injected"}}' % fault.status
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if fault is not None and fault.kind == "reset":
                    self._drop()
                    return
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if fault is not None and fault.kind == "lose_response":
                    self._drop()
                    return
                if fault is not None and fault.kind == "garble" and data:  # same length, one byte other
                    data = data[:-1] + bytes([data[-1] ^ 0x20])
                self.send_response_only(resp.status)  # (send_response would add a second Date)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, proxy._date(fault) or v if k.lower() == "date" else v)
                # A HEAD answer has no body; its Content-Length is the object's (S3's HeadObject).
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(
        self,
        kind: str,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        status: int = 503,
        count: int = 1,
        value: str = "",
    ) -> None:
        with self._lock:
            self.faults.append(Fault(kind, method, path_contains, status, count, value))

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for m, p in self.requests
                if (method is None or m == method) and (path_contains is None or path_contains in p)
            )

    def _date(self, fault: Fault | None) -> str | None:
        """The Date an answer carries instead of the upstream's, if any."""
        if fault is not None and fault.kind == "date":
            return fault.value
        offset = self.clock_offset
        return None if offset is None else format_datetime(datetime.now(UTC) + offset, usegmt=True)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            if self.down:
                return Fault("status", None, None, 503)
            for fault in self.faults:
                if fault.remaining <= 0:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.path_contains is not None and fault.path_contains not in path:
                    continue
                fault.remaining -= 1
                return fault
            return None
