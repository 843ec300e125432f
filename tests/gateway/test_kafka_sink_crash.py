"""The gateway's Kafka sink across a SIGKILL of the embedded broker: its idempotent producer
loses its state with the broker's, and the sink renews it, so chargers' messages are
acknowledged again once the broker is back, with nobody restarting the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from evguard.services.process import pid_alive, wait_until
from gateway.kafka_sink import DeliveryFailed, KafkaSink
from pipelines.contracts.telemetry import parse_telemetry
from tests.gateway.gateway_kit import new_topic
from tests.support.brokers import private_kafka_broker
from tests.support.faultkit import read_topic
from tests.telemetry.kit import meter


async def send_until(sink: KafkaSink, cp: str, stop_when, acked: dict[str, float],
                     failed: list) -> None:
    """A charger: one meter event every 10 ms, each awaited like a CALL; a failed one is sent
    again under the same event id, as a charger repeats an unanswered CALL."""
    n, event = 0, None
    while not stop_when():
        if event is None:
            event = meter(1_700_000_000.0 + n, 1000.0 + n, 16.0, cp=cp, tx="T1")
        try:
            await sink.deliver([event])
            acked[event.event_id] = time.monotonic()
            n, event = n + 1, None
        except DeliveryFailed as exc:
            failed.append(str(exc))
        await asyncio.sleep(0.01)


def test_acknowledgements_resume_after_the_broker_is_sigkilled_and_restarted(
        kafka_settings, tmp_path):
    with private_kafka_broker(kafka_settings, tmp_path / "kafka") as (s, stack):
        topic = new_topic(s)
        time.sleep(2.0)  # older than the broker's loss window: the topic itself survives
        acked: dict[str, float] = {}
        failed: list[str] = []
        marks: dict[str, float] = {}

        async def scenario() -> None:
            sink = KafkaSink(s, topic, ack_timeout_s=3.0)
            try:
                def done() -> bool:
                    restarted = marks.get("restarted", float("inf"))
                    return sum(t > restarted for t in acked.values()) >= 200

                # 30 chargers at once: batches are in flight when the broker dies
                sender = asyncio.gather(*(send_until(sink, f"CP-S{i}", done, acked, failed)
                                          for i in range(30)))
                while len(acked) < 200:
                    await asyncio.sleep(0.05)
                kafka = stack.kafka_process()
                broker = kafka.listener()
                os.kill(broker, signal.SIGKILL)
                await asyncio.to_thread(
                    wait_until, lambda: not pid_alive(broker) and not kafka.running(), 15)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(kafka.start)
                marks["restarted"] = time.monotonic()
                await asyncio.wait_for(sender, 90)
            finally:
                sink.close(5.0)

        asyncio.run(scenario())
        after = {event_id for event_id, t in acked.items() if t > marks["restarted"]}
        stored = {parse_telemetry(m.value()).event_id
                  for m in read_topic(s, topic, None, quiet_s=0.5)}  # some were lost
    assert failed, "the kill never failed a delivery: nothing was tested"
    assert len(after) >= 200
    assert after <= stored  # acknowledged after the restart: on the topic
