"""Running the telemetry processor: build it from the settings, map how it ended to an exit code."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import KafkaException

from keyed_state import ChangelogError
from pipelines.settings import Settings
from telemetry.kafka import KafkaUnavailable, ensure_topics
from telemetry.processor import (
    DEFAULT_OPTIONS,
    ProcessorError,
    ProcessorOptions,
    ProcessorReport,
    TelemetryProcessor,
)

log = logging.getLogger("evguard.telemetry")

EXIT_OK, EXIT_KAFKA, EXIT_WRITE_FAILED = 0, 1, 5


@dataclass
class ProcessorOutcome:
    """How a run ended: the process exit code, why, and its counts."""

    code: int
    message: str
    report: ProcessorReport


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT only set `stop`; a second one acts as usual. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, _frame) -> None:
        log.info("%s: finishing the batches in flight, then stopping",
                 signal.Signals(signum).name)
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_processor(settings: Settings, options: ProcessorOptions = DEFAULT_OPTIONS,
                  stop: threading.Event | None = None, idle_exit_s: float = 0.0,
                  ) -> ProcessorOutcome:
    """Run the telemetry processor until a signal, `stop`, or `idle_exit_s` without messages.

    Exit codes: 0 stopped cleanly, 1 Kafka unusable, 5 a write (session, dead letter,
    state) was not acknowledged.
    """
    empty = ProcessorReport()
    try:
        partitions = ensure_topics(settings, timeout=15)
    except KafkaUnavailable as exc:
        return ProcessorOutcome(EXIT_KAFKA, f"Kafka is not usable at {settings.kafka_servers} "
                                f"({exc}); start it with `evguard services up`", empty)
    processor = TelemetryProcessor(settings, options)
    stop = stop or threading.Event()
    try:
        with stop_on_signals(stop):
            report = processor.run(stop, idle_exit_s, partitions)
    except ProcessorError as exc:
        return ProcessorOutcome(EXIT_WRITE_FAILED, f"STOPPED: {exc}", processor.report)
    except ChangelogError as exc:
        return ProcessorOutcome(EXIT_KAFKA, f"STOPPED: state changelog: {exc}", processor.report)
    except KafkaException as exc:
        return ProcessorOutcome(EXIT_KAFKA, f"STOPPED: Kafka: {exc.args[0].str()}",
                                processor.report)
    return ProcessorOutcome(EXIT_OK, "stopped cleanly", report)


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr; pika's own chatter only from warnings up."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
