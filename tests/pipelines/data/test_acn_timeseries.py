"""The ACN client reads `sessions/{site}/ts` over real HTTP into typed traces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pipelines.contracts.dates import format_rfc1123, rfc1123_to_epoch
from pipelines.data.acn import AcnClient, download_traces
from pipelines.data.synth import generate_sessions
from pipelines.retry import RetryPolicy
from pipelines.telemetry.charging import build_plan
from tests.support.acn_server import LocalAcnServer

START = datetime(2019, 1, 1, tzinfo=UTC)
END = datetime(2020, 1, 1, tzinfo=UTC)
FAST = RetryPolicy(max_retries=2, initial_s=0.01, max_s=0.05)


def recorded(session: dict, step_s: int = 5) -> dict:
    """A trace like ACN's: current and pilot every few seconds until doneChargingTime."""
    connect = rfc1123_to_epoch(session["connectionTime"])
    done = rfc1123_to_epoch(session["doneChargingTime"]) or connect + 3600
    stamps = [format_rfc1123(datetime.fromtimestamp(t, UTC))
              for t in np.arange(connect, done, step_s)]
    current = [24.0 if i % 100 < 80 else 12.0 for i in range(len(stamps))]
    return {"chargingCurrent": {"timestamps": stamps, "current": current},
            "pilotSignal": {"timestamps": stamps, "pilot": [32.0] * len(stamps)}}


@pytest.mark.parametrize("accept", [("python",), ("mongo",)])
def test_time_series_pages_become_typed_traces(accept):
    sessions = generate_sessions(12, seed=3, sites=("caltech",))[0]
    traced = {s["sessionID"]: recorded(s) for s in sessions[::2]}
    with LocalAcnServer({"caltech": sessions}, accept=accept, traces=traced) as server, \
            AcnClient(server.api_url, server.token, retry=FAST, page_size=4) as client:
        got, traces = download_traces(client, "caltech", START, END)
    assert [s["sessionID"] for s in got] == [s["sessionID"] for s in sessions]
    assert all("chargingCurrent" not in s for s in got)
    assert set(traces) == set(traced)
    ts_requests = [r for r in server.requests if r["path"].endswith("/ts")]
    assert [int(r["query"]["page"]) for r in ts_requests][-3:] == [1, 2, 3]  # 4 per page
    sid = next(iter(traced))
    trace, source = traces[sid], traced[sid]["chargingCurrent"]
    assert len(trace.current_a) == len(source["current"])
    assert trace.current_ts[0] == rfc1123_to_epoch(source["timestamps"][0])
    assert np.all(np.diff(trace.current_ts) == 5)
    assert set(trace.current_a.tolist()) == {24.0, 12.0} and set(trace.pilot_a.tolist()) == {32.0}


def test_a_downloaded_trace_drives_the_plan():
    session = generate_sessions(1, seed=8, sites=("caltech",))[0][0]
    connect = datetime.strptime(session["connectionTime"], "%a, %d %b %Y %H:%M:%S GMT")
    session = {**session, "doneChargingTime": format_rfc1123(
        (connect + timedelta(hours=2)).replace(tzinfo=UTC)), "disconnectTime": format_rfc1123(
        (connect + timedelta(hours=3)).replace(tzinfo=UTC))}
    with LocalAcnServer({"caltech": [session]}, traces={session["sessionID"]: recorded(session)}
                        ) as server, AcnClient(server.api_url, server.token, retry=FAST) as client:
        (got,), traces = download_traces(client, "caltech", START, END)
    plan = build_plan(got, trace=traces[got["sessionID"]])
    assert plan.curve == "trace"
    charging = plan.t_s < 2 * 3600 - 10
    assert set(np.unique(plan.current_a[charging]).tolist()) <= {24.0, 12.0}
    assert np.all(plan.current_a[plan.t_s >= 2 * 3600] == 0)
    assert plan.energy_wh[-1] == pytest.approx(got["kWhDelivered"] * 1000, abs=0.5)


def test_an_unknown_site_is_refused_before_any_request():
    with LocalAcnServer({"caltech": []}) as server, \
            AcnClient(server.api_url, server.token, retry=FAST) as client, \
            pytest.raises(ValueError, match="unknown ACN site"):
        download_traces(client, "mars", START, END)
    assert server.requests == []
