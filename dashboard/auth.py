"""Who may act on the dashboard: the rule every state-changing request passes first.

Reading stays open (the dashboard binds 127.0.0.1 by default). A request that changes
state (any method but GET, HEAD and OPTIONS) is let through only when

1. it comes from the dashboard's own page: `Sec-Fetch-Site` is `same-origin` (or
   `none`), or, where a browser sends no `Sec-Fetch-Site`, the `Origin` (else the
   `Referer`) names the host the request was sent to. A request with none of these
   headers is not from a browser and needs only the credentials below;
2. and its sender is known: with no credentials configured only a loopback client that
   did not come through a proxy may act; otherwise it must carry the bearer token, the
   HTTP Basic login, or the identity header a trusted reverse proxy sets.

`python -m dashboard.auth` prints the stored form of a Basic password.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipelines.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
REALM = 'realm="evguard dashboard"'
# ~50 ms per check: paid once per action, never per page poll
SCRYPT_COST = {"n": 2 ** 14, "r": 8, "p": 1}
SCRYPT_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The stored form of a Basic password: `scrypt:n:r:p:salt:hash` (hex), no `$` in it,
    so that .env files and docker-compose leave it as it is."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=SCRYPT_MAXMEM, **SCRYPT_COST)
    cost = SCRYPT_COST
    return f"scrypt:{cost['n']}:{cost['r']}:{cost['p']}:{salt.hex()}:{digest.hex()}"


def _parse_password_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, digest = stored.split(":")
    if scheme != "scrypt":
        raise ValueError(f"unknown password scheme {scheme!r}")
    return int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest)


def password_matches(password: str, stored: str) -> bool:
    """True when `password` hashes to `stored` (constant-time compare)."""
    n, r, p, salt, digest = _parse_password_hash(stored)
    given = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM)
    return hmac.compare_digest(given, digest)


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def cross_origin_reason(headers: Mapping[str, str]) -> str | None:
    """Why a request looks sent by a page of another origin, or None when it does not."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return None if fetch_site in SAME_SITE_FETCHES else f"sent by a {fetch_site} page"
    host = headers.get("host", "").lower()
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is not None:
            if urlsplit(value).netloc.lower() == host:
                return None
            return f"{name.title()} {value!r} is not this dashboard ({host})"
    return None


def _basic_login(value: str) -> tuple[str, str] | None:
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


@dataclass(frozen=True)
class Decision:
    """What to do with one request: let it through as `identity`, or answer `status`."""

    allowed: bool
    identity: str = ""
    status: int = 200
    reason: str = ""
    challenge: str = ""  # the WWW-Authenticate value of a 401


@dataclass(frozen=True)
class DashboardAuth:
    """The credentials the dashboard accepts for actions; all empty = loopback only."""

    token: str = ""
    basic_user: str = ""
    basic_password_hash: str = ""
    trusted_header: str = ""

    def __post_init__(self) -> None:
        if bool(self.basic_user) != bool(self.basic_password_hash):
            raise ValueError("HTTP Basic needs both EVGUARD_DASHBOARD_BASIC_USER and "
                             "EVGUARD_DASHBOARD_BASIC_PASSWORD_HASH (python -m dashboard.auth)")
        if self.basic_password_hash:
            try:
                _parse_password_hash(self.basic_password_hash)
            except ValueError as exc:
                raise ValueError("EVGUARD_DASHBOARD_BASIC_PASSWORD_HASH is not the output of "
                                 f"python -m dashboard.auth: {exc}") from None
        if ":" in self.basic_user:
            raise ValueError("an HTTP Basic user name cannot contain ':'")
        if any(c.isspace() or c == ":" for c in self.trusted_header):
            raise ValueError(f"{self.trusted_header!r} is not an HTTP header name")

    @classmethod
    def from_settings(cls, settings: Settings) -> DashboardAuth:
        return cls(token=settings.dashboard_token.get_secret_value(),
                   basic_user=settings.dashboard_basic_user,
                   basic_password_hash=settings.dashboard_basic_password_hash.get_secret_value(),
                   trusted_header=settings.dashboard_trusted_header)

    @property
    def configured(self) -> bool:
        return bool(self.token or self.basic_user or self.trusted_header)

    def describe(self) -> str:
        """Who may act, in words, for the command's start-up line."""
        if not self.configured:
            return "actions from this machine only (no credentials configured)"
        ways = (["the token"] if self.token else []) \
            + ([f"the login of {self.basic_user}"] if self.basic_user else []) \
            + ([f"the proxy's {self.trusted_header} header"] if self.trusted_header else [])
        return "actions need " + " or ".join(ways)

    def authenticate(self, headers: Mapping[str, str]) -> str | None:
        """The identity these headers prove, or None."""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if self.token and scheme == "bearer" and hmac.compare_digest(value.encode(),
                                                                     self.token.encode()):
            return "token"
        if self.basic_user and scheme == "basic":
            login = _basic_login(value)
            if login and hmac.compare_digest(login[0].encode(), self.basic_user.encode()) \
                    and password_matches(login[1], self.basic_password_hash):
                return login[0]
        if self.trusted_header:
            return headers.get(self.trusted_header, "").strip() or None
        return None

    def check(self, method: str, headers: Mapping[str, str], client_host: str | None) -> Decision:
        """Whether this request may reach its route. Pure: no I/O, only the scrypt hash."""
        if method.upper() in SAFE_METHODS:
            return Decision(True)
        cross = cross_origin_reason(headers)
        if cross:
            return Decision(False, status=403, reason=f"cross-origin request refused: {cross}")
        if not self.configured:
            proxied = any(name in headers for name in PROXY_HEADERS)
            if is_loopback(client_host) and not proxied:
                return Decision(True, identity="loopback")
            return Decision(False, status=403, reason=(
                f"dashboard actions from {client_host} need credentials: set "
                "EVGUARD_DASHBOARD_TOKEN, EVGUARD_DASHBOARD_BASIC_USER with "
                "EVGUARD_DASHBOARD_BASIC_PASSWORD_HASH, or EVGUARD_DASHBOARD_TRUSTED_HEADER; "
                "without them only a local client may act"))
        identity = self.authenticate(headers)
        if identity:
            return Decision(True, identity=identity)
        if self.basic_user:
            return Decision(False, status=401, reason="log in to act", challenge=f"Basic {REALM}")
        if self.token:
            return Decision(False, status=401, reason="a valid dashboard token is needed",
                            challenge=f"Bearer {REALM}")
        return Decision(False, status=403,
                        reason=f"no {self.trusted_header} header from the trusted proxy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard.auth",
        description="Print the stored form of a dashboard password, the value of "
                    "EVGUARD_DASHBOARD_BASIC_PASSWORD_HASH. The password is read from the "
                    "terminal, or from standard input when it is not a terminal.")
    parser.parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("dashboard password: ")
        if password != getpass.getpass("again: "):
            print("the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("an empty password is not accepted", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
