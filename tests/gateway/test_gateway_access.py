"""Who gets in, and the limits: subprotocols, HTTP Basic against the registry's hashes,
unknown chargers, TLS (security profile 2), frame size, message rate, a replaced
connection. Real WebSockets against a standalone gateway."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.registry import add_charger
from tests.gateway.gateway_kit import basic_auth, gateway_settings, new_topic, running_gateway
from tests.support.brokers import delete_topics

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def access_gateway(kafka_settings, tmp_path_factory):
    """One gateway for the module: CP-PW (password), CP-OPEN (no password); unknown refused."""
    topic = new_topic(kafka_settings, "test-gateway-access")
    settings = gateway_settings(kafka_settings, tmp_path_factory.mktemp("access"),
                                topic_telemetry=topic, ocpp_max_frame_bytes=4096,
                                ocpp_max_messages_per_s=5.0)
    add_charger(settings.ocpp_charge_points, "CP-PW", "caltech", PASSWORD)
    add_charger(settings.ocpp_charge_points, "CP-OPEN", "jpl", None)
    with running_gateway(settings) as gateway:
        yield gateway
    delete_topics(kafka_settings, [topic])


async def status_of(url: str, subprotocols=("ocpp1.6",), headers=None) -> int:
    """101 when the handshake succeeds, else the HTTP status the gateway refused with."""
    try:
        async with connect(url, subprotocols=list(subprotocols) or None,
                           additional_headers=headers or {}, open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


@pytest.mark.parametrize("path, subprotocols, headers, expected, reason", [
    ("CP-PW", ["ocpp1.6"], basic_auth("CP-PW", PASSWORD), 101, None),
    ("CP-PW", ["ocpp2.0.1"], basic_auth("CP-PW", PASSWORD), 101, None),
    ("CP-PW", ["ocpp1.6"], basic_auth("CP-PW", "wrong"), 401, "bad_credentials"),
    ("CP-PW", ["ocpp1.6"], None, 401, "bad_credentials"),
    ("CP-PW", ["ocpp1.6"], basic_auth("CP-OPEN", PASSWORD), 401, "bad_credentials"),
    ("CP-OPEN", ["ocpp1.6"], None, 101, None),
    ("CP-STRANGER", ["ocpp1.6"], None, 404, "unknown"),
    ("CP-STRANGER", ["ocpp1.6"], basic_auth("CP-STRANGER", PASSWORD), 404, "unknown"),
    ("CP-OPEN", [], None, 400, "no_subprotocol"),
    ("CP-OPEN", ["ocpp1.5"], None, 400, "no_subprotocol"),
    ("", ["ocpp1.6"], None, 404, "bad_path"),
])
def test_who_gets_in(access_gateway, path, subprotocols, headers, expected, reason):
    before = access_gateway.metric("evguard_gateway_refused_total", reason=reason or "-")
    status = asyncio.run(status_of(f"{access_gateway.url}/{path}", subprotocols, headers))
    assert status == expected
    if reason is not None:
        after = access_gateway.metric("evguard_gateway_refused_total", reason=reason)
        assert after == before + 1


def test_an_oversized_frame_closes_the_connection_and_others_are_unaffected(access_gateway):
    async def scenario():
        async with connect(f"{access_gateway.url}/CP-OPEN", subprotocols=["ocpp1.6"]) as big, \
                connect(f"{access_gateway.url}/CP-PW", subprotocols=["ocpp1.6"],
                        additional_headers=basic_auth("CP-PW", PASSWORD)) as other:
            await big.send(orjson.dumps([2, "big", "DataTransfer",
                                         {"vendorId": "x", "data": "x" * 5000}]).decode())
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(big.recv(), 10)
            await other.send('[2,"hb","Heartbeat",{}]')
            return closed.value.rcvd.code, orjson.loads(await asyncio.wait_for(other.recv(), 10))
    code, answer = asyncio.run(scenario())
    assert code == 1009  # message too big
    assert answer[:2] == [3, "hb"]


def test_over_the_rate_limit_calls_get_generic_error_and_the_connection_stays(access_gateway):
    async def scenario():
        async with connect(f"{access_gateway.url}/CP-OPEN", subprotocols=["ocpp1.6"]) as ws:
            answers = []
            for i in range(25):  # burst of 2 x 5/s allowed, then refused
                await ws.send(f'[2,"r{i}","Heartbeat",{{}}]')
                answers.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send("garbage while over the limit")  # not even read: no answer
            await ws.send('[2,"next","Heartbeat",{}]')
            answers.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            await asyncio.sleep(0.5)
            await ws.send('[2,"later","Heartbeat",{}]')
            return answers, orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    unparseable = access_gateway.metric("evguard_gateway_unparseable_frames_total")
    answers, later = asyncio.run(scenario())
    assert answers[-1][:3] == [4, "next", "GenericError"]
    assert access_gateway.metric("evguard_gateway_unparseable_frames_total") == unparseable
    refused = [a for a in answers if a[0] == 4]
    assert refused and all(a[2] == "GenericError" for a in refused)
    assert sum(a[0] == 3 for a in answers) >= 10
    assert later[:2] == [3, "later"]


def test_a_second_connection_of_a_charger_replaces_the_first(access_gateway):
    async def scenario():
        url = f"{access_gateway.url}/CP-OPEN"
        async with connect(url, subprotocols=["ocpp1.6"]) as first, \
                connect(url, subprotocols=["ocpp2.0.1"]) as second:  # opened after the first
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(first.recv(), 10)
            await second.send('[2,"hb","Heartbeat",{}]')
            return closed.value.rcvd.reason, orjson.loads(await second.recv())
    reason, answer = asyncio.run(scenario())
    assert "replaced" in reason and answer[:2] == [3, "hb"]


def test_security_profile_2_tls_with_basic_auth(kafka_settings, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    topic = new_topic(kafka_settings, "test-gateway-tls")
    settings = gateway_settings(kafka_settings, tmp_path / "gw", topic_telemetry=topic,
                                ocpp_tls_cert=cert, ocpp_tls_key=key)
    cp_id = f"CP-{uuid.uuid4().hex[:6]}"
    add_charger(settings.ocpp_charge_points, cp_id, "caltech", PASSWORD)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def scenario(url: str):
        async with connect(f"{url}/{cp_id}", subprotocols=["ocpp2.0.1"], ssl=client_tls,
                           additional_headers=basic_auth(cp_id, PASSWORD)) as ws:
            await ws.send('[2,"hb","Heartbeat",{}]')
            answer = orjson.loads(await ws.recv())
        try:
            plain = await status_of(f"{url.replace('wss', 'ws')}/{cp_id}")
        except InvalidHandshake as exc:  # the TLS port does not speak plain HTTP
            plain = type(exc).__name__
        return answer, plain

    try:
        with running_gateway(settings) as gateway:
            answer, plain = asyncio.run(scenario(gateway.url.replace("ws://", "wss://")))
    finally:
        delete_topics(kafka_settings, [topic])
    assert answer[:2] == [3, "hb"]
    assert plain != 101  # no plain-text handshake on a TLS port
