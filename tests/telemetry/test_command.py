"""`evguard telemetry`: its help, and a run against the real broker that stops when idle."""

from __future__ import annotations

from typer.testing import CliRunner

from evguard.cli import app
from pipelines.settings import settings_env
from tests.telemetry.kit import produce_events, transaction

runner = CliRunner()


def test_help_names_the_options():
    result = runner.invoke(app, ["telemetry", "--help"])
    assert result.exit_code == 0
    for option in ("--batch-size", "--metrics-port", "--instance-id", "--idle-exit"):
        assert option in result.output


def test_it_processes_events_and_stops_when_idle(telemetry_settings, monkeypatch):
    for name, value in settings_env(telemetry_settings).items():
        monkeypatch.setenv(name, value)
    produce_events(telemetry_settings, transaction(lambda i: (30.0, 32.0, "Charging"),
                                                   samples=5, cp="CP-cli"))
    result = runner.invoke(app, ["telemetry", "--idle-exit", "1.5", "--metrics-port", "0"])
    assert result.exit_code == 0, result.output
    assert "8 consumed, 8 applied" in result.output and "1 sessions handed off" in result.output
