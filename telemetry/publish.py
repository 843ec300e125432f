"""Publishing live alerts and connector status batches to RabbitMQ, with publisher confirms.

The processor publishes through evguard's one confirmed publisher
(`messaging.ConfirmedPublisher`, pika's `SelectConnection` on an I/O thread). Each
processor batch is a `Ticket`: it waits for its AMQP confirms and for its Kafka writes,
and the processor commits the batch's offsets only once the ticket is done. Lost
connections and nacks mean a re-publish (consumers de-duplicate live alerts on
`(alert_id, status)`; a snapshot only replaces an older one), so duplicates are possible,
loss is not. Connector snapshots go as one message per site and batch (contract §5c).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from messaging import ConfirmedPublisher, publisher_parameters
from messaging import Ticket as AmqpTicket
from pipelines.settings import Settings


@dataclass(eq=False)
class Ticket(AmqpTicket):
    """What one processor batch waits for before its offsets may be committed.

    `amqp_left` is counted down by the publisher's I/O thread only; `kafka_left` by the
    processor's delivery reports only (same thread as the processor).
    """

    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    kafka_left: int = 0
    error: str | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.amqp_left <= 0 and self.kafka_left <= 0


def live_publisher(settings: Settings, wait_s: float = 1.0) -> ConfirmedPublisher:
    """The processor's publisher to the results exchange, started (waits up to `wait_s`
    for a first connection; never fails while RabbitMQ is down)."""
    return ConfirmedPublisher(publisher_parameters(settings), settings.rabbitmq_exchange,
                              app_id="evguard-telemetry", name="telemetry-amqp").start(wait_s)
