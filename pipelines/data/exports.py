"""Import of ACN-Data export files: `{"_meta": ..., "_items": [...]}` or a bare list of sessions."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path


class ExportFormatError(ValueError):
    """A file that is not an ACN export; the message names the file and what was found."""


def parse_export(document: object, source: str = "<document>") -> list[dict]:
    """Sessions of an already-decoded export document (pure).

    Args:
        document: `{"_items": [...], "_meta": {...}}` (an export or an API page) or a list.
        source: name used in error messages.

    Returns:
        The session dicts, in file order.

    Raises:
        ExportFormatError: when the shape is neither of the two.
    """
    items = document.get("_items") if isinstance(document, dict) else document
    if not isinstance(items, list):
        found = f"an object with keys {sorted(document)[:6]}" if isinstance(document, dict) \
            else type(document).__name__
        raise ExportFormatError(f"{source}: expected an ACN export ({{\"_meta\", \"_items\"}}) "
                                f"or a list of sessions, found {found}")
    bad = next((i for i, item in enumerate(items) if not isinstance(item, dict)), None)
    if bad is not None:
        raise ExportFormatError(f"{source}: item {bad} is {type(items[bad]).__name__}, "
                                "not a session object")
    return items


def load_export(path: str | Path) -> list[dict]:
    """Read one export file (`.json`, or `.json.gz`).

    Args:
        path: the file.

    Returns:
        Its session dicts.

    Raises:
        ExportFormatError: unreadable JSON or an unexpected shape.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            document = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise ExportFormatError(f"{path}: not valid JSON ({exc})") from exc
    return parse_export(document, str(path))


def load_exports(paths: Iterable[str | Path]) -> list[dict]:
    """Sessions of several export files (directories are expanded to their `*.json` files)."""
    records: list[dict] = []
    for path in paths:
        path = Path(path)
        files = sorted(path.glob("*.json")) + sorted(path.glob("*.json.gz")) if path.is_dir() \
            else [path]
        for file in files:
            records.extend(load_export(file))
    return records
