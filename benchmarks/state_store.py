"""Keyed state (issue 12): memory of 100,000 keys, changelog flush and restore, and what
rebuilding the same state from history would cost instead.

    .venv/bin/python benchmarks/state_store.py [--keys 100000] [--value-bytes 800]
        [--partitions 6] [--versions 1,3] [--history-per-key 365] [--replay-sessions 20000]

Starts its own embedded broker (private state dir, free port) through the local stack.
Values are stand-ins of `--value-bytes` serialised bytes with the shape of a station's
state (a few statistics and an hour-of-week array). The rebuild estimate replays
synthetic sessions, read back from parquet, through the real profile update
(`pipelines.stations.context.observe`), and scales the cost per session to
`--history-per-key` sessions per key. Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
import tracemalloc
import uuid
from array import array
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

STATS = 16  # float64 statistics before the hour-of-week floats


class StandInState:
    """A station's state as the changelog sees it: statistics and an hour-of-week array."""

    __slots__ = ("hours", "stats")

    def __init__(self, stats: array, hours: array) -> None:
        self.stats = stats
        self.hours = hours

    @classmethod
    def sized(cls, value_bytes: int, seed: int) -> StandInState:
        bins = max(1, (value_bytes - STATS * 8) // 4)
        return cls(array("d", [seed * 0.5 + i for i in range(STATS)]),
                   array("f", [(seed + i) % 7 for i in range(bins)]))

    def to_bytes(self) -> bytes:
        return self.stats.tobytes() + self.hours.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> StandInState:
        split = STATS * 8
        return cls(array("d", data[:split]), array("f", data[split:]))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bar() -> Progress:
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn())


def flush_all(store, progress: Progress, label: str) -> tuple[int, float]:
    """Flush every dirty key and wait for all acks: (writes, seconds)."""
    acked = [0]
    errors: list[str] = []

    def delivered(error: str | None) -> None:
        acked[0] += 1
        if error:
            errors.append(error)

    t0 = time.perf_counter()
    started = store.flush(delivered)
    task = progress.add_task(label, total=started)
    while acked[0] < started:
        store.poll(0.1)
        progress.update(task, completed=acked[0])
    progress.update(task, completed=acked[0])
    if errors:
        raise RuntimeError(f"{len(errors)} changelog writes failed: {errors[0]}")
    return started, time.perf_counter() - t0


def measure_store(args, bootstrap: str, versions: int, progress: Progress) -> dict:
    from keyed_state import KeyedStateStore, PrefixCodec

    codec = PrefixCodec({"station": StandInState})
    topic = f"bench-state-{uuid.uuid4().hex[:8]}"
    writer = KeyedStateStore(bootstrap, topic, codec, "bench-state")
    writer.ensure_changelog(args.partitions)
    writer.restore(range(args.partitions))
    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start()
    task = progress.add_task(f"build {args.keys:,} keys", total=args.keys)
    for i in range(args.keys):
        writer.partition(i % args.partitions).put(
            f"station:{i:08d}", StandInState.sized(args.value_bytes, i), i)
        if i % 10_000 == 0:
            progress.update(task, completed=i)
    progress.update(task, completed=args.keys)
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    result = {"versions": versions, "traced_mb": traced / 1e6,
              "rss_mb": (rss_bytes() - rss0) / 1e6,
              "encoded_bytes": len(StandInState.sized(args.value_bytes, 0).to_bytes())}
    flushes = []
    for version in range(versions):
        if version:  # every key changed again: one more record per key in the changelog
            for p in range(args.partitions):
                state = writer.partition(p)
                for key in list(state):
                    state.put(key, state.get(key), state.applied_offset(key) + 1)
        flushes.append(flush_all(writer, progress, f"flush {version + 1}/{versions}"))
    writes = sum(n for n, _s in flushes)
    result["flush_per_s"] = writes / sum(s for _n, s in flushes)
    writer.close(30)
    del writer
    gc.collect()

    reader = KeyedStateStore(bootstrap, topic, codec, "bench-state")
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    restored = reader.restore(range(args.partitions))
    result["restore_s"] = time.perf_counter() - t0
    result["restore_rss_mb"] = (rss_bytes() - rss0) / 1e6
    assert sum(restored.values()) == args.keys, restored
    one = KeyedStateStore(bootstrap, topic, codec, "bench-state")
    t0 = time.perf_counter()
    one.restore([0])
    result["restore_one_s"] = time.perf_counter() - t0
    reader.close(1)
    one.close(1)
    return result


def overhead_per_key(keys: int) -> float:
    """Bytes the store itself holds per key (key, offset, dict slots), the value excluded."""
    from keyed_state import PartitionState

    shared = StandInState.sized(8, 0)
    tracemalloc.start()
    state = PartitionState(0)
    for i in range(keys):
        state.put(f"profile:{i:08d}", shared, 10_000_000 + i)
    state.take_dirty()
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return held / keys


def measure_rebuild(args, progress: Progress) -> dict:
    """Cost per session of rebuilding profiles from history: read it, replay it."""
    import pandas as pd

    from pipelines.data.synth import generate_sessions
    from pipelines.stations.context import observe

    task = progress.add_task("synthetic history", total=1)
    records = generate_sessions(args.replay_sessions, seed=1)[0]
    progress.update(task, completed=1)
    columns = ["connectionTime", "disconnectTime", "doneChargingTime", "kWhDelivered",
               "stationID", "siteID", "userID", "sessionID"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.parquet"
        pd.DataFrame.from_records(records, columns=columns).to_parquet(path)
        t0 = time.perf_counter()
        history = pd.read_parquet(path).to_dict("records")
        read_s = time.perf_counter() - t0
    state: dict = {}
    task = progress.add_task("replay through observe()", total=len(history))
    t0 = time.perf_counter()
    for i, record in enumerate(history):
        observe(state, record)
        if i % 5_000 == 0:
            progress.update(task, completed=i)
    replay_s = time.perf_counter() - t0
    progress.update(task, completed=len(history))
    sizes = [len(value.to_bytes()) for value in state.values()]
    per_session = (read_s + replay_s) / len(history)
    return {"read_us": read_s / len(history) * 1e6, "replay_us": replay_s / len(history) * 1e6,
            "per_session_us": per_session * 1e6, "profile_bytes": sum(sizes) / len(sizes),
            "rebuild_s": per_session * args.keys * args.history_per_key}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=800,
                        help="serialised size of one value (default 800)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--versions", default="1,3",
                        help="records per key in the changelog before restore, comma-separated "
                             "runs (the embedded broker does not compact: each flush stays)")
    parser.add_argument("--history-per-key", type=int, default=365,
                        help="sessions per key the rebuild would replay (default: 1 a day "
                             "for a year)")
    parser.add_argument("--replay-sessions", type=int, default=20_000,
                        help="synthetic sessions replayed to measure the rebuild cost")
    args = parser.parse_args()

    from evguard.services.process import free_port
    from evguard.services.stack import LocalStack
    from pipelines.settings import Settings

    runs = []
    with tempfile.TemporaryDirectory() as tmp, bar() as progress:
        settings = Settings(_env_file=None, state_dir=Path(tmp) / "state",
                            kafka_port=free_port())
        stack = LocalStack(settings)
        stack.up(only=("kafka",))
        try:
            for versions in (int(v) for v in args.versions.split(",")):
                runs.append(measure_store(args, settings.kafka_servers, versions, progress))
        finally:
            stack.kafka_process().stop()
        rebuild = measure_rebuild(args, progress)
    overhead = overhead_per_key(args.keys)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.keys:,} keys, "
          f"{runs[0]['encoded_bytes']} bytes each, {args.partitions} partitions\n")
    print("| changelog records per key | in-process memory (tracemalloc / RSS delta) | "
          "flush (keys/s, to all acks) | restore all partitions | restore 1 partition | "
          "RSS after restore |\n|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['versions']} | {r['traced_mb']:.0f} MB / {r['rss_mb']:.0f} MB | "
              f"{r['flush_per_s']:,.0f} | {r['restore_s']:.1f} s | {r['restore_one_s']:.1f} s | "
              f"{r['restore_rss_mb']:.0f} MB |")
    print(f"\nthe store's own memory per key (value excluded): {overhead:.0f} bytes")
    print(f"\nrebuild from history: read {rebuild['read_us']:.1f} us + replay "
          f"{rebuild['replay_us']:.1f} us = {rebuild['per_session_us']:.1f} us per session "
          f"(real `observe`, profiles of {rebuild['profile_bytes']:.0f} bytes); "
          f"{args.keys:,} keys x {args.history_per_key} sessions = "
          f"{rebuild['rebuild_s']:,.0f} s ({rebuild['rebuild_s'] / 60:.0f} min) on one core")


if __name__ == "__main__":
    main()
