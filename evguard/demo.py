"""`evguard demo`: the whole platform end to end on the embedded local stack.

Every step goes through the same path a user takes: the local services, the
Prefect deployments of `prefect.yaml` run by a Prefect process worker, MLflow,
Kafka, RabbitMQ, the consumers and the dashboard. The demo only sequences them
and waits on observable outcomes (a finished flow run, stored scores, emails).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from evguard.services.process import ServiceError, wait_until
from evguard.services.stack import ALL_SERVICES, LocalStack, prefect_env
from fleet import FleetConfig, assign_faults, assign_versions, schedule_sessions, simulate
from gateway.registry import add_charger, registry_path
from pipelines.contracts.dates import rfc1123_to_epoch
from pipelines.data.synth import generate_sessions
from pipelines.models.registry import load_champion
from pipelines.scores.store import MonitoringStore
from pipelines.settings import Settings, settings_env
from pipelines.telemetry.charging import PlanOptions

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_METRICS = ("pr_auc", "roc_auc", "precision_at_k", "recall_at_budget", "em", "mv")
LONG_RUNNING = ("serve_flow/serve", "monitor_flow/monitor", "alert_flow/alert",
                "ocpp_gateway_flow/ocpp-gateway", "telemetry_flow/telemetry")
# never_unplugged is left out of the demo: its detector waits 24 simulated hours
LIVE_DEMO_KINDS = ("no_current", "overcurrent", "meter_frozen", "meter_backwards",
                   "overtemperature", "faulted", "silent")
LIVE_DEMO_PASSWORD = "evguard-demo-charger"
EMAIL_DONE = ("sent", "suppressed", "dead_lettered")


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


@dataclass
class DemoOptions:
    train_sessions: int = 4000
    replay_sessions: int = 2000
    rate: float = 1000.0
    anomaly_rate: float = 0.02
    seed: int = 7
    acn_paths: tuple[str, ...] = ()
    keep_running: bool = False
    timeout_s: float = 240.0
    live_chargers: int = 30
    live_fault_rate: float = 0.25
    live_speedup: float = 600.0
    live_meter_interval_s: float = 120.0
    live_ocpp_201_share: float = 0.5


@dataclass
class DemoSummary:
    timings: dict[str, float] = field(default_factory=dict)
    replayed: int = 0
    scored: int = 0
    anomalies: int = 0
    alerts_sent: int = 0
    emails: list[Path] = field(default_factory=list)
    champion: dict = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    live: dict = field(default_factory=dict)
    live_alerts: list[dict] = field(default_factory=list)
    live_sessions: int = 0
    live_scored: int = 0
    live_anomalies: int = 0


def child_env(settings: Settings) -> dict[str, str]:
    """Environment of every process the demo starts: the same settings, same Prefect API."""
    return {**os.environ, **settings_env(settings), **prefect_env(settings)}


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def deploy_all(settings: Settings) -> None:
    """`prefect deploy --all` from the project root, so every deployment appears in the UI."""
    prefect = str(Path(sys.executable).parent / "prefect")
    result = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=PROJECT_ROOT,
                            env=child_env(settings), capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise DemoError(f"prefect deploy --all failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


class Demo:
    """Runs the steps in order; `log` receives one line per step."""

    def __init__(self, settings: Settings, options: DemoOptions,
                 log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.options = options
        self.log = log
        self.stack = LocalStack(settings)
        self.summary = DemoSummary()
        self.before = {"scored": 0, "anomalies": 0, "alerts_sent": 0, "emails": 0}
        self.flow_runs: dict[str, str] = {}
        self.live_labels = settings.state_path / "demo" / "live-labels.jsonl"
        self.live_started = time.time()
        self.live_stations: set[str] = set()
        os.environ.update(prefect_env(settings))  # this process talks to the same Prefect API

    def step(self, name: str, fn: Callable[[], object]) -> object:
        t0 = time.monotonic()
        self.log(f"▶ {name} …")
        result = fn()
        self.summary.timings[name] = round(time.monotonic() - t0, 1)
        self.log(f"✔ {name} ({self.summary.timings[name]:.1f}s)")
        return result

    def run(self) -> DemoSummary:
        t0 = time.monotonic()
        try:
            self.step("services up", lambda: self.stack.up(ALL_SERVICES))
            # the MLflow UI server takes a while and nothing waits on it: start it alongside
            ui = threading.Thread(target=self.stack.mlflow_ui_process().start, daemon=True)
            ui.start()
            self.step("prefect deploy --all", lambda: deploy_all(self.settings))
            self.step("prefect worker", self._start_worker)
            self.step("ingest (deployment ingest-daily)", self._ingest)
            self.step("train + promote (deployment train-weekly)", self._train)
            self.step("serve, monitor, alert deployments + dashboard", self._start_streaming)
            self.step("replay sessions through Kafka", self._replay)
            self.step("wait for every score to be stored", self._wait_scored)
            self.step("wait for alert emails", self._wait_alerts)
            self.step("live OCPP fleet through the gateway (deployment ocpp-gateway)",
                      self._live_fleet)
            self.step("wait for live alert emails and the handed-off sessions' scores",
                      self._wait_live)
            ui.join(timeout=60)
            self._collect()
        finally:
            self.summary.timings["total"] = round(time.monotonic() - t0, 1)
            if not self.options.keep_running:
                self.stop()
        return self.summary

    # ---- steps -------------------------------------------------------------
    def _start_worker(self) -> None:
        proc = self.stack.prefect_worker_process()
        proc.env = {**proc.env, **settings_env(self.settings)}
        proc.start()

    def _run(self, name: str, params: dict, wait: bool = True) -> str:
        from prefect.deployments import run_deployment

        run = run_deployment(name, parameters=params, timeout=None if wait else 0,
                             poll_interval=1)
        self.flow_runs[name] = str(run.id)
        if wait and not run.state.is_completed():
            raise DemoError(f"{name}: flow run {run.id} ended {run.state.type.value}: "
                            f"{run.state.message}. See the Prefect UI at {self.settings.prefect_ui}.")
        return str(run.id)

    def _ingest(self) -> None:
        o = self.options
        if o.acn_paths:
            params = {"source": "files", "paths": list(o.acn_paths)}
        else:
            params = {"source": "auto", "sessions": o.train_sessions, "seed": o.seed,
                      "anomaly_rate": o.anomaly_rate}
        self._run("ingest_flow/ingest-daily", {"params": params})

    def _train(self) -> None:
        # a small grid keeps the demo quick; the weekly deployment searches the full one
        params = {"reason": "demo", "n_estimators": [100], "max_samples": [256],
                  "max_features": [1.0], "extension_levels": [1]}
        self._run("train_flow/train-weekly", {"params": params})

    def _start_streaming(self) -> None:
        for name in LONG_RUNNING:
            self._run(name, {}, wait=False)
        self.stack.dashboard_process().start()
        s = self.settings
        for what, port in (("serving worker", s.metrics_port),
                           ("OCPP gateway", s.ocpp_metrics_port),
                           ("telemetry processor", s.telemetry_metrics_port)):
            health = f"http://127.0.0.1:{port}/healthz"
            if not wait_until(lambda url=health: _http_ok(url), 120, interval=1):
                raise DemoError(f"the {what} did not become healthy ({health}); "
                                f"see its flow run in the Prefect UI at {s.prefect_ui}")

    def _counts(self) -> dict[str, int]:
        """Rows and emails so far: a re-run of the demo reports only what it added."""
        from sqlalchemy import text

        store = MonitoringStore(self.settings.monitoring_db)
        try:
            with store.engine.connect() as conn:
                counts = {name: conn.execute(text(sql)).scalar() or 0 for name, sql in (
                    ("scored", "select count(*) from scores"),
                    ("anomalies", "select count(*) from scores where is_anomaly"),
                    ("alerts_sent", "select count(*) from alerts where state = 'sent'"))}
        finally:
            store.close()
        counts["emails"] = len(list(self.settings.outbox_dir.glob("*.eml")))
        return counts

    def _replay(self) -> None:
        self.before = self._counts()
        o = self.options
        # a re-run streams new sessions: a seed of its own, derived from what is stored
        seed = o.seed + 1000 + self.before["scored"]
        params = {"source": "synthetic", "sessions": o.replay_sessions, "seed": seed,
                  "anomaly_rate": max(o.anomaly_rate, 0.02), "rate": o.rate}
        self._run("replay_flow/replay", {"params": params})
        self.summary.replayed = o.replay_sessions

    def _wait_scored(self) -> None:
        store = MonitoringStore(self.settings.monitoring_db)
        try:
            target = self.before["scored"] + self.summary.replayed
            if not wait_until(lambda: store.count_scores() >= target,
                              self.options.timeout_s, interval=1):
                raise DemoError(f"only {store.count_scores() - self.before['scored']} of "
                                f"{self.summary.replayed} "
                                f"sessions were stored within {self.options.timeout_s:.0f}s")
        finally:
            store.close()

    def _wait_alerts(self) -> None:
        outbox = self.settings.outbox_dir

        def settled() -> bool:
            first = len(list(outbox.glob("*.eml")))
            time.sleep(2)
            return first > self.before["emails"] and len(list(outbox.glob("*.eml"))) == first

        wait_until(settled, 60, interval=0.5)

    def _live_fleet(self) -> None:
        """Synthetic sessions replayed by OCPP chargers over real WebSockets against the
        demo's gateway, with planted live faults; their labels say when each was sent."""
        o, s = self.options, self.settings
        seed = o.seed + 2000 + self.before["scored"]
        records, _ = generate_sessions(max(400, o.live_chargers * 8), seed=seed)
        chosen = demo_fleet_sessions(records, o.live_chargers)
        stations = [str(r["stationID"]) for r in chosen]
        # the chargers go into the registry (HTTP Basic, scrypt-hashed password) with their
        # ACN site, so alerts carry it and the scoring worker accepts their sessions
        path = registry_path(s)
        for record in chosen:
            add_charger(path, str(record["stationID"]), str(record["siteID"]),
                        LIVE_DEMO_PASSWORD)
        versions = assign_versions(stations, o.live_ocpp_201_share, seed)
        options = PlanOptions(sample_interval_s=o.live_meter_interval_s)
        faults = assign_faults(chosen, versions, o.live_fault_rate, LIVE_DEMO_KINDS, seed,
                               options)
        scheduled = schedule_sessions(chosen, versions, faults, mode="packed", gap_s=120,
                                      seed=seed)
        # every charger connects and is authenticated before the first plug-in, so no
        # charger clock runs ahead of its schedule (see docs/telemetry.md)
        config = FleetConfig(url=f"ws://127.0.0.1:{s.ocpp_port}", speedup=o.live_speedup,
                             meter_interval_s=o.live_meter_interval_s,
                             password=LIVE_DEMO_PASSWORD, seed=seed, clock="now",
                             start_delay_s=6.0, max_wall_s=90.0)
        self.live_labels = s.state_path / "demo" / "live-labels.jsonl"
        self.live_started = time.time()
        report = simulate(scheduled, config, labels_path=self.live_labels)
        self.live_stations = set(stations)
        self.summary.live = {
            "chargers": report.stations, "by_version": dict(report.stations_by_version),
            "transactions": report.transactions_ended, "frames": report.frames_sent,
            "faults_sent": dict(report.faults_sent), "errors": sum(report.errors.values()),
            "wall_s": round(report.wall_s, 1),
            "simulated_h": round(report.simulated_s / 3600, 1),
            "speedup": o.live_speedup, "stopped_early": report.stopped_early}
        if not report.transactions_started:
            raise DemoError(f"no charger completed a transaction through the gateway at "
                            f"{config.url}: {dict(report.errors)}")

    def _wait_live(self) -> None:
        labels = [json.loads(line) for line in self.live_labels.read_text().splitlines()]
        planted = {(lb["chargePointId"], lb["kind"]): lb for lb in labels}
        store = MonitoringStore(self.settings.monitoring_db)
        try:
            def episodes() -> list[dict]:
                return [row for row in store.live_alert_rows(since_ts=self.live_started - 60)
                        if row["charge_point_id"] in self.live_stations]

            def emailed() -> bool:
                done = {(r["charge_point_id"], r["kind"]) for r in episodes()
                        if r["email_state"] in EMAIL_DONE}
                return set(planted) <= done

            # both take a second or two; the limits only bound a fault in the chain
            wait_until(emailed, 30, interval=0.5)
            target = self.summary.live.get("transactions", 0)
            wait_until(lambda: self._live_scores()[0] >= target, 20, interval=1)
            self.summary.live_sessions = target
            self.summary.live_scored, self.summary.live_anomalies = self._live_scores()
            self.summary.live_alerts = live_alert_lines(episodes(), planted)
        finally:
            store.close()

    def _live_scores(self) -> tuple[int, int]:
        """Scores of the sessions the telemetry processor handed off from the live fleet."""
        from sqlalchemy import bindparam, text

        store = MonitoringStore(self.settings.monitoring_db)
        query = text("select count(*), sum(case when is_anomaly then 1 else 0 end) from scores "
                     "where station_id in :stations and scored_ts >= :since") \
            .bindparams(bindparam("stations", expanding=True))
        try:
            with store.engine.connect() as conn:
                count, anomalies = conn.execute(query, {
                    "stations": sorted(self.live_stations),
                    "since": self.live_started}).one()
        finally:
            store.close()
        return int(count or 0), int(anomalies or 0)

    def _collect(self) -> None:
        after = self._counts()
        self.summary.scored = after["scored"] - self.before["scored"]
        self.summary.anomalies = after["anomalies"] - self.before["anomalies"]
        self.summary.alerts_sent = after["alerts_sent"] - self.before["alerts_sent"]
        emails = sorted(self.settings.outbox_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime)
        self.summary.emails = emails[self.before["emails"]:]
        champion = load_champion(self.settings)
        metrics = getattr(champion, "metrics", {}) or {}
        self.summary.champion = {"name": champion.name, "version": champion.version,
                                 "threshold": champion.threshold,
                                 "metrics": {k: v for k, v in metrics.items()
                                             if k in SUMMARY_METRICS or k.startswith("recall_type_")}}
        s = self.settings
        self.summary.urls = {"dashboard": f"http://127.0.0.1:{s.dashboard_port}",
                             "prefect": s.prefect_ui, "mlflow": s.mlflow_ui}

    # ---- shutdown ----------------------------------------------------------
    def stop(self) -> None:
        """Cancel the long-running flow runs, then stop every process the demo started."""
        self._cancel_long_running()
        self.stack.down(log=self.log)

    def _cancel_long_running(self) -> None:
        if not any(name in self.flow_runs for name in LONG_RUNNING):
            return
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            for name in LONG_RUNNING:
                run_id = self.flow_runs.get(name)
                if run_id:
                    try:
                        client.set_flow_run_state(run_id, Cancelling(), force=True)
                    except Exception as exc:  # noqa: BLE001 - best effort: `down` stops the worker anyway
                        self.log(f"could not cancel {name}: {exc}")

        def all_final() -> bool:
            with get_client(sync_client=True) as client:
                return all(client.read_flow_run(self.flow_runs[n]).state.is_final()
                           for n in LONG_RUNNING if n in self.flow_runs)

        wait_until(all_final, 30, interval=1)


def demo_fleet_sessions(records: list[dict], chargers: int, min_h: float = 1.0,
                        max_h: float = 3.0) -> list[dict]:
    """One session per station, of the first `chargers` stations, that stays between
    `min_h` and `max_h` hours (so the fleet finishes in seconds at the demo's speed-up)."""
    chosen: dict[str, dict] = {}
    for record in records:
        start = rfc1123_to_epoch(record.get("connectionTime"))
        end = rfc1123_to_epoch(record.get("disconnectTime"))
        station = str(record["stationID"])
        if start and end and min_h * 3600 <= end - start <= max_h * 3600 \
                and station not in chosen:
            chosen[station] = record
        if len(chosen) == chargers:
            break
    return list(chosen.values())


def live_alert_lines(episodes: list[dict], planted: dict[tuple[str, str], dict]) -> list[dict]:
    """One line per planted fault (alerted or missed) and per unplanted alert, with the
    delay from the fault's first telltale frame (the fleet's send time) to the email."""
    by_key: dict[tuple[str, str], dict] = {}
    for row in episodes:  # oldest first: keep each connector and kind's first episode
        by_key.setdefault((row["charge_point_id"], row["kind"]), row)
    lines = []
    for key in sorted(set(by_key) | set(planted), key=lambda k: (k[1], k[0])):
        row, label = by_key.get(key), planted.get(key)
        line = {"kind": key[1], "charge_point_id": key[0], "planted": label is not None,
                "ocpp_version": label["ocppVersion"] if label else None,
                "connector": row["connector_id"] if row else (label or {}).get("connectorId"),
                "evidence": row["evidence"] if row else None,
                "email": row["email_state"] if row else "not alerted",
                "delay_s": None, "gateway_to_email_s": None}
        if row and row["emailed_ts"]:
            if label:
                line["delay_s"] = round(row["emailed_ts"] - label["sent_ts"], 2)
            line["gateway_to_email_s"] = round(row["emailed_ts"] - row["first_received_ts"], 2)
        lines.append(line)
    return lines


def run_demo(settings: Settings, options: DemoOptions, log=print) -> DemoSummary:
    try:
        return Demo(settings, options, log).run()
    except ServiceError as exc:
        raise DemoError(str(exc)) from exc
