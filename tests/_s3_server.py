"""Start and stop the S3 test server: moto's standalone server (the pinned ``moto[server]`` from the test
extra), on a loopback port, in a process of its own, logging to a file.

moto keeps its objects in that process's memory: every test makes a bucket of its own, and the session's
end takes them all.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


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
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
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
