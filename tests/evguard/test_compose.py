"""docker-compose.yml: parses, matches the README, and is wired only through real settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from evguard.cli import app
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _readme_compose_services() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run on real servers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE)


def test_every_service_named_in_the_readme_exists():
    named = _readme_compose_services()
    assert len(named) >= 10
    assert set(named) <= set(SERVICES)
    for required in ("kafka", "rabbitmq", "postgres", "mlflow", "prefect-server",
                     "prefect-worker", "serving", "monitor", "alert", "dashboard"):
        assert required in SERVICES


def test_evguard_variables_are_real_settings():
    fields = {f"EVGUARD_{name.upper()}" for name in Settings.model_fields}
    seen = set()
    for service in SERVICES.values():
        for key in (service.get("environment") or {}):
            if key.startswith("EVGUARD_"):
                assert key in fields, key
                seen.add(key)
    assert {"EVGUARD_KAFKA_BOOTSTRAP", "EVGUARD_RABBITMQ_URL", "EVGUARD_MLFLOW_TRACKING_URI",
            "EVGUARD_PREFECT_API_URL", "EVGUARD_MONITORING_DB_URL"} <= seen


def test_dependencies_and_commands_exist():
    commands = {c.name for c in typer.main.get_command(app).commands.values()}
    for name, service in SERVICES.items():
        for dep in service.get("depends_on") or {}:
            assert dep in SERVICES, (name, dep)
        command = service.get("command")
        if isinstance(command, str) and command.startswith("evguard "):
            assert command.split()[1] in commands, (name, command)


def test_published_ports_are_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def _compose_command() -> list[str]:
    """A real Compose implementation: the Docker CLI plugin, else Debian's docker-compose
    (scripts/ensure-compose.sh installs it; `config` needs no Docker engine)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no Compose implementation to check docker-compose.yml: neither `docker "
                "compose` nor `docker-compose` runs here, and scripts/ensure-compose.sh "
                "(run by `make test`) could not install Debian's docker-compose")


def _compose_config(compose_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*_compose_command(), "-f", str(compose_file), "config", "--quiet"],
                          cwd=compose_file.parent, capture_output=True, text=True, check=False)


def test_a_real_compose_parser_accepts_docker_compose_yml():
    result = _compose_config(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stderr


def test_the_compose_check_fails_on_an_invalid_file(tmp_path):
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["dashboard"]["depends_on"]["no-such-service"] = {
        "condition": "service_started"}
    broken["services"]["dashboard"]["restart_policy"] = "always"  # a key Compose does not have
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken, sort_keys=False))
    result = _compose_config(tmp_path / "docker-compose.yml")
    assert result.returncode != 0
    assert "restart_policy" in result.stderr or "no-such-service" in result.stderr, result.stderr
