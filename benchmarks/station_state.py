"""Memory and cost of the worker's station state at fleet scale (issue 12: 100,000 stations
in 300 MB).

Builds the state exactly as the worker does (`serving.stations.StationTracker` over one
`keyed_state.PartitionState`): synthetic sessions of `--stations` stations, each with
`--sessions-each` sessions spread over weeks and `--users-per-station` drivers, at
`--sites` sites. Reports the Python memory the state holds (tracemalloc, after the
build), by kind of key, the changelog bytes a full restore would read, and the tracker's
cost per session.

    .venv/bin/python benchmarks/station_state.py --stations 100000
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta

from tqdm import tqdm

from keyed_state import PartitionState
from pipelines.contracts.dates import format_rfc1123
from pipelines.contracts.sessions import EXAMPLE_SESSION, Source
from serving.stations import STATION_STATE_CODEC, StationTracker


def sessions(stations: int, each: int, users: int, sites: int):
    """`each` sessions per station, one a day in turn, in the order they end."""
    start = datetime(2024, 1, 1, 7, tzinfo=UTC)
    for day in range(each):
        for s in range(stations):
            connect = start + timedelta(days=day, minutes=(s * 7) % 600)
            yield {**EXAMPLE_SESSION, "sessionID": f"s{s}-{day}", "stationID": f"ST-{s:06d}",
                   "siteID": f"{s % sites:04d}", "userID": f"u{s}-{day % users}",
                   "connectionTime": format_rfc1123(connect),
                   "doneChargingTime": format_rfc1123(connect + timedelta(hours=2)),
                   "disconnectTime": format_rfc1123(connect + timedelta(hours=4)),
                   "kWhDelivered": 6.0 + (s + day) % 9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=100_000)
    parser.add_argument("--sessions-each", type=int, default=12,
                        help="sessions per station (12: past every detector's warm-up)")
    parser.add_argument("--users-per-station", type=int, default=2)
    parser.add_argument("--sites", type=int, default=50)
    args = parser.parse_args()

    state = PartitionState(0)
    tracker = StationTracker(lambda _p: state, lambda: [0], tick_s=float("inf"))
    total = args.stations * args.sessions_each
    gc.collect()
    tracemalloc.start()
    spent, offset, chunk = 0.0, 0, []
    with tqdm(total=total, unit="session", desc="building the state") as bar:
        for record in sessions(args.stations, args.sessions_each, args.users_per_station,
                               args.sites):
            chunk.append(record)
            if len(chunk) == 1000:
                t0 = time.perf_counter()
                tracker.process(chunk, [Source("s", 0, offset + i, 0) for i in range(1000)])
                spent += time.perf_counter() - t0
                offset += 1000
                bar.update(1000)
                chunk = []
        if chunk:
            tracker.process(chunk, [Source("s", 0, offset + i, 0) for i in range(len(chunk))])
            bar.update(len(chunk))
    state.take_dirty()  # what a flush does: the dirty set is emptied
    chunk = None
    gc.collect()
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    kinds = Counter(key.split(":", 1)[0] for key in state)
    changelog = sum(len(key) + len(STATION_STATE_CODEC.encode(key, value)) + 8
                    for key, value in state.items())
    print(f"stations {args.stations:,}, sessions {total:,}, keys {len(state):,} "
          f"({', '.join(f'{k} {n:,}' for k, n in sorted(kinds.items()))})")
    print(f"state in memory: {held / 1e6:.0f} MB ({held / args.stations:,.0f} bytes per station)")
    print(f"changelog to restore: {changelog / 1e6:.0f} MB "
          f"({changelog / args.stations:,.0f} bytes per station)")
    print(f"tracker: {spent / max(offset, 1) * 1e6:.1f} us per session")


if __name__ == "__main__":
    main()
