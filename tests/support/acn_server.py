"""A real local HTTP server speaking the ACN-Data sessions API, for the client tests.

It implements HTTP Basic auth (token as username), the `where` filter on
connectionTime in the syntaxes it is told to accept, `sort`, `max_results`/`page`
paging with relative `_links.next` hrefs, and failures injected per request.
`sessions/{site}/ts` serves the same sessions with their time series: `chargingCurrent
{timestamps, current}` and `pilotSignal {timestamps, pilot}` (RFC 1123 times, amperes).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlencode, urlparse

RFC1123 = "%a, %d %b %Y %H:%M:%S GMT"
_NO_TRACE = {"chargingCurrent": {"timestamps": [], "current": []},
             "pilotSignal": {"timestamps": [], "pilot": []}}
PYTHON_WHERE = re.compile(
    r'^connectionTime (>=|>) "([^"]+)" and connectionTime < "([^"]+)"$')


def _when(text: str) -> datetime:
    return datetime.strptime(text, RFC1123).replace(tzinfo=UTC)


class LocalAcnServer:
    """Serve `sessions[site]` on 127.0.0.1; `failures` is a list consumed one per request:
    an HTTP status to return, or "timeout" to stall longer than the client waits.
    `traces` maps a sessionID to its `{"chargingCurrent": ..., "pilotSignal": ...}`."""

    def __init__(self, sessions: dict[str, list[dict]], token: str = "secret-token",
                 accept: tuple[str, ...] = ("python", "mongo"), stall_s: float = 1.0,
                 traces: dict[str, dict] | None = None):
        self.sessions, self.token, self.accept, self.stall_s = sessions, token, accept, stall_s
        self.traces = traces or {}
        self.failures: list[int | str] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/api/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _reply(self, handler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _parse_where(self, where: str):
        if "python" in self.accept and (m := PYTHON_WHERE.match(where)):
            return m.group(1) == ">", _when(m.group(2)), _when(m.group(3))
        if "mongo" in self.accept:
            try:
                clause = json.loads(where)["connectionTime"]
            except (ValueError, KeyError, TypeError):
                return None
            exclusive = "$gt" in clause
            return exclusive, _when(clause["$gt" if exclusive else "$gte"]), _when(clause["$lt"])
        return None

    def _handle(self, handler) -> None:
        url = urlparse(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        auth = handler.headers.get("Authorization", "")
        self.requests.append({"path": url.path, "query": query, "auth": auth})
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "timeout":
                time.sleep(self.stall_s)
                return self._reply(handler, 200, {"_items": []})
            headers = {"Retry-After": "0"} if failure == 429 else None
            return self._reply(handler, int(failure), {"_error": "injected"}, headers)
        expected = "Basic " + base64.b64encode(f"{self.token}:".encode()).decode()
        if auth != expected:
            return self._reply(handler, 401, {"_error": {"code": 401, "message": "auth"}})
        match = re.fullmatch(r"/api/v1/sessions/(\w+)(/ts)?", url.path)
        if not match or match.group(1) not in self.sessions:
            return self._reply(handler, 404, {"_error": "not found"})
        bounds = self._parse_where(query.get("where", ""))
        if bounds is None:
            return self._reply(handler, 400, {"_error": "Unable to parse `where` clause"})
        exclusive, low, high = bounds
        rows = [s for s in self.sessions[match.group(1)]
                if (_when(s["connectionTime"]) > low if exclusive
                    else _when(s["connectionTime"]) >= low) and _when(s["connectionTime"]) < high]
        if query.get("sort") == "connectionTime":
            rows.sort(key=lambda s: _when(s["connectionTime"]))
        size, page = int(query.get("max_results", 25)), int(query.get("page", 1))
        if match.group(2):
            rows = [{**row, **self.traces.get(row["sessionID"], _NO_TRACE)} for row in rows]
        body = {"_items": rows[(page - 1) * size: page * size],
                "_meta": {"page": page, "max_results": size, "total": len(rows)},
                "_links": {}}
        if page * size < len(rows):
            next_query = {**query, "page": page + 1}
            body["_links"]["next"] = {
                "href": f"sessions/{match.group(1)}{match.group(2) or ''}?"
                        f"{urlencode(next_query)}", "title": "next"}
        self._reply(handler, 200, body)
