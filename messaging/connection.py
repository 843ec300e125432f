"""Connection parameters of RabbitMQ, built from `Settings` in one place.

Every publisher and consumer of evguard connects through `connection_parameters`, so
`amqps://` works everywhere once it works here. The URL's own options (`heartbeat`,
`connection_attempts`, `socket_timeout`, `blocked_connection_timeout`, ...) win over the
defaults a caller passes; TLS takes its CA file and optional client certificate from the
settings, and verifies the server's hostname unless told not to.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlparse

import pika
from pika.exceptions import AMQPConnectionError

from pipelines.settings import Settings


class BrokerUnavailable(AMQPConnectionError):
    """RabbitMQ cannot be reached; the message says where and what to do."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "RabbitMQ is not reachable"


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The client's TLS context: the system's CAs or `rabbitmq_ca_file`, hostname checked,
    and the client certificate when one is configured (for brokers that verify peers)."""
    ca_file = settings.rabbitmq_ca_file or None
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = settings.rabbitmq_tls_verify_hostname
    if settings.rabbitmq_client_cert:
        context.load_cert_chain(settings.rabbitmq_client_cert,
                                settings.rabbitmq_client_key or None)
    elif settings.rabbitmq_client_key:
        raise ValueError("EVGUARD_RABBITMQ_CLIENT_KEY is set without "
                         "EVGUARD_RABBITMQ_CLIENT_CERT")
    return context


def connection_parameters(settings: Settings, **defaults: float) -> pika.URLParameters:
    """pika's parameters for `settings.rabbitmq_url`.

    Args:
        settings: the URL and the TLS files.
        **defaults: connection options (`heartbeat=30`, `socket_timeout=5`, ...) applied
            unless the URL sets them itself.

    Returns:
        Parameters with TLS set up when the URL is `amqps://`.
    """
    url = settings.rabbitmq_url
    params = pika.URLParameters(url)
    given = parse_qs(urlparse(url).query)
    for name, value in defaults.items():
        if name not in given:
            setattr(params, name, value)
    if params.ssl_options is not None and "ssl_options" not in given:
        params.ssl_options = pika.SSLOptions(tls_context(settings), server_hostname=params.host)
    return params


def publisher_parameters(settings: Settings) -> pika.URLParameters:
    """The parameters of a `ConfirmedPublisher`: one attempt per connect (its own backoff
    retries), a 30 s heartbeat, and a connection blocked for a minute is torn down."""
    return connection_parameters(settings, heartbeat=30, connection_attempts=1,
                                 socket_timeout=5, blocked_connection_timeout=60)


def _causes(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """`exc` and what pika wrapped inside it (workflow attempts, phase errors, args)."""
    found = [exc]
    if depth > 6:
        return found
    inner = [*getattr(exc, "exceptions", ()), getattr(exc, "exception", None),
             *exc.args, exc.__cause__]
    for candidate in inner:
        if isinstance(candidate, BaseException):
            found += _causes(candidate, depth + 1)
    return found


def describe_failure(params: pika.ConnectionParameters, exc: BaseException) -> str:
    """Why a connection failed, in words an operator can act on."""
    where = f"{params.host}:{params.port}"
    causes = _causes(exc)
    tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
    if tls is not None:
        return (f"TLS handshake with RabbitMQ at {where} failed ({tls}): check "
                "EVGUARD_RABBITMQ_CA_FILE (the CA that signed the broker's certificate), the "
                "host name in EVGUARD_RABBITMQ_URL and the client certificate settings")
    return f"RabbitMQ is not reachable at {where} ({causes[-1]!r})"


def connect_blocking(settings: Settings) -> pika.BlockingConnection:
    """A blocking connection (the consumers' kind), with the consumers' defaults.

    Raises:
        BrokerUnavailable: RabbitMQ cannot be reached or the TLS handshake failed.
    """
    params = connection_parameters(settings, heartbeat=60, blocked_connection_timeout=60,
                                   connection_attempts=1)
    try:
        return pika.BlockingConnection(params)
    except (AMQPConnectionError, ssl.SSLError) as exc:  # pika lets a failed handshake through
        raise BrokerUnavailable(
            f"{describe_failure(params, exc)}. Start it with `evguard services up`, or point "
            "EVGUARD_RABBITMQ_URL at a running broker.") from exc
