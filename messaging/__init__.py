"""The brokers for every evguard process: one way to connect to RabbitMQ, one confirmed
publisher, and Kafka's micro-batch read.

    from messaging import ConfirmedPublisher, Ticket, connection_parameters, connect_blocking

`connection_parameters(settings)` turns `EVGUARD_RABBITMQ_URL` (`amqp://` or `amqps://`)
and the TLS settings into pika's parameters; `ConfirmedPublisher` publishes with
publisher confirms on its own I/O thread (the scoring worker, the telemetry processor);
`connect_blocking` is the consumers' connection. `consume_micro_batch` is how the worker
and the telemetry processor read Kafka: the first message, then a short linger.
"""

from messaging.connection import (
    BrokerUnavailable,
    connect_blocking,
    connection_parameters,
    describe_failure,
    publisher_parameters,
    tls_context,
)
from messaging.micro_batch import consume_micro_batch
from messaging.publisher import RECONNECT, ConfirmedPublisher, PublisherListener, Ticket

__all__ = ["RECONNECT", "BrokerUnavailable", "ConfirmedPublisher", "PublisherListener", "Ticket",
           "connect_blocking", "connection_parameters", "consume_micro_batch", "describe_failure",
           "publisher_parameters", "tls_context"]
