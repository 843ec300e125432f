"""Cost of station health: on_tick per station, on_session per session, state bytes.

    .venv/bin/python benchmarks/station_health.py [--stations 100000]

Builds `--stations` stations with 12 weeks of weekday sessions each (the state a worker
holds), then times one `on_tick` over all of them and `on_session` per session.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from pipelines.contracts.dates import format_rfc1123
from pipelines.stations.health import StationHealth, on_session, on_tick

MONDAY = 1546819200.0


def _session(station: str, site: str, t: float, user: str) -> dict:
    return {"stationID": station, "siteID": site, "userID": user,
            "connectionTime": format_rfc1123(t), "disconnectTime": format_rfc1123(t + 14400),
            "doneChargingTime": format_rfc1123(t + 7200), "kWhDelivered": 10.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stations", type=int, default=100_000)
    parser.add_argument("--sessions-each", type=int, default=12)
    n = parser.parse_args().stations
    each = parser.parse_args().sessions_each
    sessions = [_session(f"st{i}", f"site{i % 100}", t + i % 3600, f"u{i}")
                for k in range(each)
                for t in [MONDAY + (k // 5) * 7 * 86400 + (k % 5) * 86400 + 16 * 3600]
                for i in range(n)]
    state: dict[str, object] = {}
    began = time.process_time()  # timed apart from tracemalloc, which slows allocation
    for record in sessions:
        on_session(state, record)
    per_session = (time.process_time() - began) / len(sessions)
    state = {}
    tracemalloc.start()
    for record in sessions:
        on_session(state, record)
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    ticks = []
    for hour in range(1, 6):
        began = time.perf_counter()
        on_tick(state, MONDAY + 17 * 86400 + hour * 3600)
        ticks.append(time.perf_counter() - began)
    sizes = [len(v.to_bytes()) for v in state.values() if isinstance(v, StationHealth)]
    print(f"{n:,} stations, {each} sessions each")
    print(f"on_session: {per_session * 1e6:.0f} us per session")
    print(f"on_tick: {min(ticks) / n * 1e6:.2f} us per station ({min(ticks) * 1e3:.0f} ms a tick)")
    print(f"StationHealth.to_bytes(): {sum(sizes) / len(sizes):.0f} bytes per station")
    print(f"in memory (station + site + driver state): {memory / n:.0f} bytes per station, "
          f"{memory / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
