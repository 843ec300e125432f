"""A private RabbitMQ node with a TLS listener (session-scoped: a node takes seconds to
start), its certificates, and a proxy in front of the machine's RabbitMQ."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from evguard.services.process import free_port
from evguard.services.stack import RABBITMQ_SERVER, LocalStack
from pipelines.settings import Settings
from tests.messaging.certs import TlsFiles, make_tls_files
from tests.messaging.proxy import TcpProxy


@dataclass(frozen=True)
class TlsNode:
    settings: Settings  # amqps:// to the node, the right CA and a client certificate
    files: TlsFiles
    stack: LocalStack
    plain_url: str

    def rabbitmqctl(self, *args: str) -> None:
        proc = self.stack.rabbitmq_process()
        ctl = Path(RABBITMQ_SERVER).with_name("rabbitmqctl")
        subprocess.run([str(ctl), "-n", proc.env["RABBITMQ_NODENAME"], *args],
                       env={**os.environ, **proc.env}, check=True, capture_output=True,
                       timeout=60)


@pytest.fixture(scope="session")
def tls_rabbitmq(tmp_path_factory) -> Iterator[TlsNode]:
    """A RabbitMQ node of these tests alone: plain AMQP on one port, TLS on another."""
    root = tmp_path_factory.mktemp("tls-rabbitmq")
    files = make_tls_files(root / "certs")
    plain_port, tls_port = free_port(), free_port()
    plain_url = f"amqp://guest:guest@127.0.0.1:{plain_port}/%2F"
    stack = LocalStack(Settings(_env_file=None, state_dir=root / "state", rabbitmq_url=plain_url))
    config = stack.settings.state_path / "rabbitmq" / "rabbitmq.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"listeners.ssl.default = {tls_port}\n"
        f"ssl_options.cacertfile = {files.ca}\n"
        f"ssl_options.certfile = {files.server_cert}\n"
        f"ssl_options.keyfile = {files.server_key}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = false\n")
    stack.up(only=("rabbitmq",))
    try:
        settings = Settings(
            _env_file=None, state_dir=root / "client",
            rabbitmq_url=f"amqps://guest:guest@localhost:{tls_port}/%2F",
            rabbitmq_ca_file=str(files.ca), rabbitmq_client_cert=str(files.client_cert),
            rabbitmq_client_key=str(files.client_key))
        yield TlsNode(settings, files, stack, plain_url)
    finally:
        stack.down()


@pytest.fixture
def proxy(rabbit_settings: Settings) -> Iterator[TcpProxy]:
    """A proxy in front of the machine's RabbitMQ that the test may pause and cut."""
    proxy = TcpProxy(urlparse(rabbit_settings.rabbitmq_url).port or 5672)
    yield proxy
    proxy.close()
