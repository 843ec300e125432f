"""The charge point registry: which chargers may connect, their site, their password hash.

A JSON file (`settings.ocpp_charge_points`, empty = `<state_dir>/charge_points.json`):

    {"charge_points": {"CP-1": {"site": "caltech",
                                "password": {"scheme": "scrypt", "n": 16384, "r": 8, "p": 1,
                                             "salt": "<hex>", "hash": "<hex>"}}}}

Only the salted scrypt hash of a password is stored (OCPP security profile 1 sends the
password in HTTP Basic on every connect). A verified password is remembered in memory as
an HMAC under a per-process key, so a reconnecting charger costs no second scrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.settings import Settings

log = logging.getLogger("evguard.gateway.registry")

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
MAX_ID_LENGTH = 48  # 1.6 chargeBoxIdentity is CiString25; 2.0.1 identity is string[48]


class RegistryError(ValueError):
    """The registry file is unreadable, or an entry is invalid."""


@dataclass(frozen=True, slots=True)
class ChargePointInfo:
    """A charge point the gateway accepted.

    Attributes:
        id: its OCPP identity (the last path segment of the WebSocket URL).
        site: its site from the registry ("" for an unknown charger let in by
            `ocpp_allow_unknown`).
        known: True when it is in the registry.
    """

    id: str
    site: str = ""
    known: bool = True


def registry_path(settings: Settings) -> Path:
    if str(settings.ocpp_charge_points) not in ("", "."):
        return settings.ocpp_charge_points
    return settings.state_path / "charge_points.json"


def check_charge_point_id(charge_point_id: str) -> str:
    """The id unchanged, or RegistryError when OCPP would not allow it."""
    if not charge_point_id or len(charge_point_id) > MAX_ID_LENGTH:
        raise RegistryError(f"a charge point id has 1 to {MAX_ID_LENGTH} characters, "
                            f"got {len(charge_point_id)}")
    if not charge_point_id.isprintable() or any(c in charge_point_id for c in "/:?#% "):
        raise RegistryError(f"charge point id {charge_point_id!r} has a character a URL "
                            "path segment or HTTP Basic cannot carry")
    return charge_point_id


def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """The stored form of a password: scrypt with a fresh 16-byte salt."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 1024 * 1024, **SCRYPT)
    return {"scheme": "scrypt", **SCRYPT, "salt": salt.hex(), "hash": digest.hex()}


def password_matches(password: str, stored: dict[str, Any]) -> bool:
    """True when `password` hashes to `stored` (constant-time compare)."""
    try:
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(stored["salt"]),
                                n=int(stored["n"]), r=int(stored["r"]), p=int(stored["p"]),
                                maxmem=64 * 1024 * 1024)
        return hmac.compare_digest(digest, bytes.fromhex(stored["hash"]))
    except (KeyError, ValueError, TypeError):
        return False


def load_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The registry's entries by charge point id ({} when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["charge_points"]
        if not isinstance(entries, dict):
            raise TypeError("charge_points is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"charge point registry {path} is unreadable: {exc}") from exc
    return entries


def add_charger(path: Path, charge_point_id: str, site: str, password: str | None) -> bool:
    """Add or replace one charger (only the password's hash is written).

    Returns:
        True when it replaced an entry.
    """
    check_charge_point_id(charge_point_id)
    if password is not None and not password:
        raise RegistryError("an empty password is no password; omit it instead")
    entries = load_entries(path)
    replaced = charge_point_id in entries
    entry: dict[str, Any] = {"site": site}
    if password is not None:
        entry["password"] = hash_password(password)
    entries[charge_point_id] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                     prefix=".charge_points.") as tmp:
        json.dump({"charge_points": entries}, tmp, indent=1, sort_keys=True)
    os.chmod(tmp.name, 0o600)
    os.replace(tmp.name, path)
    return replaced


class Registry:
    """The registry as the server reads it: reloaded when the file changes."""

    def __init__(self, path: Path, allow_unknown: bool = False) -> None:
        self.path = path
        self.allow_unknown = allow_unknown
        self._entries: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._verified: dict[str, bytes] = {}
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> None:
        """Read the file again if it changed. A broken file raises RegistryError when
        `strict` (at start), else it is logged and the previous entries stay."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # os.replace: new inode
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return
        try:
            entries = load_entries(self.path)
        except RegistryError:
            if strict:
                raise
            log.exception("keeping the previous charge point registry")
            self._stamp = stamp  # tried once per change of the file
            return
        with self._lock:
            self._entries, self._stamp = entries, stamp
            self._verified.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, charge_point_id: str) -> dict[str, Any] | None:
        return self._entries.get(charge_point_id)

    def authenticate(self, charge_point_id: str, password: str | None) -> ChargePointInfo | None:
        """The charger's info when it may connect with this password, else None.

        Blocking (scrypt, ~50 ms) on the first success per password: call it in a thread.
        """
        entry = self._entries.get(charge_point_id)
        if entry is None:
            return ChargePointInfo(charge_point_id, "", known=False) \
                if self.allow_unknown else None
        info = ChargePointInfo(charge_point_id, str(entry.get("site", "")))
        stored = entry.get("password")
        if stored is None:
            return info
        if password is None:
            return None
        tag = hmac.digest(self._key, password.encode(), "sha256")
        with self._lock:
            if hmac.compare_digest(self._verified.get(charge_point_id, b""), tag):
                return info
        if not password_matches(password, stored):
            return None
        with self._lock:
            self._verified[charge_point_id] = tag
        return info
