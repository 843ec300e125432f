"""Validation must not keep the rows it checked alive (the Great Expectations context is
cached for the process, and at a million sessions the rows are gigabytes)."""

from __future__ import annotations

import gc
import weakref

import pandas as pd

from pipelines.data.features import add_features, sessions_to_frame
from pipelines.data.synth import generate_sessions
from pipelines.data.validation import validate_batch


def test_validated_rows_are_freed_once_the_caller_lets_them_go():
    frame = add_features(sessions_to_frame(generate_sessions(300, seed=2)[0]))
    report = validate_batch(frame, max_failure_rate=1.0)
    assert report.rows == 300
    columns = list(frame.columns)
    watched = [weakref.ref(block.values) for block in frame._mgr.blocks
               if block.values.dtype == object]
    del frame
    gc.collect()
    assert watched and all(ref() is None for ref in watched)
    alive = [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and len(o) == 300
             and list(o.columns) == columns]
    assert alive == []
