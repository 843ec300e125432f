"""What the manifests name exists in the code: settings, endpoints and commands.

A manifest that names a setting evguard does not read, a probe path no server answers,
a port no process binds or a command that does not exist fails here, not on a cluster.
"""

from __future__ import annotations

import shlex

import click
import httpx
import pytest
import typer.main
from starlette.testclient import TestClient

from dashboard.app import create_app as create_dashboard
from evguard.cli import app as evguard_app
from pipelines.metrics_http import MetricsServer
from pipelines.settings import Settings
from tests.deploy.manifests import (
    KUBERNETES,
    Container,
    containers,
    env_file,
    of_kind,
)

# Variables that are no program's setting but the environment's own.
PLAIN_VARIABLES = {"HOME"}
# evguard process -> (port setting of its probe endpoint, its bind-address setting)
EVGUARD_ENDPOINTS = {
    ("serve",): ("metrics_port", "metrics_host"),
    ("telemetry",): ("telemetry_metrics_port", "metrics_host"),
    ("ocpp", "serve"): ("ocpp_metrics_port", "ocpp_host"),
    ("dashboard",): ("dashboard_port", "dashboard_host"),
    ("monitor",): ("monitor_metrics_port", "metrics_host"),
    ("alert",): ("alert_metrics_port", "metrics_host"),
}


@pytest.fixture(scope="module")
def prefect_setting_names() -> set[str]:
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    return _get_valid_setting_names(PrefectSettings)


@pytest.fixture(scope="module")
def mlflow_variable_names() -> set[str]:
    import mlflow.environment_variables
    from mlflow.cli import server

    names = {param.envvar for param in server.params if param.envvar}
    names |= {value.name for value in vars(mlflow.environment_variables).values()
              if hasattr(value, "name") and isinstance(value.name, str)}
    return names


def all_variable_names(docs: list[dict]) -> set[str]:
    names = set(env_file(KUBERNETES / "secrets.env.example"))
    for config in of_kind(docs, "ConfigMap"):
        names |= set(config.get("data", {}))
    for container in containers(docs):
        names |= container.env_names()
    return names


def test_every_variable_is_a_real_setting(docs, prefect_setting_names, mlflow_variable_names):
    evguard = {f"EVGUARD_{name.upper()}" for name in Settings.model_fields}
    unknown = set()
    for name in all_variable_names(docs):
        if name.startswith("EVGUARD_"):
            known = name in evguard
        elif name.startswith("PREFECT_"):
            known = name in prefect_setting_names
        elif name.startswith("MLFLOW_"):
            known = name in mlflow_variable_names
        else:
            known = name in PLAIN_VARIABLES
        if not known:
            unknown.add(name)
    assert not unknown, f"not a setting of evguard, Prefect or MLflow: {sorted(unknown)}"


def test_each_process_builds_its_settings_from_its_environment(docs):
    # a value of the wrong type (a list that is not JSON, a port that is not a number)
    # fails here as it would fail at the process's start
    for container in containers(docs):
        if container.command[:1] == ["evguard"]:
            container.settings(docs)


def evguard_endpoint(container: Container) -> tuple[str, str] | None:
    for words, endpoint in EVGUARD_ENDPOINTS.items():
        if tuple(container.command[1:1 + len(words)]) == words:
            return endpoint
    return None


def probe_targets(container: Container) -> set[tuple[str, int]]:
    return {(probe["httpGet"]["path"], container.port(probe["httpGet"]["port"]))
            for probe in container.probes().values()}


def test_evguard_probes_call_endpoints_the_processes_serve_on_their_ports(docs):
    served = 0
    for container in containers(docs):
        endpoint = evguard_endpoint(container)
        if endpoint is None or not container.probes():
            continue
        port_setting, host_setting = endpoint
        settings = container.settings(docs)
        # reachable from the kubelet: bound to every interface, on the probed port
        assert getattr(settings, host_setting) == "0.0.0.0", container.name
        for path, port in probe_targets(container):
            assert port == getattr(settings, port_setting), (container.name, path, port)
            assert answers(container, settings, path) == 200, (container.name, path)
            served += 1
    assert served >= 6


def answers(container: Container, settings: Settings, path: str) -> int:
    """The status the process's own HTTP server gives for `path` (served for real)."""
    if container.command[1] == "dashboard":
        local = settings.model_copy(update={"monitoring_db_url": "sqlite://"})
        return TestClient(create_dashboard(local)).get(path).status_code
    server = MetricsServer(_NoMetrics(), lambda: (True, {}), "127.0.0.1", 0).start()
    try:
        return httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=5).status_code
    finally:
        server.stop()


class _NoMetrics:
    def render(self) -> bytes:
        return b""


def test_prefect_and_mlflow_probes_call_their_servers_real_endpoints(docs, monkeypatch):
    checked = set()
    for container in containers(docs):
        program = container.command[:1]
        for path, port in probe_targets(container):
            if program == ["mlflow"]:
                from mlflow.server import app

                assert app.test_client().get(path).status_code == 200, path
                assert port == int(option(container.command, "--port"))
            elif container.command[:3] == ["prefect", "server", "start"]:
                from prefect.server.api.server import create_app

                api = TestClient(create_app(ephemeral=True))
                assert api.get(path).status_code == 200, path
                assert port == int(option(container.command, "--port"))
            elif container.command[:3] == ["prefect", "worker", "start"]:
                from prefect.settings import Settings as PrefectSettings
                from prefect.workers.server import _build_healthcheck_server

                assert "--with-healthcheck" in container.command
                for item in container.spec["env"]:
                    if item.get("value") is not None:
                        monkeypatch.setenv(item["name"], item["value"])
                assert PrefectSettings().worker.webserver.port == port
                health = _build_healthcheck_server(lambda: True).config.app
                assert TestClient(health).get(path).status_code == 200, path
            else:
                continue
            checked.add(program[0] + " " + container.command[1])
    assert checked == {"mlflow server", "prefect server", "prefect worker"}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def commands_of(container: Container) -> list[list[str]]:
    """The program invocations a container runs (`sh -c "a && b"` is two)."""
    command = container.command
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in command[2].split("&&")]
    return [command]


def check_click(group: click.Command, words: list[str]) -> None:
    """Resolve `words` to a command and parse its options, without running it."""
    command, rest = group, list(words)
    # typer's groups are click-like, not click.Group subclasses: ask for the method
    while hasattr(command, "get_command") and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            raise click.UsageError(f"no command {name!r} in {command.name}")
        command = sub
    command.make_context(command.name, rest, resilient_parsing=False)


def check_prefect(words: list[str]) -> None:
    from prefect.cli._app import _app

    _app.parse_args(words, exit_on_error=False, print_error=False)


def check_command(words: list[str]) -> None:
    program, *rest = words
    if program == "evguard":
        check_click(typer.main.get_command(evguard_app), rest)
    elif program == "prefect":
        check_prefect(rest)
    elif program == "mlflow":
        from mlflow.cli import cli

        check_click(cli, rest)
    else:
        raise AssertionError(f"{program}: not an entry point of the image")


def test_every_container_command_is_a_real_entry_point(docs):
    for container in containers(docs):
        for words in commands_of(container):
            check_command(words)


@pytest.mark.parametrize("words", [["evguard", "sevre"], ["evguard", "ocpp", "serve", "--nope"],
                                   ["prefect", "worker", "start", "--bogus"],
                                   ["mlflow", "server", "--no-such-flag"], ["gunicorn"]])
def test_a_command_that_does_not_exist_is_refused(words):
    with pytest.raises(Exception):  # noqa: B017 (click, cyclopts and assert differ)
        check_command(words)
