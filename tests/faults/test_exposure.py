"""Exposure: what the project starts listens on 127.0.0.1 only, and its secrets stay secret.

The worker, the dashboard, the SMTP sink, the MLflow server and the Kafka-compatible broker
run as real processes with the ACN token and the SMTP password set to unique markers; a
replay with anomalies and bad messages goes through the worker, the alert consumer emails
the anomalies. Neither marker may appear in any log, result, dead letter, email, stored
row or dashboard response. (The foundation test covers the Prefect server the same way.)
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import httpx
import orjson
import pika
from pydantic import SecretStr

from evguard.services.process import free_port
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.rabbit import declare_queue
from pipelines.contracts.dead_letters import dlq_name
from pipelines.contracts.sessions import encode_session
from pipelines.data.synth import generate_sessions
from pipelines.scores.store import MonitoringStore
from tests.support.faultkit import (
    WorkerSupervisor,
    produce_tracked,
    read_topic,
    tally,
    wait_for_partitions,
)
from tests.support.listeners import listening_addresses


def test_services_bind_localhost_and_no_secret_leaks(fault_settings, result_queue, mlflow_server,
                                                     worker_zygote, kafka_settings,
                                                     fault_figures, tmp_path, caplog):
    token, password = f"acn-token-{uuid.uuid4().hex}", f"smtp-password-{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    s = fault_settings.model_copy(update={
        "acn_token": SecretStr(token), "smtp_password": SecretStr(password),
        "state_dir": tmp_path / "state", "smtp_port": free_port(), "dashboard_port": free_port(),
        "alerts_queue": f"alerts-faults-{tag}",
        "monitoring_queue": f"monitoring-faults-{tag}", "alert_cooldown_s": 0,
        "monitoring_db_url": f"sqlite:///{tmp_path / 'monitoring.db'}"})
    stack = LocalStack(s)
    with pika.BlockingConnection(pika.URLParameters(s.rabbitmq_url)) as conn:
        declare_queue(conn.channel(), s.rabbitmq_exchange, s.alerts_queue, "score.*.anomaly")
    workers = WorkerSupervisor(s, tmp_path / "worker.log", worker_zygote)
    caplog.set_level(logging.DEBUG)
    try:
        workers.start()
        stack.smtp_process().start()
        stack.dashboard_process().start()
        wait_for_partitions(s.metrics_port, alive=workers.alive)

        sessions, labels = generate_sessions(300, seed=71, anomaly_rate=0.1)
        bad = {f"bad-{i}": value for i, value in enumerate(
            [b"{not json", b"\xff\xfe", orjson.dumps({"hello": "world"}),
             encode_session({**sessions[0], "sessionID": "x", "kWhDelivered": -1.0})])}
        produce_tracked(s, [(r["stationID"], encode_session(r)) for r in sessions]
                        + list(bad.items()))
        results = result_queue.wait_for(lambda r: len(r.sessions()) >= len(sessions), 60)
        dead = read_topic(s, s.topic_dlq, len(bad))
        store = MonitoringStore(s.monitoring_db)
        try:
            outcomes = AlertConsumer(s, store).run(threading.Event(), max_runtime_s=60,
                                                   idle_exit_s=2.0)
        finally:
            store.close()
        base = f"http://127.0.0.1:{s.dashboard_port}"
        pages = [httpx.get(base + path, timeout=10).text
                 for path in ("/", "/api/overview", "/api/feed?limit=500")]
        pids = {"worker": workers.pid, "dashboard": stack.dashboard_process().pid(),
                "smtp": stack.smtp_process().pid(),
                "mlflow": mlflow_server[1].mlflow_ui_process().pid(),
                "kafka": LocalStack(kafka_settings).kafka_process().pid()}
        listening = {name: listening_addresses({pid}) for name, pid in pids.items()}
        dashboard_env = Path(f"/proc/{pids['dashboard']}/environ").read_bytes()
        given = {"dashboard": token.encode() in dashboard_env
                 and password.encode() in dashboard_env,
                 "worker": {workers.env["EVGUARD_ACN_TOKEN"],
                            workers.env["EVGUARD_SMTP_PASSWORD"]} == {token, password}}
    finally:
        workers.close()
        stack.dashboard_process().stop()
        stack.smtp_process().stop()
        with pika.BlockingConnection(pika.URLParameters(s.rabbitmq_url)) as conn:
            channel = conn.channel()
            channel.queue_delete(s.alerts_queue)
            channel.queue_delete(dlq_name(s.alerts_queue))

    emails = sorted(s.outbox_dir.glob("*.eml"))
    places = {
        "worker log": (tmp_path / "worker.log").read_bytes(),
        "dashboard log": stack.dashboard_process().log_file.read_bytes(),
        "smtp sink log": stack.smtp_process().log_file.read_bytes(),
        "alert consumer log": caplog.text.encode(),
        "results": b"\n".join(orjson.dumps(b) for b in results.bodies),
        "dead letters": b"\n".join((m.value() or b"") + repr(m.headers()).encode()
                                   for m in dead),
        "emails": b"\n".join(f.read_bytes() for f in emails),
        "monitoring store": (tmp_path / "monitoring.db").read_bytes(),
        "dashboard responses": "\n".join(pages).encode(),
    }
    leaks = {where: secret for where, content in places.items()
             for secret in (token, password) if secret.encode() in content}
    counted = tally((r["sessionID"] for r in sessions), results.bodies)
    fault_figures("exposure", messages=len(sessions) + len(bad), lost=counted.lost,
                  duplicates=counted.duplicates, emails=len(emails), leaks=len(leaks),
                  listeners=sorted(a for addrs in listening.values() for a in addrs))

    assert given == {"worker": True, "dashboard": True}  # they had the secrets to leak
    assert not leaks, leaks
    for name, addresses in listening.items():
        assert addresses, f"{name} listens nowhere?"
        assert {a.rsplit(":", 1)[0] for a in addresses} == {"127.0.0.1"}, (name, addresses)
    assert f"127.0.0.1:{s.metrics_port}" in listening["worker"]
    assert f"127.0.0.1:{s.dashboard_port}" in listening["dashboard"]
    # the places searched hold what they should, so an absent marker means something
    assert counted.lost == 0 and len(dead) == len(bad)
    assert emails and outcomes["sent"] == len(emails)
    assert all(places[p] for p in ("worker log", "results", "dead letters", "emails"))
    assert labels and b"worker started" in places["worker log"]
