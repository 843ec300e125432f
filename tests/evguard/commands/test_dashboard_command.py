"""`evguard dashboard` says at start-up who may act, and refuses a broken login setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.auth import hash_password
from evguard.services.process import free_port

EVGUARD = str(Path(sys.executable).parent / "evguard")


@pytest.fixture
def env(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVGUARD_")}
    base.update(EVGUARD_STATE_DIR=str(tmp_path / "state"), EVGUARD_DATA_DIR=str(tmp_path / "data"),
                COLUMNS="400")  # one line, unwrapped
    return base


def first_line(env: dict, *args: str) -> str:
    """Start the dashboard, read its start-up line, stop it (by its own PID)."""
    proc = subprocess.Popen([EVGUARD, "dashboard", "--host", "127.0.0.1",
                             "--port", str(free_port()), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_start_up_line_names_the_access_mode(env):
    assert "this machine only" in first_line(env)
    env["EVGUARD_DASHBOARD_TOKEN"] = "s3cret-token"
    env["EVGUARD_DASHBOARD_BASIC_USER"] = "ops"
    env["EVGUARD_DASHBOARD_BASIC_PASSWORD_HASH"] = hash_password("pw")
    line = first_line(env)
    assert "the token" in line and "the login of ops" in line and "s3cret" not in line


def test_a_half_configured_login_is_a_clear_error(env):
    env["EVGUARD_DASHBOARD_BASIC_USER"] = "ops"
    result = subprocess.run([EVGUARD, "dashboard", "--port", str(free_port())], env=env,
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error:" in result.stderr and "BASIC_PASSWORD_HASH" in result.stderr
    assert "Traceback" not in result.stderr
