"""A policy server in a child process on localhost: for tests, benchmarks and single-machine setups."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from datamil.errors import DatamilError

_READY = re.compile(r"serving .* on ws://[^:]+:(\d+)")


class ServerProcess:
    """`python -m datamil.real_robot.serve` as a child; `start()` returns once it listens (its port is parsed)."""

    def __init__(self, checkpoint: str | os.PathLike, port: int = 0, threads: int = 1) -> None:
        self.checkpoint, self.port, self.threads = Path(checkpoint), port, threads
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        command = [sys.executable, "-m", "datamil.real_robot.serve", f"checkpoint={self.checkpoint}",
                   f"port={self.port}", f"threads={self.threads}"]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.threads)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            self.output.append(line)
            if match := _READY.search(line):
                self.port = int(match.group(1))
                threading.Thread(target=self._drain, daemon=True).start()
                return self
            if time.monotonic() > deadline:
                break
        self.kill()
        raise DatamilError(f"policy server did not start: {''.join(self.output[-20:])}")

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def kill(self) -> None:
        """SIGKILL: the server dies as on a crash, without closing its connections cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
