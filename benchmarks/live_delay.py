"""Live faults end to end in real time: from the charger's first telltale frame to the email.

    .venv/bin/python benchmarks/live_delay.py [--exports ../shared/acn] [--chargers 150]
        [--speedup 60] [--meter-interval 10] [--minutes 3] [--out live_delay.json]

Starts a private stack: the embedded Kafka-compatible broker and the SMTP sink (through
`LocalStack`), the machine's RabbitMQ on 5672 with a uuid-named exchange and queues,
uuid-named topics and group, and a temporary state dir. Runs the real processes:
`evguard ocpp serve` (standalone, `--allow-unknown`), `evguard telemetry`, `evguard alert`.
Then `evguard simulate` replays real ACN sessions (`--exports`, the busiest `--chargers`
stations, packed back to back) over real OCPP WebSockets at `--speedup`, half 1.6 and
half 2.0.1, with planted live faults. Afterwards it reads the monitoring store's live
alert rows and the fleet's labels, matched by charger, transaction and kind:

- delay = `emailed_ts` (the alert consumer's SMTP delivery) - the label's `sent_ts` (the
  wall clock just before the first telltale frame went out; the silent charger: the
  dropped link), p50/p90/max per kind, and the recall of the faults sent in this run;
- the part of it spent waiting for more samples in charger time (`opened_ts -
  first_sample_ts`, divided by the speed-up), and what the delay would be at 1x with the
  same sample interval (that wait at full length plus the measured rest).

`never_unplugged` is left out by default: its detector waits 24 simulated hours by design
(the offline evaluation, `evguard evaluate --live-faults`, measures it). Without the
exports the benchmark prints why and exits 0. Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' support kits
DEFAULT_EXPORTS = ROOT.parent / "shared" / "acn"
KINDS = ("no_current", "overcurrent", "meter_frozen", "meter_backwards", "overtemperature",
         "faulted", "silent")


def export_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob("*.json"))
    return [path] if path.is_file() else []


def wait_for(check, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "max": None}
    a = np.asarray(values)
    return {"n": len(values), "p50": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "max": float(a.max())}


def match(labels: list[dict], rows: list[dict], speedup: float,
          fleet_stop_ts: float = float("inf")) -> dict:
    """Each label's episode (same charger, transaction and kind); the delays; the rest
    (an episode that began as the fleet stopped, its chargers dropping their links
    mid-transaction, is counted apart)."""
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["charge_point_id"], str(row["transaction_id"]), row["kind"]),
                          []).append(row)
    found, used = [], set()
    for label in labels:
        candidates = by_key.get((label["chargePointId"], str(label["transactionId"]),
                                 label["kind"]), [])
        row = min(candidates, key=lambda r: r["first_sample_ts"], default=None)
        if row is None:
            continue
        used.add(row["alert_id"])
        wait_s = max(0.0, (row["opened_ts"] or 0.0) - row["first_sample_ts"])
        emailed = row["emailed_ts"]
        delay = emailed - label["sent_ts"] if emailed is not None else None
        found.append({"kind": label["kind"], "alert_id": row["alert_id"],
                      "email_state": row["email_state"], "delay_s": delay,
                      "gateway_s": row["first_received_ts"] - label["sent_ts"],
                      "detected_s": row["detected_ts"] - label["sent_ts"],
                      "sample_wait_charger_s": wait_s,
                      "at_1x_s": None if delay is None else delay - wait_s / speedup + wait_s})
    labelled = {(lab["chargePointId"], str(lab["transactionId"])): lab["kind"] for lab in labels}
    unmatched, others = Counter(), []
    for row in rows:
        if row["alert_id"] in used:
            continue
        planted = labelled.get((row["charge_point_id"], str(row["transaction_id"])))
        if row["first_received_ts"] >= fleet_stop_ts:
            unmatched[f"at the fleet's stop: {row['kind']}"] += 1
            continue
        unmatched[f"{planted}->{row['kind']}" if planted else f"unlabelled {row['kind']}"] += 1
        others.append({"kind": row["kind"], "charge_point_id": row["charge_point_id"],
                       "transaction_id": row["transaction_id"], "planted": planted,
                       "first_received_ts": row["first_received_ts"],
                       "evidence": row["evidence"]})
    return {"found": found, "unmatched": dict(unmatched), "others": others}


def summarise(labels: list[dict], matched: dict, kinds: tuple[str, ...]) -> dict:
    per_kind = {}
    for kind in kinds:
        sent = sum(1 for lab in labels if lab["kind"] == kind)
        mine = [f for f in matched["found"] if f["kind"] == kind]
        emailed = [f for f in mine if f["delay_s"] is not None]
        per_kind[kind] = {
            "sent": sent, "alerted": len(mine), "emailed": len(emailed),
            "recall": len(mine) / sent if sent else None,
            "delay_s": quantiles([f["delay_s"] for f in emailed]),
            "detected_s": quantiles([f["detected_s"] for f in mine]),
            "at_1x_s": quantiles([f["at_1x_s"] for f in emailed])}
    everything = [f for f in matched["found"] if f["delay_s"] is not None]
    return {"kinds": per_kind, "all": {
        "sent": len(labels), "alerted": len(matched["found"]), "emailed": len(everything),
        "delay_s": quantiles([f["delay_s"] for f in everything]),
        "at_1x_s": quantiles([f["at_1x_s"] for f in everything])},
        "other_episodes": matched["unmatched"]}


def table(summary: dict) -> str:
    def f(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)
    header = ("| kind | sent | alerted | emailed | recall | email p50 s | p90 s | max s "
              "| detected p50 s | at 1x p50 s |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, row in [*summary["kinds"].items(), ("all", summary["all"])]:
        d, one = row["delay_s"], row["at_1x_s"]
        det = row.get("detected_s", {"p50": None})
        recall = row.get("recall", row["alerted"] / row["sent"] if row["sent"] else None)
        lines.append(f"| {kind} | {row['sent']} | {row['alerted']} | {row['emailed']} | "
                     f"{f(recall, '.3f')} | {f(d['p50'])} | {f(d['p90'])} | {f(d['max'])} | "
                     f"{f(det['p50'])} | {f(one['p50'], '.1f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS,
                        help="ACN export file or folder of them (default ../shared/acn)")
    parser.add_argument("--chargers", type=int, default=150, help="Stations (busiest first)")
    parser.add_argument("--sessions", type=int, default=None,
                        help="Sessions to replay (default 3 per charger)")
    parser.add_argument("--speedup", type=float, default=60.0)
    parser.add_argument("--meter-interval", type=float, default=10.0,
                        help="Simulated seconds between meter values")
    parser.add_argument("--fault-rate", type=float, default=0.5)
    parser.add_argument("--faults", default=",".join(KINDS), help="Kinds to plant")
    parser.add_argument("--minutes", type=float, default=3.0, help="Real minutes of replay")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="Seconds to wait for the last emails after the fleet stops")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="Gateway port (default: free)")
    parser.add_argument("--out", type=Path, default=Path("live_delay.json"))
    args = parser.parse_args()

    files = export_files(args.exports)
    if not files:
        print(f"skipped: no ACN exports at {args.exports}")
        return
    kinds = tuple(k for k in args.faults.split(",") if k)

    from evguard.services.process import free_port, port_open
    from evguard.services.stack import LocalStack
    from pipelines.scores.store import MonitoringStore
    from pipelines.settings import Settings, settings_env
    from tests.support.queues import consumer_queues

    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp, consumer_queues(Settings(
            _env_file=None, state_dir=Path(tmp) / "state", data_dir=Path(tmp) / "data",
            kafka_port=free_port(), smtp_port=free_port(), metrics_port=free_port(),
            dashboard_port=free_port(), alert_cooldown_s=1,
            ocpp_port=args.port or free_port(), ocpp_metrics_port=free_port(),
            telemetry_metrics_port=free_port(), ocpp_allow_unknown=True,
            topic_telemetry=f"bench-telemetry-{tag}", topic_telemetry_dlq=f"bench-tdlq-{tag}",
            topic_telemetry_state=f"bench-tstate-{tag}", topic_sessions=f"bench-sessions-{tag}",
            telemetry_group=f"bench-telemetry-{tag}"), tag) as settings:
        stack = LocalStack(settings)
        stack.up(only=("kafka", "smtp"))
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        evguard = str(Path(sys.executable).parent / "evguard")
        logs = Path(tmp) / "logs"
        logs.mkdir()
        labels_path = Path(tmp) / "labels.jsonl"
        commands = {
            "gateway": [evguard, "ocpp", "serve", "--port", str(settings.ocpp_port),
                        "--allow-unknown"],
            "telemetry": [evguard, "telemetry"],
            "alert": [evguard, "alert"]}
        procs: dict[str, subprocess.Popen] = {}
        store = MonitoringStore(settings.monitoring_db)
        try:
            for name, cmd in commands.items():
                with open(logs / name, "wb") as log:
                    procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT,
                                                   start_new_session=True)
            if not wait_for(lambda: port_open("127.0.0.1", settings.ocpp_port), 60):
                raise SystemExit("the gateway did not open its port:\n"
                                 + (logs / "gateway").read_text()[-2000:])
            time.sleep(8)  # the processor joins its group, the consumers bind their queues
            sessions = args.sessions or 3 * args.chargers
            fleet = [evguard, "simulate", "--url", f"ws://127.0.0.1:{settings.ocpp_port}",
                     "--source", "exports", *[a for p in files for a in ("--exports", str(p))],
                     "--sessions", str(sessions), "--stations", str(args.chargers),
                     "--speedup", str(args.speedup), "--meter-interval",
                     str(args.meter_interval), "--fault-rate", str(args.fault_rate),
                     "--faults", ",".join(kinds), "--schedule", "packed",
                     "--seed", str(args.seed), "--labels", str(labels_path),
                     "--max-minutes", str(args.minutes), "--no-validate"]
            print("fleet:", " ".join(fleet[1:]), flush=True)
            began = time.time()
            with open(logs / "fleet", "wb") as log:
                fleet_proc = subprocess.Popen(fleet, cwd=ROOT, env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
                # its stations stop (and drop their links) at --max-minutes of its own
                # clock, which starts after it loaded the exports: a little later than this
                fleet_stop_ts = began + 60.0 * args.minutes
                try:
                    code = fleet_proc.wait(60.0 * args.minutes + 45.0)
                except subprocess.TimeoutExpired:
                    # a station outran --max-minutes (seen here): stopped, the labels are
                    # flushed line by line
                    fleet_proc.terminate()
                    fleet_proc.wait(30)
                    code = 0
                    print("the fleet outran --max-minutes: stopped with SIGTERM", flush=True)
            if code != 0:
                raise SystemExit(f"evguard simulate exited {code}:\n"
                                 + (logs / "fleet").read_text()[-3000:])
            labels = [json.loads(line) for line in labels_path.read_text().splitlines()
                      if line.strip()]

            def all_emailed() -> bool:
                rows = store.live_alert_rows()
                return len(match(labels, rows, args.speedup)["found"]) >= len(labels) and all(
                    r["email_state"] is not None for r in rows)
            wait_for(all_emailed, args.settle, interval=1.0)
            rows = store.live_alert_rows()
            summary_path = labels_path.with_suffix(".summary.json")
            fleet_summary = (json.loads(summary_path.read_text())
                             if summary_path.exists() else {})
        finally:
            for proc in procs.values():
                proc.terminate()
            for name, proc in procs.items():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    print(f"{name} did not stop in 30 s: killed", file=sys.stderr)
            store.close()
            stack.down()

    matched = match(labels, rows, args.speedup, fleet_stop_ts)
    summary = summarise(labels, matched, kinds)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "args": {k: str(v) for k, v in vars(args).items()}, "fleet": fleet_summary,
              "wall_s": time.time() - began, "summary": summary,
              "fleet_stop_ts": fleet_stop_ts, "episodes": matched["found"],
              "other_episodes": matched["others"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{fleet_summary.get('stations', '?')} chargers, "
          f"{fleet_summary.get('sessions_done', '?')} sessions done, "
          f"{fleet_summary.get('frames_sent', '?')} frames, {args.speedup:g}x, meter values "
          f"every {args.meter_interval:g} simulated s; fleet lateness p99 "
          f"{fleet_summary.get('lateness_p99_s', '?')} s; {report['machine']}\n")
    print(table(summary))
    print(f"\nother episodes (planted kind -> alerted kind): {summary['other_episodes']}")
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
