"""Who may acknowledge an alert, over plain HTTP to a real uvicorn server.

A client that is not loopback is real here: the server binds this machine's own network
address (from `hostname -I`) and the test connects to that address.
"""

from __future__ import annotations

import base64
import ipaddress
import subprocess

import httpx
import pytest

from dashboard.auth import DashboardAuth, cross_origin_reason, hash_password, password_matches
from tests.dashboard.conftest import serve_dashboard, with_auth

TOKEN = "s3cret-dashboard-token"


def network_address() -> str:
    """An IPv4 address of this machine that is not loopback."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True,
                         check=False).stdout.split()
    for address in out:
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and not ip.is_loopback:
            return address
    pytest.skip(f"this machine has no non-loopback IPv4 address to serve on (hostname -I: {out})")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_cross_origin_ack_is_refused_and_the_alert_stays_open(dash_settings, alerts):
    alert_id = alerts.open()
    ack = f"/api/alerts/{alert_id}/ack"
    with serve_dashboard(dash_settings) as url, httpx.Client(base_url=url, timeout=5) as http:
        for headers in ({"Origin": "http://evil.example"},
                        {"Referer": "http://evil.example/page.html"},
                        {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site", "Origin": url}):
            refused = http.post(ack, headers=headers)
            assert refused.status_code == 403, headers
            assert "cross-origin" in refused.json()["detail"]
        assert not alerts.acknowledged(alert_id)
        assert http.post(ack, headers={"Origin": url}).status_code == 200  # its own page
    assert alerts.acknowledged(alert_id)


def test_the_right_token_does_not_let_another_origin_act(dash_settings, alerts):
    alert_id = alerts.open()
    settings = with_auth(dash_settings, dashboard_token=TOKEN)
    with serve_dashboard(settings) as url, httpx.Client(base_url=url, timeout=5) as http:
        refused = http.post(f"/api/alerts/{alert_id}/ack", headers={
            "Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"})
        assert refused.status_code == 403
    assert not alerts.acknowledged(alert_id)


def test_without_credentials_only_loopback_may_act(dash_settings, alerts):
    alert_id = alerts.open()
    ack = f"/api/alerts/{alert_id}/ack"
    settings = with_auth(dash_settings)
    with serve_dashboard(settings, host=network_address()) as url, \
            httpx.Client(base_url=url, timeout=5) as http:
        assert http.get("/api/overview").status_code == 200  # reading stays open
        refused = http.post(ack)
        assert refused.status_code == 403
        assert "EVGUARD_DASHBOARD_TOKEN" in refused.json()["detail"]
        # a proxy's trusted header means nothing while it is not enabled
        assert http.post(ack, headers={"X-Forwarded-User": "alice"}).status_code == 403
    assert not alerts.acknowledged(alert_id)

    with serve_dashboard(with_auth(dash_settings)) as url, \
            httpx.Client(base_url=url, timeout=5) as http:
        # a local reverse proxy would make every visitor look local
        assert http.post(ack, headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 403
        assert not alerts.acknowledged(alert_id)
        assert http.post(ack).status_code == 200
    assert alerts.acknowledged(alert_id)


def test_a_token_is_needed_from_any_client_once_configured(dash_settings, alerts):
    alert_id = alerts.open()
    ack = f"/api/alerts/{alert_id}/ack"
    settings = with_auth(dash_settings, dashboard_token=TOKEN)
    with serve_dashboard(settings, host=network_address()) as url, \
            httpx.Client(base_url=url, timeout=5) as http:
        missing = http.post(ack)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert http.post(ack, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
        assert http.post(ack, headers=basic("token", TOKEN)).status_code == 401
        assert not alerts.acknowledged(alert_id)
        accepted = http.post(ack, headers={"Authorization": f"Bearer {TOKEN}"})
        assert accepted.status_code == 200, accepted.text
    assert alerts.acknowledged(alert_id)


def test_a_basic_login_with_a_hashed_password(dash_settings, alerts):
    alert_id = alerts.open()
    ack = f"/api/alerts/{alert_id}/ack"
    settings = with_auth(dash_settings, dashboard_basic_user="ops",
                         dashboard_basic_password_hash=hash_password("correct horse"))
    with serve_dashboard(settings, host=network_address()) as url, \
            httpx.Client(base_url=url, timeout=5) as http:
        missing = http.post(ack)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == 'Basic realm="evguard dashboard"'
        assert http.post(ack, headers=basic("ops", "wrong horse")).status_code == 401
        assert http.post(ack, headers=basic("root", "correct horse")).status_code == 401
        assert not alerts.acknowledged(alert_id)
        assert http.post(ack, headers=basic("ops", "correct horse")).status_code == 200
    assert alerts.acknowledged(alert_id)


def test_the_trusted_header_is_honoured_only_when_enabled(dash_settings, alerts):
    alert_id = alerts.open()
    ack = f"/api/alerts/{alert_id}/ack"
    settings = with_auth(dash_settings, dashboard_trusted_header="X-Forwarded-User")
    with serve_dashboard(settings, host=network_address()) as url, \
            httpx.Client(base_url=url, timeout=5) as http:
        assert http.post(ack).status_code == 403
        assert http.post(ack, headers={"X-Forwarded-User": ""}).status_code == 403
        assert http.post(ack, headers={"X-Remote-User": "alice"}).status_code == 403
        assert not alerts.acknowledged(alert_id)
        assert http.post(ack, headers={"X-Forwarded-User": "alice"}).status_code == 200
    assert alerts.acknowledged(alert_id)


def test_password_hashes_and_origins():
    stored = hash_password("pw")
    assert password_matches("pw", stored) and not password_matches("pW", stored)
    assert stored != hash_password("pw")  # a fresh salt each time
    assert "$" not in stored
    host = {"host": "dash.example:8050"}
    assert cross_origin_reason({**host, "origin": "http://dash.example:8050"}) is None
    assert cross_origin_reason({**host, "origin": "http://dash.example:8051"})
    assert cross_origin_reason({**host, "referer": "http://evil.example/x"})
    assert cross_origin_reason({**host, "sec-fetch-site": "same-site"})
    assert cross_origin_reason({**host, "sec-fetch-site": "same-origin"}) is None
    assert cross_origin_reason(host) is None  # not a browser
    with pytest.raises(ValueError, match="BASIC_PASSWORD_HASH"):
        DashboardAuth(basic_user="ops")
    with pytest.raises(ValueError, match="not the output"):
        DashboardAuth(basic_user="ops", basic_password_hash="plain-text")
