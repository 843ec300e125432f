"""Gateway load: N simulated chargers on one standalone gateway process, each sending
MeterValues every S seconds; acknowledgement latency and nothing lost.

    .venv/bin/python benchmarks/gateway_load.py [--chargers 5000] [--interval 10]
        [--duration 60] [--ramp 30] [--client-processes 2]
        [--gateway-cpus 1] [--broker-cpus 0] [--client-cpus 0]   (the default on 2 cores)

Starts a private embedded Kafka-compatible broker (or uses --bootstrap) and one
`evguard ocpp serve` process (standalone, unknown chargers allowed, so no password
hashing is measured). Lightweight chargers (raw WebSocket clients speaking OCPP 1.6J) run
in --client-processes processes: each connects during the ramp, sends BootNotification,
then MeterValues every --interval seconds (each charger at its own phase) for --duration
seconds. The latency of a MeterValues is from just before its send to its CALLRESULT
received, and the gateway answers only after Kafka acknowledged the event, so it
includes the Kafka round trip. Afterwards every meter event is read back from the topic:
lost = acknowledged frames whose event is not there. Prints a markdown table, and the
gateway's CPU time per acknowledged MeterValues (from /proc: less sensitive to what else
runs on the machine than the latencies).

The --*-cpus options pin the gateway, the broker (every thread of its process tree) and
the client processes to CPU sets (`sched_setaffinity`, as `taskset -c` does). By default
the gateway has the last core to itself (as it would in production, where the chargers
are elsewhere) and the broker and the clients share the others; `all` for each lets them
all share every core (how this benchmark ran before 04 Dec).

Target (issue 13): 5,000 chargers every 10 s, p99 <= 50 ms, nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from procstat import cpu_seconds_or_nan as cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
SLOW_S = 0.05  # acks slower than the target are also counted by when they came
sys.path.insert(0, str(ROOT))


def histogram_quantile(metrics_text: str, name: str, q: float) -> float:
    """The upper bound of the bucket holding quantile `q` of a Prometheus histogram."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


def cpu_pressure() -> str:
    """The kernel's share of time some task waited for a CPU, last 60 s (Linux PSI)."""
    try:
        return Path("/proc/pressure/cpu").read_text().split()[2].split("=")[1] + " %"
    except (OSError, IndexError):
        return "n/a"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def charger(url: str, cp_id: str, start_at: float, interval: float, stop_at: float,
                  latencies: list[float], acked: list[str], errors: dict[str, int],
                  steady_from: float, steady: list[float],
                  slow: list[tuple[float, float]]) -> None:
    import orjson
    from websockets.asyncio.client import connect

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    try:
        async with connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"], open_timeout=60,
                           ping_interval=None, compression=None) as ws:
            await ws.send(orjson.dumps([2, "boot", "BootNotification", {
                "chargePointVendor": "Bench", "chargePointModel": "L2"}]).decode())
            await ws.recv()
            energy, n = 0.0, 0
            next_at = time.monotonic() + random.uniform(0, interval)
            while next_at < stop_at:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                n += 1
                energy += random.uniform(5, 20)
                mid = f"m{n}"
                frame = orjson.dumps([2, mid, "MeterValues", {"connectorId": 1, "meterValue": [{
                    "timestamp": "2024-05-01T10:00:00Z", "sampledValue": [
                        {"value": f"{energy:.1f}"},
                        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
                        {"value": "30", "measurand": "Current.Import", "unit": "A"}]}]}])
                sent = time.perf_counter()
                await ws.send(frame.decode())
                answer = orjson.loads(await ws.recv())
                if answer[0] == 3:
                    latencies.append(time.perf_counter() - sent)
                    if time.monotonic() >= steady_from:  # every charger connected by now
                        steady.append(latencies[-1])
                    if latencies[-1] > SLOW_S:
                        slow.append((time.monotonic(), latencies[-1]))
                    acked.append(f"{cp_id}:{mid}:0")
                else:
                    errors[str(answer[2])] = errors.get(str(answer[2]), 0) + 1
                next_at += interval
    except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1


def cpu_set(text: str) -> set[int] | None:
    """"0", "0,1", "0-1" -> CPU numbers; "" or "all" -> None (no pinning)."""
    if text == "all":
        return None
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus or None


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], ()))
    return tree


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of `pid` and of its descendants onto `cpus`."""
    if cpus is None:
        return
    for process in process_tree(pid):
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (OSError, ValueError):
                pass  # exited meanwhile


def client_process(url: str, ids: list[str], ramp: float, interval: float, duration: float,
                   t0: float, out, cpus: set[int] | None = None) -> None:
    """Runs its share of chargers; sends (latencies, acked ids, errors) back."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    latencies: list[float] = []
    steady: list[float] = []
    slow: list[tuple[float, float]] = []
    acked: list[str] = []
    errors: dict[str, int] = {}
    stop_at = t0 + ramp + duration

    async def run() -> None:
        await asyncio.gather(*(
            charger(url, cp_id, t0 + ramp * i / max(1, len(ids)), interval, stop_at,
                    latencies, acked, errors, t0 + ramp + 5.0, steady, slow)
            for i, cp_id in enumerate(ids)))

    asyncio.run(run())
    out.send((latencies, acked, errors, steady, [(t - t0, v) for t, v in slow]))
    out.close()


def wait_port(port: int, timeout: float) -> bool:
    from evguard.services.process import port_open

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return True
        time.sleep(0.1)
    return False


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=5000, help="simulated chargers (N)")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between two MeterValues of one charger (S)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of steady load after the ramp")
    parser.add_argument("--ramp", type=float, default=30.0,
                        help="seconds over which the chargers connect")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the simulated chargers are spread over")
    parser.add_argument("--port", type=int, default=0, help="gateway port (0 = a free one)")
    parser.add_argument("--bootstrap", default="",
                        help="an existing Kafka; default: a private embedded broker")
    cores = os.cpu_count() or 1
    for part, default in (("gateway", f"{cores - 1}"), ("broker", f"0-{cores - 2}"),
                          ("client", f"0-{cores - 2}")):
        parser.add_argument(f"--{part}-cpus", default=default if cores > 1 else "all",
                            metavar="CPUS", help=f"pin the {part} to these CPUs (\"1\", "
                            f"\"0-2\"; \"all\": not pinned); default {default}")
    args = parser.parse_args()

    from evguard.services.process import free_port
    from evguard.services.stack import LocalStack
    from pipelines.contracts.telemetry import parse_telemetry
    from pipelines.settings import Settings, settings_env
    from tests.support.faultkit import read_topic

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per charger
    if args.chargers + 200 > hard:
        sys.exit(f"--chargers {args.chargers} needs more open files than the limit {hard}")

    with tempfile.TemporaryDirectory(prefix="gateway-load-") as tmp:
        state = Path(tmp)
        settings = Settings(_env_file=None, state_dir=state, kafka_bootstrap=args.bootstrap,
                            kafka_port=free_port(),
                            topic_telemetry=f"bench-telemetry-{uuid.uuid4().hex[:8]}",
                            ocpp_port=args.port or free_port(), ocpp_metrics_port=free_port(),
                            ocpp_allow_unknown=True,
                            ocpp_max_messages_per_s=max(50.0, 5 / args.interval))
        gateway_cpus, broker_cpus, client_cpus = (
            cpu_set(c) for c in (args.gateway_cpus, args.broker_cpus, args.client_cpus))
        stack = LocalStack(settings)
        if settings.kafka_embedded:
            stack.up(only=("kafka",))
            broker_pid = stack.kafka_process().pid()
            if broker_pid is not None:
                pin(broker_pid, broker_cpus)
        else:
            broker_pid = None
        env = {**os.environ, **settings_env(settings),
               # settings_env writes an empty path as the working directory
               "EVGUARD_OCPP_CHARGE_POINTS": str(state / "charge_points.json"),
               "EVGUARD_OCPP_TLS_CERT": "", "EVGUARD_OCPP_TLS_KEY": ""}
        # taskset execs the gateway (same pid), whose threads all inherit the CPU set
        pinned = ["taskset", "-c", ",".join(map(str, sorted(gateway_cpus)))] \
            if gateway_cpus is not None else []
        gateway = subprocess.Popen([*pinned, str(ROOT / ".venv/bin/evguard"), "ocpp", "serve"],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(state / "gateway.log", "w"))  # noqa: SIM115
        try:
            if not wait_port(settings.ocpp_port, 60):
                sys.exit("the gateway did not start: " + (state / "gateway.log").read_text())
            url = f"ws://127.0.0.1:{settings.ocpp_port}"
            ids = [f"BENCH-{i:05d}" for i in range(args.chargers)]
            shares = [ids[k::args.client_processes] for k in range(args.client_processes)]
            t0 = time.monotonic() + 1.0
            cpu0 = cpu_seconds(gateway.pid)
            broker_tree = process_tree(broker_pid) if broker_pid is not None else []
            broker0 = sum(cpu_seconds(p) for p in broker_tree)
            context = multiprocessing.get_context("fork")
            pipes, procs = [], []
            for share in shares:
                receive, send = context.Pipe(duplex=False)
                proc = context.Process(target=client_process, args=(
                    url, share, args.ramp, args.interval, args.duration, t0, send,
                    client_cpus))
                proc.start()
                pipes.append(receive)
                procs.append(proc)
            peak_rss = 0.0
            while any(not r.poll() for r in pipes):
                peak_rss = max(peak_rss, rss_mb(gateway.pid))
                time.sleep(1.0)
            results = [r.recv() for r in pipes]
            for proc in procs:
                proc.join()
            cpu = cpu_seconds(gateway.pid) - cpu0
            broker_cpu = sum(cpu_seconds(p) for p in broker_tree) - broker0
            latencies = [v for r in results for v in r[0]]
            steady = [v for r in results for v in r[3]]
            slow = sorted(v for r in results for v in r[4])
            acked = [v for r in results for v in r[1]]
            errors: dict[str, int] = {}
            for r in results:
                for k, v in r[2].items():
                    errors[k] = errors.get(k, 0) + v
            pressure = cpu_pressure()
            # the same acknowledgements timed inside the gateway (arrival -> CALLRESULT sent):
            # the clients' own share of the 2 cores is not in it
            scraped = httpx.get(f"http://127.0.0.1:{settings.ocpp_metrics_port}/metrics",
                                timeout=10).text
            server_p50, server_p99 = (histogram_quantile(scraped, "evguard_gateway_ack_seconds",
                                                         q) for q in (0.5, 0.99))
            found = {parse_telemetry(m.value()).event_id
                     for m in read_topic(settings, settings.topic_telemetry, len(acked),
                                         timeout=60, quiet_s=2.0)}
        finally:
            gateway.terminate()
            gateway.wait(30)
            if settings.kafka_embedded:
                stack.kafka_process().stop()
        lost = len(set(acked) - found)
        wall = args.ramp + args.duration
        print(f"\n| chargers | interval | acked MeterValues | rate | p50 ack | p99 ack | max | "
              f"lost | errors | gateway CPU | gateway RSS |\n|---|---|---|---|---|---|---|---|"
              f"---|---|---|\n| {args.chargers} | {args.interval:g} s | {len(acked)} | "
              f"{len(acked) / wall:.0f}/s | {percentile(latencies, 0.5) * 1000:.1f} ms | "
              f"{percentile(latencies, 0.99) * 1000:.1f} ms | "
              f"{max(latencies, default=float('nan')) * 1000:.1f} ms | {lost} | "
              f"{sum(errors.values())} | {cpu / wall * 100:.0f}% of a core | "
              f"{peak_rss:.0f} MB |")
        print(f"\nafter the ramp (all {args.chargers} connected, from 5 s after its end): "
              f"{len(steady)} acks, p50 {percentile(steady, 0.5) * 1000:.1f} ms, "
              f"p99 {percentile(steady, 0.99) * 1000:.1f} ms")
        print(f"in the gateway (its ack histogram, bucket bounds): p50 <= {server_p50 * 1000:g} ms, "
              f"p99 <= {server_p99 * 1000:g} ms; CPU pressure (some, avg60) {pressure}")
        # the ramp's handshakes and the keep-alive pings are in it too: per MeterValues, all in
        print(f"gateway CPU {cpu:.1f} s = {cpu / max(1, len(acked)) * 1e6:.0f} µs per acked "
              f"MeterValues; broker CPU {broker_cpu:.1f} s = "
              f"{broker_cpu / max(1, len(acked)) * 1e6:.0f} µs per MeterValues; cores: gateway "
              f"{args.gateway_cpus}, broker {args.broker_cpus}, clients {args.client_cpus}")
        windows: dict[int, list[float]] = {}
        for at, latency in slow:
            windows.setdefault(int(at // 10) * 10, []).append(latency)
        print("acks over 50 ms by 10 s window since the start (count, max): " + (", ".join(
            f"{w}-{w + 10} s: {len(v)} (max {max(v) * 1000:.0f} ms)"
            for w, v in sorted(windows.items()))
            or "none"))
        if errors:
            print("errors:", errors)
        print(f"\nmean ack {statistics.fmean(latencies) * 1000:.1f} ms over {len(latencies)}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"ramp {args.ramp:g} s + steady {args.duration:g} s; "
              f"{args.client_processes} client processes")
        if lost:
            sys.exit(1)


if __name__ == "__main__":
    main()
