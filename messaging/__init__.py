"""RabbitMQ for every evguard process: one way to connect, one confirmed publisher.

    from messaging import ConfirmedPublisher, Ticket, connection_parameters, connect_blocking

`connection_parameters(settings)` turns `EVGUARD_RABBITMQ_URL` (`amqp://` or `amqps://`)
and the TLS settings into pika's parameters; `ConfirmedPublisher` publishes with
publisher confirms on its own I/O thread (the scoring worker, the telemetry processor);
`connect_blocking` is the consumers' connection.
"""

from messaging.connection import (
    BrokerUnavailable,
    connect_blocking,
    connection_parameters,
    describe_failure,
    publisher_parameters,
    tls_context,
)
from messaging.publisher import RECONNECT, ConfirmedPublisher, PublisherListener, Ticket

__all__ = ["RECONNECT", "BrokerUnavailable", "ConfirmedPublisher", "PublisherListener", "Ticket",
           "connect_blocking", "connection_parameters", "describe_failure",
           "publisher_parameters", "tls_context"]
