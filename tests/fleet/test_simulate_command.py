"""`evguard simulate` end to end: synthetic sessions to a CSMS, labels and summary written."""

from __future__ import annotations

import asyncio
import json
import threading

from typer.testing import CliRunner

from evguard.cli import app
from evguard.services.process import free_port
from pipelines.contracts.live_alert import KINDS
from tests.fleet.csms import TestCsms


class AnyCharger(dict):
    """Every charge point's password is "pw"."""

    def get(self, key, default=None):
        return "pw"


def serve_in_thread(csms: TestCsms):
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def main():
        async with csms:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    return lambda: (loop.call_soon_threadsafe(stop.set), thread.join(10))


def test_help_names_every_option():
    result = CliRunner().invoke(app, ["simulate", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--url", "--source", "--exports", "--sessions", "--stations", "--speedup",
                   "--meter-interval", "--ocpp-201-share", "--fault-rate", "--faults",
                   "--seed", "--labels", "--password"):
        assert option in result.output


def test_a_synthetic_fleet_runs_and_writes_labels_and_a_summary(tmp_path):
    csms = TestCsms(free_port(), AnyCharger())
    stop = serve_in_thread(csms)
    labels = tmp_path / "run" / "labels.jsonl"
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    try:
        result = CliRunner().invoke(app, [
            "simulate", "--url", csms.url, "--password-file", str(secret), "--sessions", "6",
            "--stations", "6", "--schedule", "packed", "--speedup", "20000",
            "--meter-interval", "300", "--fault-rate", "0.5", "--faults", "faulted,silent",
            "--unplug-delay-h", "1", "--labels", str(labels), "--seed", "2"],
            terminal_width=200)
    finally:
        stop()
    assert result.exit_code == 0, result.output
    summary = json.loads(labels.with_suffix(".summary.json").read_text())
    assert summary["sessions"] == 6 and summary["transactions_ended"] == 6
    assert summary["stations_by_version"] == {"1.6": 3, "2.0.1": 3}
    written = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(written) == 3 and {w["kind"] for w in written} <= {"faulted", "silent"}
    assert all(w["kind"] in KINDS and w["sent_ts"] > 0 for w in written)
    connected = {link.cp_id for link in csms.links}
    assert len(connected) == 6 and {w["chargePointId"] for w in written} <= connected


def test_a_bad_source_is_a_clear_error():
    result = CliRunner().invoke(app, ["simulate", "--source", "tape"])
    assert result.exit_code == 2 and "unknown --source" in result.output
