"""Background processes that `evguard services up` starts and `down` stops.

A process is remembered by a PID file under the state dir. It is started in a
new session, so `down` can stop it and its children (mlflow and prefect spawn
workers) by signalling the process group whose id is that PID.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    """A service cannot be started or reached; the message says what to do."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# Below Linux's ephemeral range (32768-60999): a service port from that range can be taken
# by any outgoing connection while the service restarts, and a client retrying a stopped
# service there can connect to itself (seen in the soak: RabbitMQ could not rebind its port).
_PORT_RANGE = (20000, 32768)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, outside the ephemeral range."""
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServiceError(f"no free port on 127.0.0.1 in {_PORT_RANGE[0]}-{_PORT_RANGE[1] - 1}")


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """One long-running process with its PID file, log file and readiness check."""

    name: str
    command: list[str]
    run_dir: Path
    port: int
    ready: Callable[[], bool]  # true once the service answers
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> bool:
        """Start unless already running. Returns True when it started a process."""
        if self.running():
            return False
        if self.port and port_open("127.0.0.1", self.port):
            raise ServiceError(
                f"{self.name}: port 127.0.0.1:{self.port} is already in use by another program. "
                f"Stop that program, or choose another port with the matching EVGUARD_ setting."
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "wb")  # noqa: SIM115 - the child owns it; this run's log only: readiness checks may read it
        try:
            proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ServiceError(
                f"{self.name}: cannot run {self.command[0]!r} ({exc.strerror}). "
                f"Install the project with `make install` (uv sync) and retry."
            ) from exc
        finally:
            log.close()
        self.pid_file.write_text(str(proc.pid))
        ok = wait_until(lambda: proc.poll() is None and self.ready(), self.start_timeout)
        if not ok:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-1500:]
            raise ServiceError(
                f"{self.name}: not healthy within {self.start_timeout:.0f}s; "
                f"log {self.log_file}:\n{tail}"
            )
        return True

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the process group this service started. Returns True if one was running."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        self.pid_file.unlink(missing_ok=True)
        return stop_group(pid, timeout)


def group_alive(pgid: int) -> bool:
    try:  # reap the leader if this process started it, or it lingers as a zombie
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(pgid: int, timeout: float = 15.0) -> bool:
    """SIGTERM the process group led by `pgid`, then SIGKILL what is left."""
    if not group_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if not wait_until(lambda: not group_alive(pgid), timeout):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_until(lambda: not group_alive(pgid), 5)
    return True
