"""Fault: 10,000 fuzzed bad messages interleaved with good sessions, through the real broker.

Every bad message must reach the dead-letter topic once, with its original bytes, key and
position, the stage the contract gives it and a reason naming the broken field; every good
session must be scored; the worker must count exactly that.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.contracts.sessions import encode_session
from pipelines.data.synth import generate_sessions
from tests.support.bad_sessions import BadMessage, one_bad_message_per_category
from tests.support.faultkit import metric, produce_tracked, read_topic, tally
from tests.support.workers import InProcessWorker

BAD, GOOD = 10_000, 2_000


def fuzzed_corpus(bases: list[dict], known_sites: frozenset[str]) -> list[BadMessage]:
    """A fixed corpus from hypothesis: 250 examples of 4 x 10 categories."""
    corpus: list[BadMessage] = []

    @settings(max_examples=BAD // 40, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(one_bad_message_per_category(bases, known_sites), min_size=4, max_size=4))
    def collect(groups):
        corpus.extend(message for group in groups for message in group)

    collect()
    return corpus


def test_fuzzed_bad_messages_are_dead_lettered_and_the_good_ones_scored(
        fault_settings, result_queue, fault_figures):
    # a fuzz stream is mostly bad by design: the invalid-ratio stop has its own tests
    s = fault_settings.model_copy(update={"serve_max_invalid_ratio": 1.0})
    known = frozenset(s.serve_site_ids)
    good, _ = generate_sessions(GOOD, seed=21, anomaly_rate=0.03)
    bases = [{**r, "sessionID": f"fuzz:{r['sessionID']}", "schema_version": 1}
             for r in generate_sessions(300, seed=22)[0]]
    bad = {f"bad-{i:05d}": m for i, m in enumerate(fuzzed_corpus(bases, known))}
    assert len(bad) == BAD
    stream = [(r["stationID"], encode_session(r)) for r in good] + \
             [(key, m.value) for key, m in bad.items()]
    random.Random(7).shuffle(stream)
    positions = produce_tracked(s, stream)

    worker = InProcessWorker(s)
    try:
        results = result_queue.wait_for(lambda r: len(r.sessions()) >= GOOD, timeout=90)
        dead = read_topic(s, s.topic_dlq, BAD, timeout=60)
        alive = worker.thread.is_alive()
        by_stage = {stage: metric(s.metrics_port, "evguard_serving_dead_lettered_total",
                                  f'stage="{stage}"') for stage in ("decode", "schema", "features")}
        scored = metric(s.metrics_port, "evguard_serving_scored_total")
    finally:
        outcome = worker.finish()

    good_tally = tally((r["sessionID"] for r in good), results.bodies)
    dead_keys = Counter(m.key().decode() for m in dead)
    missing_dead = set(bad) - set(dead_keys)
    fault_figures("bad_input", messages=GOOD + BAD, lost=good_tally.lost + len(missing_dead),
                  duplicates=good_tally.duplicates + sum(dead_keys.values()) - len(dead_keys),
                  bad=BAD, good=GOOD, dead_lettered=len(dead),
                  categories=dict(Counter(m.category for m in bad.values())))

    assert alive and outcome is not None and outcome.code == 0, outcome
    assert good_tally.lost == 0, good_tally.lost_ids
    assert not {b["sessionID"] for b in results.bodies} - {r["sessionID"] for r in good}, \
        "a bad message was scored"
    assert not missing_dead, sorted(missing_dead)[:5]
    expected_stage = Counter(m.stage for m in bad.values())
    assert by_stage == {"decode": expected_stage["decode"], "schema": expected_stage["schema"],
                        "features": 0}
    assert scored == GOOD
    report = outcome.report
    assert (report.consumed, report.scored, report.dead_lettered) == (GOOD + BAD, GOOD, BAD)

    wrong = []
    for message in dead:
        key = message.key().decode()
        sent = bad[key]
        headers = {k: v.decode() for k, v in message.headers()}
        reason = headers.get("error", "")
        checks = {
            "original bytes": message.value() == sent.value,
            "stage": headers.get("error_stage") == sent.stage,
            "reason names the field": bool(reason) and sent.field in reason,
            "source": (headers.get("source_topic"), int(headers.get("source_partition", -1)),
                       int(headers.get("source_offset", -1))) == (s.topic_sessions,
                                                                  *positions[key]),
        }
        wrong += [(what, sent.category, sent.field, reason[:80])
                  for what, ok in checks.items() if not ok]
    assert not wrong, f"{len(wrong)} dead letters wrong, e.g. {wrong[:5]}"
