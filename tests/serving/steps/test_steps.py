"""Each step alone, with a stand-in next step (arroyo-style step tests)."""

from __future__ import annotations

import pytest

from pipelines.contracts.score_result import parse_score_results
from pipelines.contracts.sessions import encode_session
from pipelines.data.features import feature_matrix
from pipelines.data.session_rules import RULE_SCORE
from serving.chain import in_memory_tracker
from serving.prometheus import WorkerMetrics
from serving.steps.base import Batch, MessageRejected, WaitingBatches
from serving.steps.commit import IMMEDIATE, CommitPolicy, CommitStep, StateWriteError
from serving.steps.context import ContextStep
from serving.steps.dead_letters import (
    LENIENT,
    DeadLetterError,
    InvalidRatioExceeded,
    InvalidRatioLimit,
    InvalidRatioTracker,
)
from serving.steps.decode import DecodeStep
from serving.steps.score import ScoreStep
from tests.serving.stand_ins import (
    PowerScorer,
    RecordingDeadLetters,
    RecordingStep,
    encoded,
    raw_batch,
    session,
)


def decode_step(next_step, limit=LENIENT, dead=None):
    dead = dead or RecordingDeadLetters()
    return DecodeStep(next_step, dead, InvalidRatioTracker(limit), WorkerMetrics()), dead


def test_decode_passes_valid_sessions_on_and_dead_letters_the_rest_with_position():
    nxt = RecordingStep()
    step, dead = decode_step(nxt)
    batch = raw_batch([encoded(0), b"not json", encoded(1), encoded(2, kwh=-3.0)], partition=2,
                      first_offset=40)
    step.submit(batch)
    assert nxt.received == [batch]
    assert [r["sessionID"] for r in batch.records] == ["s0", "s1"]
    assert [s.offset for s in batch.sources] == [40, 42]
    assert [(m.source.partition, m.source.offset, m.stage) for m in dead.sent] == \
        [(2, 41, "decode"), (2, 43, "schema")]
    assert dead.sent[0].value == b"not json" and "kWhDelivered" in dead.sent[1].reason
    assert batch.offsets == {("ev-station-data", 2): 44} and batch.raw == []


def test_decode_stops_loudly_before_dead_lettering_a_batch_over_the_invalid_ratio():
    step, dead = decode_step(RecordingStep(), InvalidRatioLimit(max_ratio=0.5, window=10))
    step.submit(raw_batch([encoded(i) for i in range(8)] + [b"x", b"y"]))
    with pytest.raises(InvalidRatioExceeded, match="invalid"):
        step.submit(raw_batch([b"bad"] * 10))
    assert len(dead.sent) == 2  # only the first batch's


def test_invalid_ratio_is_judged_over_a_sliding_window():
    tracker = InvalidRatioTracker(InvalidRatioLimit(max_ratio=0.2, window=100))
    tracker.record(100, 20)  # exactly at the limit
    for _ in range(10):
        tracker.record(10, 0)  # the bad batch slides out of the window
    tracker.record(10, 9)
    with pytest.raises(InvalidRatioExceeded):
        tracker.record(20, 19)


@pytest.mark.parametrize("ratio, window", [(0.0, 10), (1.5, 10), (0.5, 0)])
def test_invalid_ratio_limit_rejects_nonsense(ratio, window):
    with pytest.raises(ValueError):
        InvalidRatioLimit(ratio, window)


def test_transform_carries_a_batch_over_under_backpressure_and_never_redoes_it():
    nxt = RecordingStep(reject=True)
    step, dead = decode_step(nxt)
    first = raw_batch([encoded(0), b"junk"])
    step.submit(first)  # accepted and decoded, held here
    with pytest.raises(MessageRejected):
        step.submit(raw_batch([encoded(1)]))
    step.poll()
    assert nxt.received == []
    nxt.reject = False
    step.poll()
    assert nxt.received == [first] and len(dead.sent) == 1
    step.submit(raw_batch([encoded(2)]))
    assert len(nxt.received) == 2


def score_step(nxt, model, dead=None):
    dead = dead or RecordingDeadLetters()
    holder = {"model": model}
    step = ScoreStep(nxt, lambda: holder["model"], feature_matrix, dead, WorkerMetrics(), 2)
    return step, dead, holder


def decoded_batch(values):
    """Decoded, and given its station context, as Score receives it."""
    step, _ = decode_step(ContextStep(RecordingStep(), in_memory_tracker()))
    batch = raw_batch(values)
    step.submit(batch)
    return batch


def test_score_flags_by_threshold_explains_only_anomalies_and_routes_by_site():
    nxt = RecordingStep()
    model = PowerScorer(version="7")
    step, _, _ = score_step(nxt, model)
    # 7 kWh over 5 h is 1.4 kW (normal); 60 kWh over 1 h is 60 kW (anomalous for the stand-in)
    batch = decoded_batch([encoded(0), encoded(1, kwh=60.0, hours=1), encoded(2, site="0001")])
    step.submit(batch)
    keys = [k for k, _ in batch.results]
    assert keys == ["score.0002.normal", "score.0002.anomaly", "score.0001.normal"]
    # one evguard.scores/2 message per routing key, here one result each
    results = [r for _, b in batch.results for r in parse_score_results(b).results]
    assert [r.is_anomaly for r in results] == [False, True, False]
    assert results[1].explanation[0]["feature"] == "avg_kw" and results[0].explanation == []
    assert model.explained_rows == 1
    assert {r.model_version for r in results} == {"7"} and batch.anomalies == 1
    assert results[1].kafka_offset == 1 and results[1].features["avg_kw"] == 60.0


def test_a_session_that_breaks_a_suite_rule_is_an_anomaly_whatever_the_model_says():
    nxt = RecordingStep()
    model = PowerScorer()
    step, _, _ = score_step(nxt, model)
    # done charging three hours before it connected, at an ordinary power
    inverted = dict(session(1), doneChargingTime="Wed, 02 Jan 2019 11:00:00 GMT")
    batch = decoded_batch([encoded(0), encode_session(inverted)])
    step.submit(batch)
    results = {r.session_id: r for _, b in batch.results for r in parse_score_results(b).results}
    normal, broken = results["s0"], results["s1"]
    assert not normal.is_anomaly and normal.explanation == []
    assert broken.is_anomaly and broken.score == RULE_SCORE
    first = broken.explanation[0]
    assert first["feature"] == "charging_hours" and first["value"] == -3.0
    assert "before connecting" in first["rule"]
    # the model's own score is kept; the rule is the whole explanation, the model explains none
    assert broken.score - first["contribution"] == pytest.approx(model.score(
        feature_matrix([inverted]))[0])
    assert len(broken.explanation) == 1 and model.explained_rows == 0
    assert batch.anomalies == 1


def test_model_swaps_only_between_batches():
    nxt = RecordingStep()
    step, _, holder = score_step(nxt, PowerScorer(version="1"))
    step.submit(decoded_batch([encoded(0)]))
    holder["model"] = PowerScorer(version="2")
    step.submit(decoded_batch([encoded(1), encoded(2)]))
    versions = [{r.model_version for _, b in batch.results
                 for r in parse_score_results(b).results} for batch in nxt.received]
    assert versions == [{"1"}, {"2"}]


def test_records_the_model_cannot_score_are_isolated_and_dead_lettered():
    nxt = RecordingStep()
    step, dead, _ = score_step(nxt, PowerScorer(poison_kwh=13.0))
    batch = decoded_batch([encoded(i, kwh=13.0 if i in (3, 6) else 7.0) for i in range(9)])
    step.submit(batch)
    assert [m.source.offset for m in dead.sent] == [3, 6]
    assert all(m.stage == "features" and "poisoned" in m.reason for m in dead.sent)
    assert dead.sent[0].value == encoded(3, kwh=13.0)
    assert len(batch.results) == 1  # one site, no anomaly: one message
    scored = [r.session_id for r in parse_score_results(batch.results[0][1]).results]
    assert scored == [f"s{i}" for i in range(9) if i not in (3, 6)]


def test_commit_waits_for_dead_letter_acks_and_keeps_kafka_order():
    commits = []
    dead = RecordingDeadLetters()
    step = CommitStep(lambda offsets, sync: commits.append((offsets, sync)), dead, IMMEDIATE)
    first = raw_batch([encoded(0), b"junk"])
    dead.send(first, object())
    second = raw_batch([encoded(1)], first_offset=2)
    step.submit(first)
    step.submit(second)
    step.poll()
    assert commits == []  # the first batch's dead letter is not acknowledged yet
    dead.acknowledge()
    step.poll()
    assert commits == [({("ev-station-data", 0): 3}, False)]


def test_commit_never_passes_a_failed_dead_letter():
    commits = []
    dead = RecordingDeadLetters()
    step = CommitStep(lambda offsets, sync: commits.append(offsets), dead, IMMEDIATE)
    batch = raw_batch([b"junk"])
    dead.send(batch, object())
    step.submit(batch)
    dead.acknowledge(error="broker down")
    with pytest.raises(DeadLetterError):
        step.poll()
    assert commits == []


def test_commit_policy_batches_commits_and_join_commits_synchronously():
    commits = []
    step = CommitStep(lambda offsets, sync: commits.append((offsets, sync)),
                      RecordingDeadLetters(), CommitPolicy(3600))
    step.submit(raw_batch([encoded(0)], partition=1))
    step.poll()  # the first commit is due at once
    step.submit(raw_batch([encoded(1)], partition=1, first_offset=1))
    step.submit(raw_batch([encoded(2)], partition=0, first_offset=5))
    step.poll()
    assert len(commits) == 1
    step.join(1.0)
    assert commits[-1] == ({("ev-station-data", 1): 2, ("ev-station-data", 0): 6}, True)


def test_commit_waits_for_the_station_state_writes_and_never_passes_a_failed_one():
    writes, commits = [], []
    commit = CommitStep(lambda offsets, sync: commits.append(offsets), RecordingDeadLetters(),
                        IMMEDIATE)
    context = ContextStep(commit, in_memory_tracker(),
                          flush_state=lambda delivered: writes.append(delivered) or 1)
    step, _ = decode_step(context)
    step.submit(raw_batch([encoded(0), encoded(1)]))
    commit.poll()
    assert commits == [] and len(writes) == 1  # the state this batch changed is not durable yet
    writes[0](None)
    commit.poll()
    assert commits == [{("ev-station-data", 0): 2}]

    step.submit(raw_batch([encoded(2)], first_offset=2))
    writes[1]("changelog partition offline")
    with pytest.raises(StateWriteError, match="changelog partition offline"):
        commit.poll()
    assert len(commits) == 1


def test_waiting_batches_grow_up_to_the_limit_and_keep_kafka_order():
    waiting = WaitingBatches(limit=10)
    waiting.add(raw_batch([encoded(i) for i in range(3)], partition=0, first_offset=0))
    waiting.add(raw_batch([encoded(i) for i in range(3, 7)], partition=0, first_offset=3))
    waiting.add(raw_batch([encoded(7)], partition=1, first_offset=50))
    assert len(waiting) == 1 and waiting.room == 2
    merged = waiting.first()
    assert [m.source.offset for m in merged.raw] == [0, 1, 2, 3, 4, 5, 6, 50]
    assert merged.offsets == {("ev-station-data", 0): 7, ("ev-station-data", 1): 51}
    # what the merged batch decodes to is what the two batches would have given
    nxt = RecordingStep()
    decode_step(nxt)[0].submit(waiting.pop_first())
    assert [r["sessionID"] for r in nxt.received[0].records] == [f"s{i}" for i in range(8)]
    assert waiting.room == 10 and not waiting


def test_a_timer_batch_is_never_merged_with_messages():
    waiting = WaitingBatches(limit=10)
    waiting.add(Batch(offsets={}))
    waiting.add(raw_batch([encoded(0)]))
    waiting.add(raw_batch([encoded(1)], first_offset=1))
    assert len(waiting) == 2 and waiting.first().raw == [] and waiting.room == 8
