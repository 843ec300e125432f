"""`prepare_data` reads the sessions table one chunk of dicts at a time; the probes it
makes that way must equal the probes made from every session as a dict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.data import datasets
from pipelines.data.datasets import sessions_table
from pipelines.data.memory import _malloc_trim, release_freed_memory
from pipelines.data.synth import generate_sessions
from pipelines.models.training_data import held_out_probes, impossible_power_probes


@pytest.mark.parametrize("chunk_rows", [130, 50_000])
def test_held_out_probes_from_table_equal_probes_from_records(monkeypatch, chunk_rows):
    records, _ = generate_sessions(1000, seed=4, anomaly_rate=0.05)
    monkeypatch.setattr(datasets, "CHUNK_ROWS", chunk_rows)
    expected = impossible_power_probes(records[700:], 60, seed=3, history=records[:700])
    got = held_out_probes(sessions_table(records), 700, 60, seed=3)
    assert got.shape == expected.shape == (60, expected.shape[1])
    np.testing.assert_array_equal(got, expected)


def test_no_probes_when_none_are_asked_for_or_nothing_is_held_out():
    table = sessions_table(generate_sessions(100, seed=4)[0])
    assert held_out_probes(table, 70, 0, seed=3) is None
    assert held_out_probes(table, 100, 10, seed=3) is None


def _resident_mb() -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(_malloc_trim() is None or not Path("/proc/self/status").exists(),
                    reason="needs glibc's malloc_trim and /proc")
def test_freed_memory_between_live_objects_goes_back_to_the_os():
    kept, dropped = [], []
    for _ in range(20_000):  # 160 MB freed in holes between live blocks: malloc keeps them
        dropped.append(bytearray(8192))
        kept.append(bytes(600))
    del dropped
    before = _resident_mb()
    release_freed_memory()
    assert before - _resident_mb() > 40  # of the 160 MB: whole pages inside the holes
    assert all(len(block) == 600 for block in kept)
