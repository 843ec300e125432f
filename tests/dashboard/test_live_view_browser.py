"""The live connector view in headless Chromium, fed through the real RabbitMQ by the real
consumers with the telemetry processor's own messages."""

from __future__ import annotations

import re
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from pipelines.contracts.connector_status import ConnectorStatusMessage, encode_connector_statuses
from pipelines.contracts.live_alert import LiveAlertMessage, encode_live_alert, live_alert_id
from pipelines.scores.store import MonitoringStore

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
OFFLINE_AFTER_S = 8.0


def status(charge_point: str, connector: int, state: str, age_s: float, *, power_w=None,
           energy_wh=None, transaction=None, error="", alerts=(), updated=None):
    now = time.time()
    return ConnectorStatusMessage(
        charge_point_id=charge_point, connector_id=connector, site_id="caltech", state=state,
        transaction_id=transaction, power_w=power_w, energy_wh=energy_wh, current_a=None,
        current_offered_a=32.0, temperature_c=None, error_code=error,
        last_sample_ts=now - age_s, updated_ts=now if updated is None else updated,
        open_alerts=tuple(alerts), processor="telemetry-1")


def opened(charge_point: str, kind: str, ago_s: float, evidence: str) -> LiveAlertMessage:
    first = time.time() - ago_s
    return LiveAlertMessage(
        alert_id=live_alert_id(charge_point, 1, kind, first), charge_point_id=charge_point,
        connector_id=1, transaction_id="77", site_id="caltech", kind=kind, status="open",
        first_sample_ts=first, first_received_ts=first + 0.2, at_ts=first + 10,
        evidence=evidence, detected_ts=first + 10.3, metrics={"seconds": 10.0},
        processor="telemetry-1")


def publish(kit, settings, messages) -> None:
    """Live alerts one by one; a list of snapshots as the processor sends a batch's."""
    for message in messages:
        if isinstance(message, LiveAlertMessage):
            kit.publish(settings, [encode_live_alert(message)], key=message.routing_key)
            continue
        for key, body in encode_connector_statuses(message):
            kit.publish(settings, [body], key=key)


@pytest.fixture
def pipeline(dash_settings):
    """The monitoring and alerting consumers (drained by the test) and the SMTP sink."""
    stack = LocalStack(dash_settings)
    stack.up(only=("smtp",))
    store = MonitoringStore(dash_settings.monitoring_db)
    monitor = MonitoringConsumer(dash_settings, store, max_wait_s=0.2)
    alerter = AlertConsumer(dash_settings, store)
    assert monitor.rabbit.channel.is_open and alerter.rabbit.channel.is_open  # live bindings
    yield store, monitor, alerter
    monitor.close()
    alerter.rabbit.close()
    store.close()
    stack.smtp_process().stop()


@pytest.fixture
def live_settings(dash_settings):
    return dash_settings.model_copy(update={"live_offline_after_s": OFFLINE_AFTER_S})


@pytest.fixture
def served_live(live_settings):
    """The dashboard with a short Offline threshold, so the test sees a connector go offline."""
    import uvicorn

    from dashboard.app import create_app
    from evguard.services.process import wait_until

    server = uvicorn.Server(uvicorn.Config(create_app(live_settings), host="127.0.0.1",
                                           port=live_settings.dashboard_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 15)
    yield f"http://127.0.0.1:{live_settings.dashboard_port}"
    server.should_exit = True
    thread.join(10)


def background(page, selector: str) -> str:
    return page.locator(selector).first.evaluate("e => getComputedStyle(e).backgroundColor")


def seconds_ago(text: str) -> float:
    found = re.fullmatch(r"([\d.]+) s ago", text)
    assert found, text
    return float(found.group(1))


@pytest.mark.browser
def test_live_view_shows_connectors_ages_offline_and_live_alerts_without_reload(
        live_settings, served_live, pipeline, kit):
    from playwright.sync_api import expect, sync_playwright

    store, monitor, alerter = pipeline
    no_current = opened("CP-A", "no_current", 30, "current 0.0 A for 10 s while Charging, "
                                                   "offered 32 A")
    frozen = opened("CP-A", "meter_frozen", 3600, "energy register stuck at 5.1 kWh for 60 s")
    faulted = opened("CP-F", "faulted", 60, "Faulted with GroundFailure")
    publish(kit, live_settings, [
        [status("CP-A", 1, "Charging", 1, power_w=7200.0, energy_wh=5321.0, transaction="77",
                alerts=("no_current",)),
         status("CP-A", 2, "Available", 7200),
         status("CP-B", 1, "Charging", 2, power_w=6600.0, energy_wh=800.0, transaction="78"),
         status("CP-F", 1, "Faulted", 60, error="GroundFailure", alerts=("faulted",))],
        frozen, replace(frozen, status="closed", at_ts=frozen.first_sample_ts + 300,
                        evidence="the register moves again"),
        no_current, faulted])
    stats = monitor.drain(idle_s=0.6)
    assert (stats.connector_messages, stats.connector_snapshots, stats.live_alerts) == (1, 4, 4)
    outcomes = alerter.run(threading.Event(), idle_exit_s=0.6)
    assert (outcomes["live_emailed"], outcomes["live_closed"]) == (3, 1)
    emailed = store.get_live_alert(no_current.alert_id)
    email_delay = emailed["emailed_ts"] - emailed["first_received_ts"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1480, "height": 1100})
        page.goto(served_live)
        page.locator("nav a#link-connectors").click()
        page.wait_for_url(f"{served_live}/live")
        rows = page.locator("#connector-rows tr[data-connector]")
        expect(rows).to_have_count(4, timeout=10_000)
        names = [r.get_attribute("data-connector") for r in rows.all()]
        assert names[:2] == ["CP-A/1", "CP-F/1"] and names[3] == "CP-A/2"  # alerting first

        charging = page.locator('tr[data-connector="CP-A/1"]')
        expect(charging).to_have_attribute("data-state", "Charging")
        expect(charging.locator(".power")).to_have_text("7.20")
        expect(charging.locator(".energy")).to_have_text("5.32")
        expect(charging.locator(".live-alert-chip")).to_contain_text(
            "current 0.0 A for 10 s while Charging, offered 32 A")
        colours = {state: background(page, f'tr[data-connector="{name}"] .conn-state')
                   for state, name in [("Charging", "CP-A/1"), ("Available", "CP-A/2"),
                                       ("Faulted", "CP-F/1")]}
        assert len(set(colours.values())) == 3, colours  # each state its own colour
        expect(page.locator('tr[data-connector="CP-F/1"] .state-cell')).to_contain_text(
            "GroundFailure")
        idle = page.locator('tr[data-connector="CP-A/2"]')
        expect(idle.locator(".age")).to_have_text("2.0 h ago")
        expect(idle).to_have_attribute("data-offline", "false")  # idle: old samples are normal
        expect(idle.locator(".offline-marker")).to_be_hidden()
        page.evaluate("window.__notReloaded = true")

        # the page ages the last sample by itself, and marks the silent charging connector
        first_age = seconds_ago(charging.locator(".age").inner_text())
        stale = page.locator('tr[data-connector="CP-B/1"]')
        expect(stale).to_have_attribute("data-offline", "true", timeout=15_000)
        expect(stale.locator(".offline-marker")).to_be_visible()
        assert seconds_ago(charging.locator(".age").inner_text()) > first_age
        # CP-A/1 (last sample 1 s before it was published) goes silent as well
        expect(charging).to_have_attribute("data-offline", "true", timeout=15_000)
        expect(page.locator("#offline-count")).to_have_text("2")

        alerts = page.locator("#live-alert-rows tr[data-alert-id]")
        expect(alerts).to_have_count(3)
        assert [a.get_attribute("data-status") for a in alerts.all()] == ["open", "open", "closed"]
        row = page.locator(f'#live-alert-rows tr[data-alert-id="{no_current.alert_id}"]')
        expect(row.locator(".delays")).to_contain_text("detected +10 s")
        shown = f"{email_delay:.0f} s" if email_delay >= 10 else f"{email_delay:.1f} s"
        expect(row.locator(".delays")).to_contain_text(f"emailed +{shown}")
        expect(page.locator(f'tr[data-alert-id="{frozen.alert_id}"] .evidence')).to_contain_text(
            "the register moves again")
        expect(page.locator("#open-alerts")).to_have_text("2")

        # the current is back: the processor closes the alert and sends a newer snapshot;
        # a late, older snapshot changes nothing
        late = status("CP-A", 1, "Charging", 40, power_w=1.0, updated=time.time() - 30)
        publish(kit, live_settings, [
            replace(no_current, status="closed", at_ts=no_current.first_sample_ts + 45,
                    evidence="current 29.8 A again"),
            [status("CP-A", 1, "Finishing", 0.5, power_w=0.0, energy_wh=5400.0,
                    transaction="77")],
            [late]])
        stats = monitor.drain(idle_s=0.6)
        assert stats.connector_stale == 1
        expect(charging).to_have_attribute("data-state", "Finishing", timeout=10_000)
        expect(charging.locator(".power")).to_have_text("0.00")
        expect(charging.locator(".alerts-cell")).to_have_text("none")
        expect(charging).to_have_attribute("data-offline", "false")  # a fresh sample
        expect(row).to_have_attribute("data-status", "closed")
        expect(page.locator("#open-alerts")).to_have_text("1")
        assert page.evaluate("window.__notReloaded") is True

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)
        browser.close()
    subjects = sorted(m.read_text().split("Subject: ")[1].split("\n")[0]
                      for m in live_settings.outbox_dir.glob("*.eml"))
    assert subjects == ["[evguard] LIVE FAULTED on CP-F/1 (site caltech)",
                        "[evguard] LIVE METER FROZEN on CP-A/1 (site caltech)",
                        "[evguard] LIVE NO CURRENT on CP-A/1 (site caltech)"]
