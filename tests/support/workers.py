"""The scoring worker in a test: on a thread of the test process, or as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from pipelines.settings import Settings, settings_env
from serving.run import ServeOutcome, run_worker

ROOT = Path(__file__).resolve().parents[2]


class InProcessWorker:
    """`run_worker` on a thread of the test process (no signal handling)."""

    def __init__(self, settings: Settings, idle_exit_s: float = 0.0) -> None:
        self.stop = threading.Event()
        self.outcome: ServeOutcome | None = None

        def target() -> None:
            self.outcome = run_worker(settings, self.stop, idle_exit_s)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def finish(self, timeout: float = 30.0) -> ServeOutcome | None:
        """Stop and wait for the worker; its outcome (None if it did not stop in time)."""
        self.stop.set()
        self.thread.join(timeout)
        return self.outcome


def start_worker_process(settings: Settings, log: Path, *extra: str) -> subprocess.Popen:
    """`python -m serving` as a child process with these settings (in its own session)."""
    env = {**os.environ, **settings_env(settings), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "serving", "--quiet-batches", *extra],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
