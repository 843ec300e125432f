"""The ACN-Data client against a real local HTTP server (paging, auth, where, retries, state)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.contracts.dates import RFC1123
from pipelines.data.acn import AcnAuthError, AcnClient, AcnError, download_sessions
from pipelines.data.exports import load_exports
from pipelines.data.synth import generate_sessions
from pipelines.retry import RetryPolicy
from tests.support.acn_server import LocalAcnServer

START = datetime(2019, 1, 1, tzinfo=UTC)
END = datetime(2020, 1, 1, tzinfo=UTC)
FAST = RetryPolicy(max_retries=4, initial_s=0.01, max_s=0.05)


def caltech_sessions(n: int, seed: int = 5) -> list[dict]:
    return generate_sessions(n, seed=seed, sites=("caltech",))[0]


def client_for(server: LocalAcnServer, **kwargs) -> AcnClient:
    kwargs.setdefault("retry", FAST)
    return AcnClient(server.api_url, kwargs.pop("token", server.token), **kwargs)


@pytest.mark.parametrize("accept", [("python",), ("mongo",)])
def test_pages_are_followed_and_cached_with_either_where_syntax(tmp_path, accept):
    sessions = caltech_sessions(23)
    with LocalAcnServer({"caltech": sessions}, accept=accept) as server, \
            client_for(server, page_size=5) as client:
        got = download_sessions(client, tmp_path, "caltech", START, END)
        assert client.where_style == accept[0]
    assert [s["sessionID"] for s in got] == [s["sessionID"] for s in sessions]
    served = [r for r in server.requests if "page" in r["query"]]
    assert [int(r["query"]["page"]) for r in served][-5:] == [1, 2, 3, 4, 5]
    cached = sorted((tmp_path / "caltech").glob("*.json"))
    assert len(cached) == 5
    assert [s["sessionID"] for s in load_exports(cached)] == [s["sessionID"] for s in sessions]


def test_where_filter_limits_the_time_range(tmp_path):
    sessions = caltech_sessions(40)
    times = sorted(datetime.strptime(s["connectionTime"], RFC1123).replace(tzinfo=UTC)
                   for s in sessions)
    low, high = times[10], times[30]
    with LocalAcnServer({"caltech": sessions}) as server, client_for(server) as client:
        got = download_sessions(client, tmp_path, "caltech", low, high, incremental=False)
    assert len(got) == 20
    assert all(low <= datetime.strptime(s["connectionTime"], RFC1123).replace(tzinfo=UTC) < high
               for s in got)


def test_incremental_runs_fetch_only_newer_sessions(tmp_path):
    sessions = caltech_sessions(30)
    first, later = sessions[:18], sessions[18:]
    with LocalAcnServer({"caltech": list(first)}) as server, \
            client_for(server, page_size=7) as client:
        assert len(download_sessions(client, tmp_path, "caltech", START, END)) == 18
        server.sessions["caltech"].extend(later)
        again = download_sessions(client, tmp_path, "caltech", START, END)
        assert [s["sessionID"] for s in again] == [s["sessionID"] for s in later]
        assert download_sessions(client, tmp_path, "caltech", START, END) == []
        assert "connectionTime >" in server.requests[-1]["query"]["where"]
    state = (tmp_path / "acn_state.json").read_text()
    assert later[-1]["connectionTime"] in state


def test_transient_failures_are_retried_with_backoff(tmp_path):
    sessions = caltech_sessions(12)
    sleeps: list[float] = []
    with LocalAcnServer({"caltech": sessions}, stall_s=1.0) as server, \
            client_for(server, page_size=5, timeout_s=0.3, sleep=sleeps.append) as client:
        server.failures = [503, 429, "timeout", 500]
        got = download_sessions(client, tmp_path, "caltech", START, END)
    assert len(got) == 12
    assert len(sleeps) == 4 and sleeps[0] < sleeps[2]  # exponential, 429 honours Retry-After
    assert sleeps[1] == 0


def test_retries_give_up_with_a_transient_error(tmp_path):
    with LocalAcnServer({"caltech": caltech_sessions(3)}) as server, \
            client_for(server, retry=RetryPolicy(max_retries=2, initial_s=0.0, max_s=0.0)) as client:
        server.failures = [502, 502, 502]
        with pytest.raises(AcnError) as info:
            download_sessions(client, tmp_path, "caltech", START, END)
    assert info.value.transient and info.value.status == 502
    assert not (tmp_path / "acn_state.json").exists()


def test_refused_or_missing_token_names_the_setting(tmp_path):
    with LocalAcnServer({"caltech": caltech_sessions(3)}) as server:
        with client_for(server, token="wrong") as client, pytest.raises(AcnAuthError) as info:
            download_sessions(client, tmp_path, "caltech", START, END)
        assert "EVGUARD_ACN_TOKEN" in str(info.value) and info.value.status == 401
        assert len(server.requests) == 1  # never retried
    with pytest.raises(AcnAuthError, match="EVGUARD_ACN_TOKEN"):
        AcnClient("http://127.0.0.1:1/api/v1", "")


def test_other_client_errors_are_not_retried(tmp_path):
    with LocalAcnServer({"caltech": []}, accept=()) as server, client_for(server) as client, \
            pytest.raises(AcnError) as info:
        download_sessions(client, tmp_path, "caltech", START, END)
    assert info.value.status == 400 and not info.value.transient
    assert len(server.requests) == 2  # one per where syntax
