"""The compiled station modules: used only while they match their sources, and they give
exactly what the Python source gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipelines.stations
from pipelines import native

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pipelines.stations"
PACKAGE_DIR = Path(pipelines.stations.__file__).parent

# Runs the station context and health over a synthetic stream with three planted station
# faults, as the worker does (context, then health, then the silence timer), and prints
# whether the modules ran compiled and what they produced.
STREAM_RUN = r"""
import hashlib, json, sys
from pipelines import native
native.enabled = sys.argv[1] == "compiled"
from pipelines.contracts.dates import date_to_epoch
from pipelines.data.synth import generate_sessions
from pipelines.stations import context, health, profiles

records, _ = generate_sessions(4000, seed=5, anomaly_rate=0.03)
stations = sorted({r["stationID"] for r in records})
silent, failing, degraded = stations[:3]
half = date_to_epoch(records[len(records) // 2]["connectionTime"])
stream = []
for r in records:
    late = date_to_epoch(r["connectionTime"]) > half
    if late and r["stationID"] == silent:
        continue
    if late and r["stationID"] == failing:
        r = {**r, "kWhDelivered": 0.0}
    if late and r["stationID"] == degraded:
        r = {**r, "kWhDelivered": r["kWhDelivered"] * 0.3}
    stream.append(r)
state, rows, alerts = {}, [], []
for r in stream:
    rows.append(context.context_then_observe(state, r))
    alerts += health.on_session(state, r)[1]
    alerts += health.on_tick(state, date_to_epoch(r["disconnectTime"]))[1]
replayed = context.replay_context_array(context.session_facts(stream))
digest = hashlib.sha256(repr((rows, replayed.tolist())).encode()).hexdigest()
print(json.dumps({
    "compiled": [native.is_compiled(m) for m in (context, health, profiles)],
    "contexts": digest,
    "alerts": [[a.kind, a.station_id, a.status, a.at, a.evidence] for a in alerts],
    "faults": [silent, failing, degraded],
}))
"""


def run_stream(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STREAM_RUN, mode], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=240)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compiled_stations_give_exactly_what_the_python_source_gives():
    if native.fresh_build(PACKAGE, PACKAGE_DIR) is None:
        pytest.fail("no up-to-date compiled build of pipelines.stations: run `make install` "
                    "(scripts/build_native.py)")
    compiled, python = run_stream("compiled"), run_stream("python")
    assert compiled["compiled"] == [True, True, True]
    assert python["compiled"] == [False, False, False]
    assert compiled["contexts"] == python["contexts"]
    assert compiled["alerts"] == python["alerts"]
    # the stream exercises every detector: each planted fault opens its kind of alert
    opened = {(kind, station) for kind, station, status, *_ in python["alerts"]
              if status == "open"}
    silent, failing, degraded = python["faults"]
    assert {("silent", silent), ("failing", failing), ("degraded", degraded)} <= opened


def copy_sources(to: Path) -> Path:
    for module in native.COMPILED[PACKAGE]:
        shutil.copy2(PACKAGE_DIR / f"{module}.py", to / f"{module}.py")
    return to


def test_a_build_is_used_only_while_its_digests_match_the_sources(tmp_path):
    package_dir = copy_sources(tmp_path)
    assert native.search_path(PACKAGE, package_dir) == []  # never built

    build = native.build_dir(package_dir)
    build.mkdir()
    digests = native.source_digests(package_dir, native.COMPILED[PACKAGE])
    (build / native.DIGESTS_FILE).write_text(json.dumps(digests))
    assert native.search_path(PACKAGE, package_dir) == [str(build)]

    edited = package_dir / "context.py"
    edited.write_text(edited.read_text() + "\n# an edit after the build\n")
    assert native.search_path(PACKAGE, package_dir) == []

    (build / native.DIGESTS_FILE).write_text("not json")
    assert native.fresh_build(PACKAGE, package_dir) is None
