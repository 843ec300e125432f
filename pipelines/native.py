"""Compiled builds of the hot pure modules, used only when built from the very sources.

The station context and health run once per session in the worker, and they are
plain typed Python. `scripts/build_native.py` (run by `make install`) compiles
them with mypyc into `<package>/_native/`, with the SHA-256 of each source it
compiled. A compiled package puts that folder first on its `__path__` only when
every digest matches the sources beside it, so an edited module runs as Python
until the next build: a stale build is never used. The Python source stays the
one definition; the build only changes speed (`tests/test_native.py` checks both
give the same results).
"""

from __future__ import annotations

import hashlib
import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

# package -> its modules that are compiled, as one mypyc group
COMPILED: dict[str, tuple[str, ...]] = {
    "pipelines.stations": ("profiles", "context", "health"),
}
BUILD_FOLDER = "_native"
DIGESTS_FILE = "sources.json"

# set False before the first import of a compiled package to run it as Python
# (benchmarks' `--pure`, and the test that compares the two)
enabled = True


def source_digests(package_dir: Path, modules: tuple[str, ...]) -> dict[str, str]:
    """SHA-256 of each module's source in `package_dir`."""
    return {m: hashlib.sha256((package_dir / f"{m}.py").read_bytes()).hexdigest()
            for m in modules}


def build_dir(package_dir: Path) -> Path:
    return package_dir / BUILD_FOLDER


def fresh_build(package: str, package_dir: Path) -> Path | None:
    """The package's build folder when it was compiled from the current sources, else None."""
    folder = build_dir(package_dir)
    try:
        built = json.loads((folder / DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return folder if built == source_digests(package_dir, COMPILED[package]) else None


def search_path(package: str, package_dir: Path) -> list[str]:
    """What a compiled package puts before its own folder on `__path__`."""
    if not enabled:
        return []
    folder = fresh_build(package, package_dir)
    return [] if folder is None else [str(folder)]


def is_compiled(module: ModuleType) -> bool:
    """True when `module` was loaded from a compiled build."""
    return str(getattr(module, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES))
