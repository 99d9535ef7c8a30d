"""Start and stop the S3 test server: moto's server (the pinned ``moto[server]`` from the test extra) on a
loopback port, in a process of its own, logging to a file — with one change: requests are *handled* one
at a time.

moto checks a PutObject's ``If-Match`` / ``If-None-Match`` and then stores the object, with nothing held
between the two, on a threaded server: two racing creates can both pass the check. Measured with the
stock ``python -m moto.server`` here: 16 processes racing ``If-None-Match: *`` creates, one round in 300
had two winners. S3 itself makes the pair atomic, so this launcher does too: connections are still
accepted and request bodies read in parallel (a stopped client cannot stall the server), then each
request runs through moto under one lock. tests/store/test_s3_guard.py races creates to check it.

moto keeps its objects in that process's memory: every test makes a bucket of its own, and the session's
end takes them all. Run as a script: ``python tests/_s3_server.py PORT``.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


class S3TestServer:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log_path = self._workdir / "server.log"
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, __file__, str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                text = log_path.read_text(errors="replace")
                raise RuntimeError(f"moto server exited with {self._process.returncode}: {text}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {timeout} s")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class OneAtATime:
    """A WSGI app that reads each request's body first, then runs ``app`` on it under one lock."""

    def __init__(self, app: WSGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        if environ.get("wsgi.input_terminated"):  # chunked: werkzeug ends the stream at the last chunk
            body = stream.read()
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = stream.read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        with self._lock:
            return list(self._app(environ, start_response))


def main(port: int) -> None:
    import werkzeug.serving
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    werkzeug.serving.LISTEN_QUEUE = 1024  # bursts of connections from many test processes
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    app = OneAtATime(DomainDispatcherApplication(create_backend_app))
    werkzeug.serving.run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(int(sys.argv[1]))
