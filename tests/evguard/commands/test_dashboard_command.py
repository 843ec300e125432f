"""`evguard dashboard` says at start-up who may act, and refuses a broken login setting."""

from __future__ import annotations

from typer.testing import CliRunner

from dashboard.auth import DashboardAuth, hash_password
from evguard.cli import app


def test_the_access_mode_is_named_without_its_secrets():
    assert "this machine only" in DashboardAuth().describe()
    both = DashboardAuth(token="s3cret-token", basic_user="ops",
                         basic_password_hash=hash_password("pw")).describe()
    assert "the token" in both and "the login of ops" in both and "s3cret" not in both
    assert "X-Forwarded-User" in DashboardAuth(trusted_header="X-Forwarded-User").describe()


def test_a_half_configured_login_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EVGUARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EVGUARD_DASHBOARD_BASIC_USER", "ops")
    monkeypatch.delenv("EVGUARD_DASHBOARD_BASIC_PASSWORD_HASH", raising=False)
    result = CliRunner().invoke(app, ["dashboard", "--port", "1"])
    assert result.exit_code == 1
    assert "error:" in result.output and "BASIC_PASSWORD_HASH" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
