"""The scoring pipeline written the idiomatic way with Quix Streams 3.x, for the race.

    <quix venv>/bin/python benchmarks/race/quix_pipeline.py --kafka HOST:PORT --topic T \
        --group G --amqp URL --exchange X --expect N [--commit-every 1000]

Run by `benchmarks/serving_throughput.py` (part `quix`) in a venv of its own: Quix
Streams 3.28.1 pins confluent-kafka < 2.13 and pydantic < 2.14, older than the project's,
so the benchmark installs it into `.evguard/race-quix/` and reaches the project's packages
through a `.pth` file placed after Quix's own (see `ensure_quix_venv` there).

The pipeline: `Application(... auto_offset_reset="earliest")`, `app.dataframe(topic)` with
Quix's JSON deserializer (given orjson's `loads`), and one `BatchingSink` subclass,
`ScoringSink`. Quix calls a sink's `write(batch)` once per topic-partition when it
commits a checkpoint (every `commit_interval` seconds or `commit_every` messages), and
commits the offsets of that checkpoint only after every `write` returned: so scoring
the whole batch in `write`, publishing the results with confirms and returning only once
RabbitMQ confirmed them is Quix's own way to batch and to commit after the sink. (The
per-message alternative, `sdf.apply(score)` then a sink, pays a DataFrame and a model call
per session: the seed's design.)

The work in `write` is the worker's, with the project's code: sessions validated by
`pipelines.contracts.sessions.validate_session`, station contexts from
`serving.stations.StationTracker` (kept in memory here: the worker also writes them to
a changelog topic), `pipelines.data.features.feature_matrix`, the champion loaded from
the MLflow registry by `pipelines.models.registry.load_champion` (as the worker does),
explanations for anomalies only, and results encoded by
`pipelines.contracts.score_result.build_results`, the function the worker's Score step
calls. Prints `progress <monotonic s> <results>` after each write and stops once --expect
results are confirmed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import orjson
from confirm_publisher import BatchConfirmPublisher
from quixstreams import Application
from quixstreams.models.serializers.json import JSONDeserializer
from quixstreams.sinks import BatchingSink, SinkBatch

from keyed_state.partition import PartitionState
from pipelines.contracts.score_result import build_results
from pipelines.contracts.sessions import InvalidSession, Source, validate_session
from pipelines.data.features import feature_matrix
from pipelines.data.session_rules import RuleCheck, score_with_rules
from pipelines.models.registry import load_champion
from pipelines.settings import Settings
from serving.stations import StationTracker


class ScoringSink(BatchingSink):
    """Score one topic-partition's batch with the champion and publish it, confirmed."""

    def __init__(self, settings: Settings, expect: int, on_done, top_k: int = 3) -> None:
        super().__init__()
        self._settings = settings
        self._expect = expect
        self._on_done = on_done
        self._top_k = top_k
        self._rules: RuleCheck | None = None
        self._states: dict[int, PartitionState] = {}
        self._tracker = StationTracker(self._state_of, lambda: sorted(self._states),
                                       tick_s=settings.station_tick_s)
        self.model = None
        self.publisher: BatchConfirmPublisher | None = None
        self.results = 0
        self.invalid = 0

    def _state_of(self, partition: int) -> PartitionState:
        if partition not in self._states:
            self._states[partition] = PartitionState(partition)
        return self._states[partition]

    def setup(self) -> None:
        self.model = load_champion(self._settings)
        self.publisher = BatchConfirmPublisher(self._settings.rabbitmq_url,
                                               self._settings.rabbitmq_exchange)

    def write(self, batch: SinkBatch) -> None:
        model = self.model
        records, sources = [], []
        for item in batch:
            try:
                records.append(validate_session(item.value))
            except InvalidSession:
                self.invalid += 1
                continue
            sources.append(Source(batch.topic, batch.partition, item.offset, item.timestamp))
        if not records:
            return
        contexts, station_alerts = self._tracker.process(records, sources)
        features = feature_matrix(records, contexts)
        scores = np.asarray(model.score(features), dtype=np.float64)
        # the worker's Score step: the features suite's rules, then the model explains the rest
        matrix = features.to_numpy(dtype=np.float64)
        if self._rules is None:
            self._rules = RuleCheck(list(features.columns))

        def explain(rows: np.ndarray) -> dict[int, list[dict]]:
            explained = model.explain(features.iloc[rows], top_k=self._top_k)
            return {int(i): list(e) for i, e in zip(rows, explained)}

        scores, explanations = score_with_rules(self._rules, matrix, scores, model.threshold,
                                                explain)
        results = build_results(
            records, sources, list(features.columns), matrix, scores,
            float(model.threshold), explanations,
            {"name": model.name, "version": str(model.version),
             "feature_version": model.feature_version},
            datetime.now(UTC).isoformat(timespec="milliseconds"))
        # returns only once RabbitMQ confirmed every message; raising aborts the checkpoint
        self.publisher.publish(results + station_alerts)
        self.results += len(records)
        print(f"progress {time.monotonic():.4f} {self.results}", flush=True)
        if self.results >= self._expect:
            self._on_done()

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--mlflow", required=True, help="MLflow tracking URI of the champion")
    parser.add_argument("--expect", type=int, required=True, help="stop after this many results")
    parser.add_argument("--commit-every", type=int, default=1000,
                        help="checkpoint (sink write + commit) after this many messages")
    parser.add_argument("--commit-interval", type=float, default=1.0,
                        help="... or after this many seconds")
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    logging.getLogger("pika").setLevel(logging.WARNING)

    settings = Settings(_env_file=None, kafka_bootstrap=args.kafka, rabbitmq_url=args.amqp,
                        rabbitmq_exchange=args.exchange, mlflow_tracking_uri=args.mlflow)
    app = Application(broker_address=args.kafka, consumer_group=args.group,
                      auto_offset_reset="earliest", commit_every=args.commit_every,
                      commit_interval=args.commit_interval, loglevel="WARNING",
                      state_dir=args.state_dir, auto_create_topics=False,
                      # the embedded broker answers a fetch with the whole backlog (it
                      # ignores fetch.max.bytes): the worker's consumer allows the same
                      consumer_extra_config={"receive.message.max.bytes": 1_000_000_000})
    topic = app.topic(args.topic, value_deserializer=JSONDeserializer(loads=orjson.loads))
    sink = ScoringSink(settings, args.expect, on_done=app.stop)
    sdf = app.dataframe(topic)
    sdf.sink(sink)
    try:
        app.run()
    finally:
        sink.close()
    print(f"done {sink.results} invalid {sink.invalid}", flush=True)


if __name__ == "__main__":
    main()
