"""What the benchmarks read from /proc: CPU time of a process, the machine's CPU pressure,
and a process found by its executable (the embedded broker's binary, RabbitMQ's VM)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far. Raises OSError once it has exited."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_or_nan(pid: int | None) -> float:
    """`cpu_seconds`, or NaN for no process or one that has gone."""
    if pid is None:
        return float("nan")
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_pressure() -> str:
    """Linux PSI's `some` line: the share of time a runnable task waited for a CPU (avg10,
    avg60, avg300), i.e. how much other work competed with the measurement."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unknown"


def pid_of(command: str, port: int | None = None) -> int | None:
    """The pid of a process by executable name (and port in its arguments), read from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "exe")).name != command:
                continue  # e.g. the Python wrapper script of the noida-db binary
            if port is None or str(port) in (entry / "cmdline").read_text():
                return int(entry.name)
        except OSError:
            continue
    return None
