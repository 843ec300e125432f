"""ACN-Data API client: paging, both `where` syntaxes, retries, incremental state, page cache,
and the sessions' time series (`sessions/{site}/ts`).

`GET {api}/sessions/{site}` with HTTP Basic auth (the token as username, empty
password). Responses are Eve-shaped: `_items`, `_meta` and `_links.next.href`,
relative to the API root and absent on the last page.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Self

import httpx

from pipelines.contracts.dates import format_rfc1123, parse_rfc1123
from pipelines.retry import RetryPolicy
from pipelines.settings import Settings
from pipelines.telemetry.charging import ChargingTrace, parse_acn_trace

log = logging.getLogger(__name__)

ACN_SITES = ("caltech", "jpl", "office001")
WhereStyle = Literal["auto", "python", "mongo"]
TOKEN_SETTING = "EVGUARD_ACN_TOKEN"
DEFAULT_RETRY = RetryPolicy(initial_s=1.0, max_s=30.0, max_retries=5)  # timeouts, 429, 5xx


class AcnError(RuntimeError):
    """A request to ACN-Data failed for good."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


class AcnAuthError(AcnError):
    """The token is missing or was refused (401/403)."""


def where_clause(style: Literal["python", "mongo"], start: datetime, end: datetime,
                 start_exclusive: bool = False) -> str:
    """The `where` filter on connectionTime in the given syntax (pure).

    Args:
        style: `python` (`connectionTime >= "..."`) or `mongo` (`{"connectionTime": {"$gte": ...}}`).
        start: lower bound (inclusive unless `start_exclusive`).
        end: upper bound, exclusive.
        start_exclusive: `>` instead of `>=` (incremental runs after a known session).

    Returns:
        The clause as a string.
    """
    low, high = format_rfc1123(start), format_rfc1123(end)
    if style == "mongo":
        op = "$gt" if start_exclusive else "$gte"
        return json.dumps({"connectionTime": {op: low, "$lt": high}})
    op = ">" if start_exclusive else ">="
    return f'connectionTime {op} "{low}" and connectionTime < "{high}"'


class AcnClient:
    """Synchronous ACN-Data client; use as a context manager."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0,
                 retry: RetryPolicy = DEFAULT_RETRY, where_style: WhereStyle = "auto",
                 page_size: int = 1000, sleep: Callable[[float], None] = time.sleep):
        if retry.max_retries is None:
            raise ValueError("the ACN-Data client needs a retry policy with max_retries")
        if not token:
            raise AcnAuthError(f"no ACN-Data token: set {TOKEN_SETTING} to your API token "
                               "(https://ev.caltech.edu/dataset), or use synthetic data")
        self.base_url = base_url.rstrip("/") + "/"
        self.retry, self.where_style, self.page_size, self._sleep = (
            retry, where_style, page_size, sleep)
        self._http = httpx.Client(auth=(token, ""), timeout=timeout_s,
                                  headers={"Accept": "application/json"})

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get_json(self, url: str, params: dict | None = None) -> dict:
        """GET with retries on transient failures; raises `AcnAuthError`/`AcnError` otherwise."""
        for attempt in range(self.retry.max_retries + 1):
            last = attempt == self.retry.max_retries
            try:
                response = self._http.get(url, params=params)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if last:
                    raise AcnError(f"ACN-Data unreachable at {url}: {exc!r}", transient=True) from exc
                log.warning("ACN request failed (%r), retry %d", exc, attempt + 1)
                self._sleep(self.retry.delay(attempt))
                continue
            status = response.status_code
            if status in (401, 403):
                raise AcnAuthError(f"ACN-Data refused the token (HTTP {status}): check "
                                   f"{TOKEN_SETTING}", status=status)
            if status == 429 or status >= 500:
                if last:
                    raise AcnError(f"ACN-Data HTTP {status} after {attempt + 1} attempts: {url}",
                                   status=status, transient=True)
                log.warning("ACN HTTP %d, retry %d", status, attempt + 1)
                self._sleep(self._retry_delay(attempt, response.headers.get("Retry-After")))
                continue
            if status >= 400:
                raise AcnError(f"ACN-Data HTTP {status} for {response.url}: "
                               f"{response.text[:200]}", status=status)
            return response.json()
        raise AssertionError("unreachable")

    def _retry_delay(self, attempt: int, retry_after: str | None) -> float:
        """The server's Retry-After (in seconds, capped by the policy), else the policy's."""
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.retry.max_s)
        return self.retry.delay(attempt)

    def _first_page(self, site: str, start: datetime, end: datetime,
                    start_exclusive: bool) -> tuple[dict, str]:
        styles: list[Literal["python", "mongo"]] = (
            ["python", "mongo"] if self.where_style == "auto" else [self.where_style])
        for i, style in enumerate(styles):
            params = {"where": where_clause(style, start, end, start_exclusive),
                      "sort": "connectionTime", "max_results": self.page_size, "page": 1}
            try:
                page = self.get_json(f"{self.base_url}sessions/{site}", params)
            except AcnError as exc:
                if exc.status in (400, 422) and i + 1 < len(styles):
                    log.info("ACN server rejected the %s where syntax; trying %s", style,
                             styles[i + 1])
                    continue
                raise
            self.where_style = style  # remember what this server accepts
            return page, str(httpx.URL(f"{self.base_url}sessions/{site}", params=params))
        raise AssertionError("unreachable")

    def pages(self, site: str, start: datetime, end: datetime,
              start_exclusive: bool = False) -> Iterator[tuple[str, dict]]:
        """Yield `(url, page)` for every page of sessions of `site` in `[start, end)`."""
        page, url = self._first_page(site, start, end, start_exclusive)
        while True:
            yield url, page
            href = ((page.get("_links") or {}).get("next") or {}).get("href")
            if not href or not page.get("_items"):
                return
            url = str(httpx.URL(self.base_url).join(href))
            page = self.get_json(url)


def client_from_settings(settings: Settings) -> AcnClient:
    """An `AcnClient` configured by the `acn_*` settings."""
    return AcnClient(settings.acn_api_url, settings.acn_token.get_secret_value(),
                     timeout_s=settings.acn_timeout_s,
                     retry=replace(DEFAULT_RETRY, max_retries=settings.acn_max_retries),
                     page_size=settings.acn_page_size)


class DownloadState:
    """Last connectionTime downloaded per site, in `<data_dir>/raw/acn_state.json`."""

    def __init__(self, raw_dir: Path):
        self.path = raw_dir / "acn_state.json"

    def read(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def last(self, site: str) -> datetime | None:
        value = self.read().get(site)
        return parse_rfc1123(value)

    def advance(self, site: str, latest: datetime) -> None:
        state = self.read()
        known = self.last(site)
        if known is None or latest > known:
            state[site] = format_rfc1123(latest)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
            tmp.replace(self.path)


def _cache_page(raw_dir: Path, site: str, url: str, page: dict) -> Path:
    """Keep the raw page, still Eve-shaped, so `evguard data import` can re-read it."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    path = raw_dir / site / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**(page.get("_meta") or {}), "url": url, "site": site}
    path.write_text(json.dumps({**page, "_meta": meta}))
    return path


def _connection_time(session: dict) -> datetime | None:
    return parse_rfc1123(session.get("connectionTime"))


def download_sessions(client: AcnClient, raw_dir: Path, site: str,
                      start: datetime | None = None, end: datetime | None = None, *,
                      incremental: bool = True,
                      on_page: Callable[[int, int], None] | None = None) -> list[dict]:
    """Download one site's sessions in `[start, end)`, newer than the last run when incremental.

    Every raw page is cached under `raw_dir/<site>/`; the state advances only after
    all pages arrived, so an interrupted run is simply repeated.

    Args:
        client: an open `AcnClient`.
        raw_dir: `<data_dir>/raw`.
        site: one of `ACN_SITES`.
        start: lower bound; default 7 days before `end` (or the state, whichever is later).
        end: upper bound, default now.
        incremental: start after the last connectionTime recorded for the site.
        on_page: called with (sessions so far, total reported by the server).

    Returns:
        The session dicts, sorted by connectionTime as the server returned them.
    """
    if site not in ACN_SITES:
        raise ValueError(f"unknown ACN site {site!r}; choose from {ACN_SITES}")
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=7)
    state = DownloadState(raw_dir)
    last = state.last(site) if incremental else None
    exclusive = last is not None and last >= start
    if exclusive:
        start = last
    if start >= end:
        return []
    sessions: list[dict] = []
    for url, page in client.pages(site, start, end, start_exclusive=exclusive):
        _cache_page(raw_dir, site, url, page)
        sessions.extend(page.get("_items") or [])
        if on_page:
            on_page(len(sessions), int((page.get("_meta") or {}).get("total") or len(sessions)))
    times = [t for t in map(_connection_time, sessions) if t is not None]
    if incremental and times:
        state.advance(site, max(times))
    log.info("downloaded %d %s sessions in [%s, %s)", len(sessions), site, start, end)
    return sessions


def timeseries_pages(client: AcnClient, site: str, start: datetime, end: datetime
                     ) -> Iterator[tuple[str, dict]]:
    """Yield `(url, page)` for every page of `sessions/{site}/ts` in `[start, end)`: the
    sessions with their `chargingCurrent` and `pilotSignal` (amperes, every 3-10 s)."""
    url = f"{client.base_url}sessions/{site}/ts"
    styles: list[Literal["python", "mongo"]] = (
        ["python", "mongo"] if client.where_style == "auto" else [client.where_style])
    for i, style in enumerate(styles):
        params = {"where": where_clause(style, start, end), "sort": "connectionTime",
                  "max_results": client.page_size, "page": 1}
        try:
            page = client.get_json(url, params)
        except AcnError as exc:
            if exc.status in (400, 422) and i + 1 < len(styles):
                continue
            raise
        client.where_style = style
        break
    current = str(httpx.URL(url, params=params))
    while True:
        yield current, page
        href = ((page.get("_links") or {}).get("next") or {}).get("href")
        if not href or not page.get("_items"):
            return
        current = str(httpx.URL(client.base_url).join(href))
        page = client.get_json(current)


def download_traces(client: AcnClient, site: str, start: datetime, end: datetime
                    ) -> tuple[list[dict], dict[str, ChargingTrace]]:
    """One site's sessions in `[start, end)` with their recorded current and pilot.

    Args:
        client: an open `AcnClient`.
        site: one of `ACN_SITES`.
        start: lower bound on connectionTime, inclusive.
        end: upper bound, exclusive.

    Returns:
        `(sessions, traces)`: the session dicts without their time series, and
        sessionID -> `ChargingTrace` for each session that has one.

    Raises:
        ValueError: an unknown site, or a time series of the wrong shape.
    """
    if site not in ACN_SITES:
        raise ValueError(f"unknown ACN site {site!r}; choose from {ACN_SITES}")
    sessions: list[dict] = []
    traces: dict[str, ChargingTrace] = {}
    for _url, page in timeseries_pages(client, site, start, end):
        for item in page.get("_items") or []:
            trace = parse_acn_trace(item)
            if trace is not None:
                traces[trace.session_id] = trace
            sessions.append({k: v for k, v in item.items()
                             if k not in ("chargingCurrent", "pilotSignal")})
    log.info("downloaded %d %s sessions (%d with a trace) in [%s, %s)", len(sessions), site,
             len(traces), start, end)
    return sessions, traces
