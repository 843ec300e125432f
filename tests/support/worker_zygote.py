"""A warm parent of scoring workers: it imports what the worker needs once, then forks a
fresh worker process for every request on stdin, which runs `python -m serving`
(`serving.__main__.main`).

The fault suite and the soak kill workers with SIGKILL and restart them many times; a
new interpreter pays 10-20 s of imports on a loaded 2-core machine, a fork pays none
(as a pre-forking server does). A request is one JSON line: {"env": {...}, "log": path,
"args": [...]}. The child takes that environment (the worker reads its settings from it),
writes stdout and stderr to the log, and gets its own session (process group); nothing
else of the parent but imported modules. The parent answers `pid <pid>` per fork and
`exit <pid> <code>` when a worker ends (code < 0: killed by that signal); it exits at EOF.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback

import mlflow.pyfunc
import mlflow.store.model_registry.sqlalchemy_store
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import shap  # noqa: F401

import pipelines.data.features
import pipelines.models.anomaly_model
import pipelines.models.explain
import pipelines.models.registry  # noqa: F401
import serving.worker  # noqa: F401
from serving.__main__ import main

_write_lock = threading.Lock()


def tell(line: str) -> None:
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def reap() -> None:
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            time.sleep(0.05)
            continue
        tell(f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def serve_one(request: dict) -> None:
    """In the child: a new session, its own environment and log, then the worker."""
    os.setsid()
    os.environ.clear()
    os.environ.update(request["env"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 1
    try:
        code = main(request.get("args", []))
    except BaseException:  # noqa: BLE001 - report, then leave with an error code
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    threading.Thread(target=reap, name="reaper", daemon=True).start()
    tell("ready")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            serve_one(request)
        tell(f"pid {pid}")
