"""Fault: the MLflow tracking server goes away while the worker scores a replay.

The champion is registered through a real `mlflow server` (the stack's MLflow UI process)
and the worker reads the registry over HTTP. When the server stops, the worker keeps
scoring every session with the model it loaded, and keeps polling the registry (each
failed poll is counted) without dying.
"""

from __future__ import annotations

import uuid

from evguard.services.process import port_open, wait_until
from tests.support.champion import register_champion
from tests.support.faultkit import ContinuousReplay, health, metric, tally, wait_for_partitions
from tests.support.workers import InProcessWorker

RELOAD_ERRORS = "evguard_serving_model_reload_errors_total"


def test_worker_keeps_scoring_with_the_loaded_model_while_mlflow_is_down(
        mlflow_server, fault_settings, result_queue, fault_figures, monkeypatch):
    server, stack = mlflow_server
    s = fault_settings.model_copy(update={
        "mlflow_tracking_uri": f"http://127.0.0.1:{server.mlflow_ui_port}",
        "state_dir": server.state_dir, "model_name": f"faults-{uuid.uuid4().hex[:8]}",
        "serve_model_poll_s": 0.5})
    # a refused connection fails the poll at once instead of after MLflow's backoff (minutes)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    version = register_champion(s, seed=3).version  # through the server's REST API

    worker = InProcessWorker(s)
    replay = ContinuousReplay(s, rate=300, seed=51, round_size=300)
    try:
        wait_for_partitions(s.metrics_port, alive=worker.thread.is_alive)
        replay.start()
        result_queue.wait_for(lambda r: len(r.sessions()) >= 300, timeout=60)
        assert metric(s.metrics_port, RELOAD_ERRORS) == 0
        assert stack.mlflow_ui_process().stop()
        assert not port_open("127.0.0.1", server.mlflow_ui_port)
        seen = len(result_queue.wait_for(lambda r: False, timeout=0).sessions())
        result_queue.wait_for(lambda r: len(r.sessions()) >= seen + 600, timeout=60)
        polls_failed = wait_until(lambda: metric(s.metrics_port, RELOAD_ERRORS) >= 3, 20)
        during = replay.running()
        replay.stop()
        expected = set(replay.expected)
        results = result_queue.wait_for(lambda r: r.sessions() >= expected, timeout=60)
        state = health(s.metrics_port)
        errors = metric(s.metrics_port, RELOAD_ERRORS)
        alive = worker.thread.is_alive()
    finally:
        if replay.running():
            replay.stop()
        outcome = worker.finish()

    counted = tally(expected, results.bodies)
    after_stop = [b for b in results.bodies if b["sessionID"] in expected]
    fault_figures("mlflow_down", messages=counted.messages, lost=counted.lost,
                  duplicates=counted.duplicates, failed_registry_polls=int(errors))
    assert counted.lost == 0, counted.lost_ids
    assert {b["model"]["version"] for b in after_stop} == {version}
    assert polls_failed and during and alive
    assert state["status"] == "ok" and state["model_version"] == version
    assert outcome.code == 0 and replay.failed == 0
