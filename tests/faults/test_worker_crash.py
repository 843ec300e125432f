"""Fault: the worker process is killed with SIGKILL five times during a replay.

Each incarnation publishes results, then dies mid-stream with batches in flight; a new
process with the same static group membership takes over. Every session replayed must
have a result; the copies scored twice (at-least-once) are counted, not forbidden.
"""

from __future__ import annotations

import signal
import uuid

from tests.support.faultkit import ContinuousReplay, WorkerSupervisor, tally, wait_for_partitions

KILLS = 5


def test_worker_killed_five_times_during_a_replay_loses_no_session(fault_settings, result_queue,
                                                                   worker_zygote,
                                                                   fault_figures, tmp_path):
    s = fault_settings.model_copy(update={"serve_batch_size": 200,
                                          "serve_instance_id": f"faults-{uuid.uuid4().hex[:6]}"})
    workers = WorkerSupervisor(s, tmp_path / "worker.log", worker_zygote)
    replay = ContinuousReplay(s, rate=300, seed=31, round_size=300)
    kills_mid_replay = 0
    try:
        workers.start()
        wait_for_partitions(s.metrics_port, alive=workers.alive)
        replay.start()
        for kill in range(KILLS):
            seen = len(result_queue.wait_for(lambda r: False, timeout=0).sessions())
            # this incarnation scores new sessions, then dies with work in flight
            result_queue.wait_for(lambda r, seen=seen: len(r.sessions()) >= seen + 200,
                                  timeout=60)
            kills_mid_replay += replay.running()
            workers.kill()
            workers.start()
            wait_for_partitions(s.metrics_port, alive=workers.alive)
        replay.stop()
        expected = set(replay.expected)
        results = result_queue.wait_for(lambda r: r.sessions() >= expected, timeout=90)
        code = workers.stop()
    finally:
        if replay.running():
            replay.stop()
        workers.close()

    counted = tally(expected, results.bodies)
    fault_figures("worker_crash", messages=counted.messages, lost=counted.lost,
                  duplicates=counted.duplicates, kills=workers.kills,
                  replay_failed=replay.failed)
    assert counted.lost == 0, counted.lost_ids
    assert workers.kills == KILLS and kills_mid_replay == KILLS
    assert workers.exit_codes[:KILLS] == [-signal.SIGKILL] * KILLS
    assert code == 0 and replay.failed == 0
    print(f"{KILLS} x SIGKILL: {counted.messages} sessions, {counted.duplicates} duplicates")
