"""A real ``bentoml serve`` process on loopback (:class:`BentoServer`), shared by the service
tests and the serving benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from emorec.errors import EmorecError

REPO = Path(__file__).resolve().parents[3]
SERVICE = "bento.service:EmotionClassifier"


class ServerError(EmorecError):
    """The server did not start (the message carries the tail of its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BentoServer:
    """``bentoml serve <target>`` on 127.0.0.1 in its own process group; a context manager."""

    def __init__(self, target: str = SERVICE, working_dir: Path = REPO,
                 log_path: Path | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, cpus: Sequence[int] | None = None):
        self.target = target
        self.cpus = list(cpus) if cpus else None  # pin the server (and its workers) with taskset
        self.working_dir = working_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(os.devnull)
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> BentoServer:
        """Launch and wait until ``/readyz`` answers 200 (or fail with the log tail)."""
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml_cli), "serve", self.target, "--host", "127.0.0.1",
               "--port", str(self.port), "--working-dir", str(self.working_dir)]
        if self.cpus:
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.working_dir, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerError(f"bentoml serve exited with {self.proc.returncode}:\n"
                                  f"{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise ServerError(f"bentoml serve not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group (its workers too), SIGKILL if it lingers."""
        if self.proc is not None:
            family = self.pids()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            # workers that outlived the arbiter (started by it, so by us) are killed too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in family[1:]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pids(self) -> list[int]:
        """The server's processes: ``bentoml serve`` and its descendants (BentoML starts each
        worker in a process group of its own, so the group alone misses them)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the fields after the parenthesised command: state, ppid, ...
                ppid = int(stat.read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return sorted(found)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> BentoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
