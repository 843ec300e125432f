"""`evguard ocpp serve | add-charger`: the OCPP gateway and its charge point registry.

The gateway code is imported inside the commands: it loads Kafka's client and the OCPP
schemas, which would slow `evguard --help` down.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from evguard.commands.common import clear_errors, console, err_console, settings

app = typer.Typer(help="The OCPP gateway: chargers connect over WebSocket, telemetry goes to "
                       "Kafka.", no_args_is_help=True)


def _proxy_mode(s, metrics):
    """The proxy mode from gateway.proxy, wrapped in the gateway's `Mode`."""
    import asyncio

    from gateway.run import Mode

    try:
        from gateway.proxy import OcppProxy
    except ImportError as exc:
        err_console.print(f"[bold red]error:[/] proxy mode is not available: {exc}")
        raise typer.Exit(1) from None
    if not s.ocpp_upstream_url:
        err_console.print("[bold red]error:[/] proxy mode needs --upstream or "
                          "EVGUARD_OCPP_UPSTREAM_URL (the operator's CSMS, ws:// or wss://)")
        raise typer.Exit(2)
    proxy = OcppProxy.from_settings(s)
    proxy.register_metrics(metrics.registry)

    def health() -> tuple[bool, dict]:
        return True, proxy.health()  # forwarding does not depend on Kafka

    async def aclose() -> None:
        await asyncio.to_thread(proxy.close)

    return Mode("proxy", proxy.handle, health, aclose, prepare=proxy.prepare)


@app.command()
def serve(
    mode: Annotated[str | None, typer.Option(
        help="standalone (be the CSMS) or proxy (forward to --upstream) [EVGUARD_OCPP_MODE]")
    ] = None,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="WebSocket port; 0 = any free port [EVGUARD_OCPP_PORT]")] = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on [EVGUARD_OCPP_HOST]")] = None,
    upstream: Annotated[str | None, typer.Option(
        help="Proxy mode: the operator's CSMS URL; the charge point id is appended "
             "[EVGUARD_OCPP_UPSTREAM_URL]")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Port of /metrics and /healthz [EVGUARD_OCPP_METRICS_PORT]")
    ] = None,
    allow_unknown: Annotated[bool | None, typer.Option(
        "--allow-unknown/--known-only",
        help="Accept charge points missing from the registry [EVGUARD_OCPP_ALLOW_UNKNOWN]")
    ] = None,
    ack_timeout: Annotated[float, typer.Option(
        min=0.1, help="Standalone: seconds Kafka may take to acknowledge a CALL's events "
                      "before the charger gets CALLERROR InternalError")] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every connection")
                       ] = False,
) -> None:
    """Run the OCPP gateway until Ctrl-C or SIGTERM (then it closes the chargers' sockets and
    flushes Kafka).

    Chargers connect to ws://HOST:PORT/<chargePointId> (wss:// with EVGUARD_OCPP_TLS_CERT and
    _KEY) with subprotocol ocpp1.6 or ocpp2.0.1 and, when the registry holds a password for
    them, HTTP Basic. Add chargers with `evguard ocpp add-charger`.
    """
    import logging

    from gateway.metrics import GatewayMetrics
    from gateway.registry import Registry, RegistryError, registry_path
    from gateway.run import run_gateway, run_loop, standalone_mode

    overrides = {"ocpp_mode": mode, "ocpp_port": port, "ocpp_host": host,
                 "ocpp_upstream_url": upstream, "ocpp_metrics_port": metrics_port,
                 "ocpp_allow_unknown": allow_unknown}
    s = settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("evguard.gateway").setLevel(logging.INFO)
    if verbose is False:
        logging.getLogger("evguard.gateway.standalone").setLevel(logging.WARNING)
    if s.ocpp_mode not in ("standalone", "proxy"):
        err_console.print(f"[bold red]error:[/] unknown mode {s.ocpp_mode!r}; choose "
                          "standalone or proxy")
        raise typer.Exit(2)
    with clear_errors(RegistryError):
        registry = Registry(registry_path(s), allow_unknown=s.ocpp_allow_unknown)
    if not len(registry) and not s.ocpp_allow_unknown:
        err_console.print(f"[yellow]warning:[/] no charge point in {registry_path(s)} and "
                          "unknown ones are refused: add one with `evguard ocpp add-charger`")
    metrics = GatewayMetrics()
    if s.ocpp_mode == "proxy":
        gateway_mode = _proxy_mode(s, metrics)
    else:
        with clear_errors(ConnectionError):
            gateway_mode = standalone_mode(s, metrics, ack_timeout_s=ack_timeout)

    def ready(ws_port: int, metrics_at: int) -> None:
        scheme = "wss" if str(s.ocpp_tls_cert) not in ("", ".") else "ws"
        console.print(f"OCPP gateway ({gateway_mode.name}) at {scheme}://{s.ocpp_host}:"
                      f"{ws_port}/<chargePointId>, /metrics and /healthz on port {metrics_at}")

    with clear_errors(OSError):
        run_loop(run_gateway(s, gateway_mode, metrics, registry, ready=ready))
    console.print("gateway stopped")


@app.command("add-charger")
def add_charger(
    charge_point_id: Annotated[str, typer.Argument(help="The charger's OCPP identity")],
    site: Annotated[str, typer.Option(help="Its site (as in the sessions' siteID)")] = "",
    password: Annotated[str | None, typer.Option(
        help="Its HTTP Basic password (visible in the shell history: prefer --password-stdin)")
    ] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input")
    ] = False,
) -> None:
    """Add a charger to the registry, or replace it; only a salted hash of the password is
    stored. Without a password the charger connects without HTTP Basic."""
    from gateway.registry import RegistryError, registry_path
    from gateway.registry import add_charger as add

    if password is not None and password_stdin:
        err_console.print("[bold red]error:[/] give --password or --password-stdin, not both")
        raise typer.Exit(2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    path = registry_path(settings())
    with clear_errors(RegistryError, OSError):
        replaced = add(path, charge_point_id, site, password)
    console.print(f"{'replaced' if replaced else 'added'} {charge_point_id} (site {site!r}, "
                  f"{'password' if password else 'no password'}) in {path}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="ocpp", rich_help_panel="Serving")
