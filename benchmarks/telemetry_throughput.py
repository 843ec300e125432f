"""Telemetry processor benchmark: meter samples per second per process, and state per connector
(issue 13: >= 20,000 samples/s per process; <= 1 KB per connector).

    .venv/bin/python benchmarks/telemetry_throughput.py [--connectors 20000] [--samples 400000]

1. **pure**: the per-event work alone, in this process: `parse_telemetry` of the encoded
   value, the keyed state's applied-offset check and `detectors.on_event` through a
   `keyed_state.PartitionState` view, plus the changelog encoding of each changed key
   once per batch of `--batch` (as the processor flushes). Also the changelog bytes per
   connector (mean and max) and the Python memory the state holds per connector.
2. **end to end** (skip with --pure-only): a private embedded Kafka broker and the
   RabbitMQ of EVGUARD_RABBITMQ_URL (uuid-named topics and exchange, deleted afterwards).
   The telemetry topic is pre-filled with the same samples, then one `TelemetryProcessor`
   (in this process, on a thread) consumes them with confirms, changelog writes and
   commits; the rate is samples applied over the time from its first applied sample until
   every batch is committed. `--status-interval 0` publishes a connector snapshot for every
   sample (the live case with samples every 10 s and the default 5 s interval) instead of
   the throttled one a backlog gets.

The connectors each run one Level-2 transaction at 32 A offered, a sample every 10 s of
charger time, interleaved as a gateway receives them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pika
from confluent_kafka import Producer

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from keyed_state import PartitionState
from pipelines.contracts.telemetry import TelemetryEvent, encode_telemetry, parse_telemetry
from pipelines.settings import Settings
from pipelines.telemetry.detectors import CONNECTOR_STATE_CODEC, connector_key, on_event
from telemetry.kafka import ensure_topics
from telemetry.processor import DEFAULT_OPTIONS, TelemetryProcessor

T0 = 1_700_000_000.0


def events(connectors: int, samples: int) -> list[TelemetryEvent]:
    """A transaction start per connector, then meter samples round-robin, 10 s apart each."""
    out = []
    step = 10.0 / connectors
    for c in range(connectors):
        out.append(TelemetryEvent(f"CP-{c:06d}:start:0", "transaction_started", f"CP-{c:06d}", 1,
                                   f"T{c}", T0 + c * step, T0 + c * step + 0.1, "1.6", "bench",
                                   measurands={"energy_wh": 1000.0}))
    energy = [1000.0] * connectors
    for k in range(samples):
        c = k % connectors
        ts = T0 + 10.0 * (k // connectors + 1) + c * step
        energy[c] += 30 * 230 * 10 / 3600
        out.append(TelemetryEvent(
            f"CP-{c:06d}:{k}:0", "meter", f"CP-{c:06d}", 1, f"T{c}", ts, ts + 0.1, "1.6", "bench",
            measurands={"energy_wh": round(energy[c], 1), "power_w": 6900.0, "current_a": 30.0,
                        "current_offered_a": 32.0, "voltage_v": 230.0,
                        "temperature_c": 31.0}))
    return out


def pure(values: list[bytes], batch: int) -> dict:
    """Parse + detect per event, changelog encoding per batch, in this process."""
    state = PartitionState(0)
    encode = CONNECTOR_STATE_CODEC.encode
    t = time.perf_counter()
    for start in range(0, len(values), batch):
        for offset in range(start, min(start + batch, len(values))):
            event = parse_telemetry(values[offset])
            key = connector_key(event.charge_point_id, event.connector_id)
            if state.already_applied(key, offset):
                continue
            on_event(state.view(offset), event)
        for key, value, _offset in state.take_dirty():
            encode(key, value)
    seconds = time.perf_counter() - t
    sizes = [len(encode(k, v)) for k, v in state.items()]
    return {"events": len(values), "seconds": seconds, "events_per_s": len(values) / seconds,
            "connectors": len(sizes), "state_bytes_mean": sum(sizes) / len(sizes),
            "state_bytes_max": max(sizes)}


def state_memory(values: list[bytes]) -> float:
    """Python memory of the state per connector (tracemalloc), after applying `values`."""
    parsed = [parse_telemetry(v) for v in values]
    tracemalloc.start()
    state = PartitionState(0)
    for offset, event in enumerate(parsed):
        on_event(state.view(offset), event)
    state.take_dirty()
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / len(state)


def end_to_end(values: list[tuple[bytes, bytes]], samples: int, status_interval: float,
               batch: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="evguard-telemetry-bench-"))
    tag = uuid.uuid4().hex[:8]
    base = Settings()
    settings = Settings(
        _env_file=None, state_dir=tmp / "state", data_dir=tmp / "data", kafka_port=free_port(),
        rabbitmq_url=base.rabbitmq_url, rabbitmq_exchange=f"ev.scores.bench-{tag}",
        topic_telemetry=f"telemetry-{tag}", topic_telemetry_dlq=f"telemetry-{tag}.dlq",
        topic_telemetry_state=f"telemetry-{tag}.state", topic_sessions=f"sessions-{tag}",
        telemetry_group=f"bench-{tag}", telemetry_metrics_port=free_port(),
        telemetry_status_interval_s=status_interval)
    stack = LocalStack(settings)
    stack.up(only=("kafka",))
    try:
        partitions = ensure_topics(settings)
        producer = Producer({"bootstrap.servers": settings.kafka_servers, "linger.ms": 20,
                             "acks": "all", "compression.type": "lz4", "log_level": 2})
        t = time.monotonic()
        for key, value in values:
            while True:
                try:
                    producer.produce(settings.topic_telemetry, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(120) == 0
        prefill = len(values) / (time.monotonic() - t)
        print(f"pre-filled {len(values)} events at {prefill:.0f}/s", flush=True)
        processor = TelemetryProcessor(settings, replace(DEFAULT_OPTIONS, batch_size=batch))
        stop = threading.Event()
        thread = threading.Thread(target=processor.run, args=(stop, 0.0, partitions),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + 1800
        while processor.report.applied == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        t, cpu = time.monotonic(), time.process_time()
        while time.monotonic() < deadline and (processor.report.applied < len(values)
                                               or processor._inflight):
            time.sleep(0.01)
        seconds, cpu = time.monotonic() - t, time.process_time() - cpu
        applied = processor.report.applied
        stop.set()
        thread.join(60)
        r = processor.report
        return {"events": applied, "meter_samples": samples, "seconds": seconds,
                "events_per_s": applied / seconds, "meter_samples_per_s": samples / seconds,
                "cpu_seconds_this_process": cpu,
                "status_interval_s": status_interval, "snapshots": r.snapshots,
                "batches": r.batches, "prefill_per_s": prefill, "partitions": partitions}
    finally:
        stack.kafka_process().stop()
        with pika.BlockingConnection(pika.URLParameters(settings.rabbitmq_url)) as conn:
            conn.channel().exchange_delete(settings.rabbitmq_exchange)
        shutil.rmtree(tmp, ignore_errors=True)  # the broker's log: ~50 MB a run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connectors", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=400_000, help="meter samples in all")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--status-interval", type=float, default=None,
                        help="seconds between snapshots of a charging connector (default: the "
                             "setting); 0 = one per sample")
    parser.add_argument("--pure-only", action="store_true", help="skip the Kafka/RabbitMQ run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    stream = events(args.connectors, args.samples)
    encoded = [(e.key, encode_telemetry(e)) for e in stream]
    figures = {"connectors": args.connectors, "meter_samples": args.samples,
               "load_before": os.getloadavg()}
    figures["pure"] = pure([v for _k, v in encoded], args.batch)
    figures["pure"]["python_bytes_per_connector"] = state_memory(
        [v for _k, v in encoded[:min(len(encoded), 200_000)]])
    print(json.dumps({"pure": figures["pure"]}, indent=2), flush=True)
    if not args.pure_only:
        interval = (Settings().telemetry_status_interval_s if args.status_interval is None
                    else args.status_interval)
        figures["end_to_end"] = end_to_end(encoded, args.samples, interval, args.batch)
        print(json.dumps({"end_to_end": figures["end_to_end"]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
