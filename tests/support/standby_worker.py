"""A pre-started scoring worker: imports what the worker needs, waits for a line on stdin,
then runs `python -m serving` (`serving.__main__.main`) with its own arguments.

The fault suite and the soak restart killed workers with it, so that a restart costs the
champion load and the Kafka join, not 10-20 s of imports on a loaded 2-core machine.
Settings are read from the environment only after the go line, as `python -m serving` does.
"""

from __future__ import annotations

import sys

import mlflow.pyfunc  # noqa: F401  - the heavy imports a worker pays at start
import pipelines.features  # noqa: F401
import pipelines.model_package  # noqa: F401
import pipelines.registry  # noqa: F401
import serving.worker  # noqa: F401
from serving.__main__ import main

if __name__ == "__main__":
    if not sys.stdin.readline():  # stdin closed without a go: the supervisor gave up on us
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
