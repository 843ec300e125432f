"""What a process exposes on the network: the addresses its TCP listeners are bound to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def listening_addresses(group_ids: set[int]) -> set[str]:
    """Local addresses of TCP listeners owned by any process in the given process groups."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in group_ids:  # field 5 of stat: process group id
            members.add(int(stat.parent.name))
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & members:
            found.add(line.split()[3])
    return found
