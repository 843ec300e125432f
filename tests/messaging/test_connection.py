"""Connection parameters from the settings: the URL's options win over defaults, amqps://
brings a verifying TLS context with the configured CA and client certificate."""

from __future__ import annotations

import ssl

import pytest

from messaging import connection_parameters, publisher_parameters
from pipelines.settings import Settings
from tests.messaging.certs import make_tls_files


def settings(url: str, **tls) -> Settings:
    return Settings(_env_file=None, rabbitmq_url=url, **tls)


def test_the_urls_own_options_win_over_the_callers_defaults():
    params = connection_parameters(
        settings("amqp://u:p@rabbit.example:5679/prod?heartbeat=7&socket_timeout=2"),
        heartbeat=30, socket_timeout=5, blocked_connection_timeout=60)
    assert (params.host, params.port, params.virtual_host) == ("rabbit.example", 5679, "prod")
    assert (params.heartbeat, params.socket_timeout) == (7, 2)
    assert params.blocked_connection_timeout == 60  # not in the URL: the default
    assert params.ssl_options is None


def test_publisher_defaults_apply_to_a_bare_url():
    params = publisher_parameters(settings("amqp://guest:guest@127.0.0.1/%2F"))
    assert (params.heartbeat, params.connection_attempts, params.port) == (30, 1, 5672)


def test_amqps_verifies_the_server_with_the_configured_ca_and_client_certificate(tmp_path):
    files = make_tls_files(tmp_path)
    params = connection_parameters(settings(
        "amqps://guest:guest@rabbit.example/%2F", rabbitmq_ca_file=str(files.ca),
        rabbitmq_client_cert=str(files.client_cert), rabbitmq_client_key=str(files.client_key)))
    assert params.port == 5671
    context = params.ssl_options.context
    assert params.ssl_options.server_hostname == "rabbit.example"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # only the configured CA is trusted, not the system's
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "evguard test CA"),),)]


def test_hostname_verification_can_be_turned_off_but_not_the_ca_check(tmp_path):
    files = make_tls_files(tmp_path)
    params = connection_parameters(settings(
        "amqps://guest:guest@10.0.0.5/%2F", rabbitmq_ca_file=str(files.ca),
        rabbitmq_tls_verify_hostname=False))
    context = params.ssl_options.context
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_a_client_key_without_a_certificate_is_a_configuration_error(tmp_path):
    files = make_tls_files(tmp_path)
    with pytest.raises(ValueError, match="CLIENT_CERT"):
        connection_parameters(settings("amqps://h/%2F", rabbitmq_client_key=str(files.client_key)))
