"""The progress callback that long-running steps accept (ingest, training, evaluation).

It is called as `progress(stage, done, total)`; the CLI draws it as a progress bar and
a flow can log it. A step never depends on who listens.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
