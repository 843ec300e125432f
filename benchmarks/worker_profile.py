"""CPU per session of each stage of the worker's hot path, in process (no broker).

    .venv/bin/python benchmarks/worker_profile.py [--sessions 20000] [--rounds 2]
        [--batch-size 1000] [--model iforest|isotree|eif] [--trees 100] [--pure]

Runs the worker's own steps, Decode -> Context -> Score (`serving.chain.build_scoring_chain`),
on Kafka message bytes of synthetic sessions (`pipelines.data.synth`, the data of
`benchmarks/serving_throughput.py`), in micro-batches of `--batch-size`, with a champion like
the one that benchmark registers (100 trees on 5,000 sessions, 1 % alert budget; built in
memory here, not through MLflow). Each stage is timed with the thread's CPU clock:
- `decode`: bytes -> validated session dicts (`DecodeStep`);
- `context`: station context and health from the keyed state (`ContextStep`);
- `features`: the feature function (`pipelines.data.features.feature_matrix`);
- `score`: the model's `score` on the batch's features;
- `explain`: the model's `explain` on the batch's anomalies (only those);
- `encode`: the rest of the Score step: thresholds and the result bodies.

The first round fills the station state; the median batch of the later rounds is reported,
per stage, in us per session, and the process's RSS before and after the batches (the messages are built
before). The station modules run compiled when their build is up to date (`pipelines.native`);
`--pure` runs them as Python, and `stations_compiled` says which ran. Publish and commit are not included (see
`benchmarks/serving_throughput.py` for the whole worker with its brokers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import native

native.enabled = "--pure" not in sys.argv  # decided before any station module is imported

import numpy as np
from procstat import cpu_pressure

from pipelines.contracts.sessions import Source, encode_session, session_key
from pipelines.data.features import FEATURE_COLUMNS, FEATURE_VERSION, feature_matrix
from pipelines.data.synth import generate_sessions
from pipelines.models.anomaly_model import SessionAnomalyModel
from pipelines.models.estimators import make_detector
from pipelines.models.registry import ChampionModel
from pipelines.stations import context as station_context
from serving.chain import ChainOptions, build_scoring_chain
from serving.steps.base import Batch
from serving.steps.decode import RawMessage

STAGES = ("decode", "context", "features", "score", "explain", "encode")


def champion(kind: str, trees: int) -> ChampionModel:
    """A champion as `benchmarks/serving_throughput.py` registers one, built in memory."""
    records, _ = generate_sessions(5000, seed=7, anomaly_rate=0.0)
    X = feature_matrix(records).to_numpy()
    extra = {"extension_level": 1} if kind == "eif" else {}
    detector = make_detector(kind, n_estimators=trees, max_samples=256, random_state=7,
                             **extra).fit(X)
    threshold = float(np.quantile(detector.score_samples(X), 0.99))
    model = SessionAnomalyModel(detector, threshold, FEATURE_COLUMNS, FEATURE_VERSION, X, 0.01,
                                f"profile-{kind}")
    return ChampionModel(name="profile", version="1", threshold=threshold,
                         feature_version=FEATURE_VERSION, feature_columns=list(FEATURE_COLUMNS),
                         reference=model.reference, model=model)


def message_batches(sessions: int, rounds: int, size: int) -> list[list[RawMessage]]:
    """The Kafka messages of the sessions, `rounds` times over, as micro-batches."""
    records, _ = generate_sessions(sessions, seed=1, anomaly_rate=0.02)
    raw = [(encode_session(r), (session_key(r) or "").encode()) for r in records] * rounds
    messages = [RawMessage(value, key, Source("sessions", 0, offset, 0))
                for offset, (value, key) in enumerate(raw)]
    return [messages[i:i + size] for i in range(0, len(messages), size)]


class StageClock:
    """CPU seconds per stage of the batch being run."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def timed(self, stage: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.thread_time() - t0
        return run


def profile(args: argparse.Namespace) -> dict:
    model = champion(args.model, args.trees)
    clock = StageClock()
    model.score = clock.timed("score", model.score)
    model.explain = clock.timed("explain", model.explain)
    chain = build_scoring_chain(current_model=lambda: model,
                                feature_fn=clock.timed("features", feature_matrix),
                                options=ChainOptions())
    decode = chain.head
    context = decode.next_step
    score = context.next_step
    decode.transform = clock.timed("decode", decode.transform)
    context.transform = clock.timed("context", context.transform)
    score.transform = clock.timed("encode", score.transform)  # minus its inner stages below

    work = message_batches(args.sessions, args.rounds, args.batch_size)
    rss_before = rss_mb()
    per_batch: list[dict[str, float]] = []
    anomalies = 0
    for raw in work:
        clock.seconds = dict.fromkeys(STAGES, 0.0)
        batch = Batch(offsets={}, raw=list(raw))
        decode.submit(batch)
        seconds = dict(clock.seconds)
        seconds["encode"] -= seconds["features"] + seconds["score"] + seconds["explain"]
        per_batch.append({k: v / len(raw) for k, v in seconds.items()})
        anomalies += batch.anomalies
        chain.collected.batches.clear()
    steady = per_batch[len(work) // args.rounds:]
    figures = {k: 1e6 * statistics.median(b[k] for b in steady) for k in STAGES}
    return {"model": args.model, "trees": args.trees, "batch_size": args.batch_size,
            "stations_compiled": native.is_compiled(station_context),
            "sessions": args.sessions * args.rounds, "anomalies": anomalies,
            "us_per_session": {k: round(v, 2) for k, v in figures.items()},
            "total_us": round(sum(figures.values()), 2),
            "rss_mb": {"before_batches": rss_before, "after_batches": rss_mb()}}


def rss_mb() -> float:
    """This process's resident memory: what the chain's state and caches add to it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20_000, help="distinct sessions")
    parser.add_argument("--rounds", type=int, default=2, help="times each session is replayed")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--model", choices=("iforest", "isotree", "eif"), default="iforest")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--pure", action="store_true",
                        help="run the station modules as Python even when a compiled build is "
                             "up to date")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first one fills the state)")
    before = cpu_pressure()
    figures = profile(args)
    figures["cpu_pressure_before"] = before
    figures["cpu_pressure_after"] = cpu_pressure()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
