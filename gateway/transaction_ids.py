"""OCPP 1.6 transaction ids that never repeat, across gateway restarts too.

The gateway reserves ids in blocks: a file under the state dir holds the first id not yet
reserved. Reserving a block rewrites it (under an exclusive lock, so gateways sharing a
state dir never get the same block) before any id of the block is handed out, so a crash
loses at most the rest of a block and never reuses one. Ids stay below 2^31: chargers
store them as 32-bit integers.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

BLOCK = 1000
MAX_ID = 2 ** 31 - 1


class TransactionIds:
    """`next()` gives the next unused transaction id (thread-safe)."""

    def __init__(self, path: Path, block: int = BLOCK) -> None:
        self.path = path
        self.block = block
        self._next = 0
        self._end = 0  # the block is [_next, _end)
        self._lock = threading.Lock()

    def _reserve(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read().strip()
            start = int(text) if text.isdigit() else 1
            end = start + self.block
            if end > MAX_ID:
                raise OverflowError(f"transaction ids exhausted in {self.path}")
            handle.seek(0)
            handle.truncate()
            handle.write(f"{end}\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._next, self._end = start, end

    def next(self) -> int:
        with self._lock:
            if self._next >= self._end:
                self._reserve()
            value = self._next
            self._next += 1
            return value
