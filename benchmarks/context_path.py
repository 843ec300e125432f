"""CPU per session of the worker's Context step alone, in memory (no broker, no model).

    .venv/bin/python benchmarks/context_path.py [--sessions 20000] [--rounds 3] [--batch-size 1000]

Replays synthetic sessions (`pipelines.data.synth`, the data of
`benchmarks/serving_throughput.py`) through `serving.stations.StationTracker` in batches over
three partitions, as the worker does, and times with the thread's CPU clock, per batch:
- `process`: contexts, profile updates and health detectors (`StationTracker.process`);
- `encode`: the changelog bytes of the keys the batch changed (`STATION_STATE_CODEC`);
- `context features`: the context part of the features (`session_facts`, `context_array`,
  `context_features`), the rest of `feature_matrix` being the f2 columns.

The first round fills the state; the median batch of the later rounds is reported. Run it
on two trees (e.g. a `git worktree` of the older commit) back to back to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keyed_state import PartitionState
from pipelines.contracts.sessions import Source, decode_session, encode_session
from pipelines.data.synth import generate_sessions
from pipelines.stations.context import context_array, context_features, session_facts
from serving.stations import STATION_STATE_CODEC, StationTracker

PARTITIONS = 3


def batches(sessions: int, rounds: int, size: int) -> list[tuple[list[dict], list[Source]]]:
    """The sessions as the worker receives them: decoded, keyed by station, `rounds` times."""
    records, _ = generate_sessions(sessions, seed=1, anomaly_rate=0.02)
    values = [encode_session(r) for r in records] * rounds
    partitions = [zlib.crc32(str(r["stationID"]).encode()) % PARTITIONS for r in records] * rounds
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    out = []
    for first in range(0, len(values), size):
        chunk, sources = [], []
        for value, p in zip(values[first:first + size], partitions[first:first + size]):
            chunk.append(decode_session(value))
            sources.append(Source("sessions", p, offsets[p], 0))
            offsets[p] += 1
        out.append((chunk, sources))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20_000, help="distinct sessions")
    parser.add_argument("--rounds", type=int, default=3, help="times each session is replayed")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first one fills the state)")

    states = {p: PartitionState(p) for p in range(PARTITIONS)}
    tracker = StationTracker(states.__getitem__, lambda: list(states), tick_s=float("inf"))
    times: dict[str, list[float]] = {"process": [], "encode": [], "context features": []}
    writes = 0
    work = batches(args.sessions, args.rounds, args.batch_size)
    for records, sources in work:
        t0 = time.thread_time()
        contexts, _alerts = tracker.process(records, sources)
        t1 = time.thread_time()
        for state in states.values():
            for key, value, _offset in state.take_dirty():
                STATION_STATE_CODEC.encode(key, value)
                writes += 1
        t2 = time.thread_time()
        context_features(session_facts(records), context_array(contexts))
        t3 = time.thread_time()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[name].append(seconds / len(records))
    steady = len(work) // args.rounds
    figures = {name: 1e6 * statistics.median(values[steady:]) for name, values in times.items()}
    print(", ".join(f"{name} {us:.1f}" for name, us in figures.items())
          + f" us/session; total {sum(figures.values()):.1f} us; "
          f"{writes / (len(work) * args.batch_size):.2f} changelog records/session")


if __name__ == "__main__":
    main()
