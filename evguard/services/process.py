"""Background processes that `evguard services up` starts and `down` stops.

A process is remembered by a PID file under the state dir. It is started in a
new session, so `down` can stop it and its children (mlflow and prefect spawn
workers) by signalling the process group whose id is that PID.

Some commands are launchers whose child does the work (noida-db's Python script starts
the broker binary). If the launcher dies, the child lives on. A service that names its
data dir is therefore also recognised by the process that listens on its port: when that
process names the data dir (command line, working dir or an open file), it is this
service's own, and `up` adopts it and `down` stops it. Nothing else is ever signalled.
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


def listening_pids(port: int) -> set[int]:
    """PIDs of the processes that hold a listening TCP socket on `port`, read from /proc."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                sockets.add(f"socket:[{inode}]")
    pids: set[int] = set()
    if not sockets:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                pids.add(int(entry.name))
        except OSError:  # gone, or not ours to inspect
            continue
    return pids


def refers_to(pid: int, directory: Path) -> bool:
    """True when process `pid` names `directory` (or a path inside it) in its command line,
    as its working dir or as an open file: the proof that it works on that data dir."""
    root = str(Path(directory).resolve())

    def inside(path: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    proc = Path(f"/proc/{pid}")
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
        if any(inside(arg.decode(errors="replace")) for arg in args):
            return True
        if inside(os.readlink(proc / "cwd")):
            return True
        return any(inside(os.readlink(fd)) for fd in (proc / "fd").iterdir())
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM one process, then SIGKILL it if it outlives `timeout`."""
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if not wait_until(lambda: not pid_alive(pid), timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_until(lambda: not pid_alive(pid), 5)
    return True


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
    # a directory only this service's own processes name: with it, the process that
    # listens on `port` is recognised as this service's even after its launcher died
    data_dir: Path | None = None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def listener_file(self) -> Path:
        return self.run_dir / f"{self.name}.listener.pid"

    def _recorded(self) -> int | None:
        """The PID in the PID file, unless a live process with that PID provably is not
        this service's (its PID was reused after the service died)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if self.data_dir is not None and pid_alive(pid) and not refers_to(pid, self.data_dir):
            return None
        return pid

    def pid(self) -> int | None:
        """The process started (its launcher, while alive), else this service's own process
        still listening on its port (an orphan whose launcher died), else None."""
        pid = self._recorded()
        if pid is not None and pid_alive(pid):
            return pid
        return self.listener()

    def orphan(self) -> int | None:
        """This service's own process on its port when the process started for it (its
        launcher) is gone; None otherwise."""
        pid = self._recorded()
        return None if pid is not None and pid_alive(pid) else self.listener()

    def listener(self) -> int | None:
        """The process listening on this service's port, if it provably is this service's
        own (it names `data_dir`); None for anyone else's, or without a `data_dir`."""
        if self.data_dir is None or not self.port:
            return None
        own = [pid for pid in listening_pids(self.port)
               if pid != os.getpid() and refers_to(pid, self.data_dir)]
        return min(own, default=None)

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> bool:
        """Start unless already running. Returns True when it started a process."""
        if self.running():
            if (listener := self.listener()) is not None:  # adopted, if its launcher died
                self.listener_file.write_text(str(listener))
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
        if ok and (listener := self.listener()) is not None:
            self.listener_file.write_text(str(listener))  # what holds the port, for `status`
        if not ok:
            self.stop()
            tail = self.log_file.read_text(errors="replace")[-1500:]
            raise ServiceError(
                f"{self.name}: not healthy within {self.start_timeout:.0f}s; "
                f"log {self.log_file}:\n{tail}"
            )
        return True

    def before_stop(self, timeout: float) -> None:
        """Called by `stop` while the service still runs (e.g. to ask it to save first)."""

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the process group this service started, and this service's own process on
        its port if that outlived the group (an orphan). Returns True if one was running."""
        listener = self.listener()
        pid = self._recorded()
        if listener is not None or (pid is not None and pid_alive(pid)):
            self.before_stop(timeout)
        self.pid_file.unlink(missing_ok=True)
        self.listener_file.unlink(missing_ok=True)
        stopped = pid is not None and stop_group(pid, timeout)
        if listener is not None and pid_alive(listener):
            stopped = stop_pid(listener, timeout) or stopped
        return stopped


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
