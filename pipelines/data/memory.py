"""Hand memory that a large step freed back to the operating system.

CPython, glibc's malloc and Arrow's allocator keep freed blocks for reuse, so after a
step that held every session at once the process stays near that step's peak. What
follows (training, its worker processes) then starts from the peak, not from what is
still in use. A long-running process (the scoring worker) trims the C heap every few
seconds for the same reason (`trim_c_heap`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache

import pyarrow as pa


def release_freed_memory() -> None:
    """Collect garbage, then return the allocators' free pages (where they allow it)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim_c_heap()


def trim_c_heap() -> None:
    """Return glibc's free heap pages to the operating system; cheap enough for a
    long-running loop (no garbage collection), a no-op where `malloc_trim` is missing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None on a C library without it (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
