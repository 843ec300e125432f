"""The station view in headless Chromium, fed through the real RabbitMQ by the real consumers."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from pipelines.contracts.station_alert import encode_station_alert
from pipelines.scores.store import MonitoringStore

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
ORDER = ["CA-SILENT", "CA-GONE", "CA-SLOW", "CA-MENDED", "CA-OK", "CA-NEW"]


def publish_events(kit, settings, events) -> None:
    for event in events:
        kit.publish(settings, [encode_station_alert(event)], key=event.routing_key)


@pytest.fixture
def pipeline(dash_settings):
    """The monitoring and alerting consumers (drained by the test) and the SMTP sink."""
    stack = LocalStack(dash_settings)
    stack.up(only=("smtp",))
    store = MonitoringStore(dash_settings.monitoring_db)
    monitor = MonitoringConsumer(dash_settings, store, max_wait_s=0.2)
    alerter = AlertConsumer(dash_settings, store)
    assert monitor.rabbit.channel.is_open and alerter.rabbit.channel.is_open  # station bindings
    yield store, monitor, alerter
    monitor.close()
    alerter.rabbit.close()
    store.close()
    stack.smtp_process().stop()


@pytest.mark.browser
def test_station_view_shows_health_sessions_power_and_open_alerts(
        dash_settings, served, pipeline, kit, fleet):
    from playwright.sync_api import expect, sync_playwright

    _store, monitor, alerter = pipeline
    kit.publish(dash_settings, fleet.scores)
    publish_events(kit, dash_settings, fleet.events)
    stats = monitor.drain(idle_s=0.6)
    assert (stats.stored, stats.station_alerts) == (len(fleet.scores), len(fleet.events))
    outcomes = alerter.run(threading.Event(), idle_exit_s=0.6)
    assert (outcomes["station_opened"], outcomes["station_recovered"]) == (5, 1)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1480, "height": 1000})
        page.goto(served)
        page.locator("nav a#link-stations").click()
        page.wait_for_url(f"{served}/stations")
        rows = page.locator("#station-rows tr[data-station]")
        expect(rows).to_have_count(6, timeout=10_000)
        assert [r.get_attribute("data-station") for r in rows.all()] == ORDER  # unhealthy first
        expect(page.locator("#stations-total")).to_have_text("6")
        expect(page.locator("#count-silent")).to_have_text("2")
        expect(page.locator("#count-degraded")).to_have_text("1")
        expect(page.locator("#count-ok")).to_have_text("3")

        silent = page.locator('tr[data-station="CA-SILENT"]')
        expect(silent).to_have_attribute("data-health", "silent")
        expect(silent.locator(".observed")).to_have_text("2 / 7.0")
        expect(silent.locator(".observed")).to_have_class("observed bad")
        expect(silent.locator(".last-session")).to_contain_text("d before")
        expect(silent.locator(".station-alert")).to_contain_text(
            "no session for 4.8 days; 4.8 expected")
        expect(silent.locator(".station-alert")).to_contain_text("emailed")
        gone = page.locator('tr[data-station="CA-GONE"]')
        assert [a.get_attribute("data-kind") for a in gone.locator(".station-alert").all()] == [
            "silent", "failing"]
        expect(gone.locator(".observed")).to_contain_text("too little history")
        slow = page.locator('tr[data-station="CA-SLOW"]')
        expect(slow).to_have_attribute("data-health", "degraded")
        expect(slow.locator("svg.spark")).to_have_attribute("data-points", "20")
        assert slow.locator("svg.spark polyline").count() == 1
        expect(slow.locator(".power")).to_contain_text("2.00 kW")
        expect(page.locator('tr[data-station="CA-MENDED"]')).to_have_attribute("data-health", "ok")
        expect(page.locator('tr[data-station="CA-MENDED"] .alerts-cell')).to_have_text("none")
        page.evaluate("window.__notReloaded = true")

        # the silent station comes back: the worker closes its alert, the page follows
        publish_events(kit, dash_settings, [fleet.closing("CA-SILENT", "silent")])
        assert monitor.drain(idle_s=0.6).station_alerts == len(fleet.events) + 1
        expect(silent).to_have_attribute("data-health", "ok", timeout=15_000)
        expect(page.locator("#count-silent")).to_have_text("1")
        assert page.evaluate("window.__notReloaded") is True

        page.locator('th[data-sort="station"]').click()
        assert [r.get_attribute("data-station") for r in rows.all()] == sorted(ORDER)
        page.locator('th[data-sort="station"]').click()
        assert [r.get_attribute("data-station") for r in rows.all()] == sorted(ORDER)[::-1]
        page.locator('th[data-sort="health"]').click()
        assert [r.get_attribute("data-station") for r in rows.all()] == [
            "CA-GONE", "CA-SLOW", "CA-SILENT", "CA-MENDED", "CA-OK", "CA-NEW"]  # 2 of 7 first

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "stations.png"), full_page=True)
        browser.close()
    recovered = [m for m in dash_settings.outbox_dir.glob("*.eml") if "RECOVERED" in m.read_text()]
    assert len(recovered) == 1 and "CA-MENDED" in recovered[0].read_text()
