"""A writer killed with SIGKILL: what it had acknowledged is restored, nothing after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.keyed_state.conftest import Tally

ROOT = Path(__file__).resolve().parents[2]


def test_state_acknowledged_before_a_kill_is_restored(new_store, changelog):
    bootstrap, topic = changelog
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("crashing_writer.py")), bootstrap, topic],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "acknowledged"
        assert child.stdout.readline().strip() == "changed"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    store = new_store()
    assert store.restore([0, 1, 2]) == {0: 50, 1: 50, 2: 50}
    for p in range(3):
        state = store.partition(p)
        assert state.get(f"tally:{p}-0") == Tally(0, 0.0)  # the unflushed change is not
        assert state.applied_offset(f"tally:{p}-0") == 1000 * p
        assert state.get(f"tally:{p}-49") == Tally(49, 24.5)
        assert f"tally:{p}-unflushed" not in state
