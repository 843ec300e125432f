"""Every command answers --help, and the status table is readable."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from evguard.cli import app
from pipelines.settings import Settings

runner = CliRunner()


def _command_paths(group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path
        if getattr(cmd, "commands", None):
            yield from _command_paths(cmd, path)


def test_every_command_has_help():
    root = typer.main.get_command(app)
    paths = list(_command_paths(root))
    assert ("services", "up") in paths
    for path in [(), *paths]:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_status_lists_every_service(tmp_path, monkeypatch):
    monkeypatch.setenv("EVGUARD_STATE_DIR", str(tmp_path))
    result = runner.invoke(app, ["services", "status"])
    assert result.exit_code == 0, result.output
    for name in ("kafka", "rabbitmq", "mlflow", "prefect", "smtp"):
        assert name in result.output


def test_env_example_lists_every_setting():
    from pathlib import Path

    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for field in Settings.model_fields:
        assert f"EVGUARD_{field.upper()}=" in example, field
