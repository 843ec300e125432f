"""The dashboard in headless Chromium, fed by the real consumers through the real RabbitMQ."""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from evguard.services.process import wait_until
from evguard.services.stack import LocalStack
from monitoring.alerter import AlertConsumer
from monitoring.monitor import MonitoringConsumer
from pipelines.scores.store import MonitoringStore

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


@pytest.fixture
def worker_metrics(dash_settings):
    """The serving worker's own metrics endpoint, with some traffic counted."""
    from pipelines.metrics_http import MetricsServer
    from serving.prometheus import WorkerMetrics

    metrics = WorkerMetrics()
    metrics.consumed.inc(1250)
    metrics.scored.inc(1240)
    metrics.dead_lettered.labels("decode").inc(10)
    metrics.consumer_lag.labels("ev-station-data", "0").set(17)
    metrics.model_info.labels("ev-session-anomaly", "3", "f1").set(1)
    server = MetricsServer(metrics, lambda: (True, {}), "127.0.0.1",
                           dash_settings.metrics_port).start()
    yield metrics
    server.stop()


@pytest.fixture
def consumers(dash_settings):
    """The monitoring and alerting consumers running in threads, and the SMTP sink."""
    stack = LocalStack(dash_settings)
    stack.up(only=("smtp",))
    store = MonitoringStore(dash_settings.monitoring_db)
    stop = threading.Event()
    monitor = MonitoringConsumer(dash_settings, store, max_wait_s=0.2)
    alerter = AlertConsumer(dash_settings, store)
    threads = [threading.Thread(target=monitor.run, args=(stop,)),
               threading.Thread(target=alerter.run, args=(stop,))]
    for t in threads:
        t.start()
    yield store, monitor
    stop.set()
    for t in threads:
        t.join(10)
    store.close()
    stack.smtp_process().stop()


def _history(kit, now: float) -> list[dict]:
    rng = random.Random(3)
    out = []
    for i in range(45):
        station = f"CA-{100 + i % 8}"
        anomalous = i in (6, 19, 33)
        out.append(kit.score_message(
            station=station, site="0002" if i % 8 < 5 else "0001",
            score=0.66 + 0.1 * rng.random() if anomalous else rng.uniform(0.25, 0.5),
            features={"duration_h": rng.uniform(1, 9), "kwh": rng.uniform(3, 20),
                      "avg_kw": 38.0 if anomalous else rng.uniform(1.5, 6.6),
                      "idle_h": rng.uniform(0, 3), "start_hour": float(rng.randrange(24))},
            scored_ts=now - 1800 + i * 40))
    return out


@pytest.mark.browser
def test_dashboard_shows_new_anomalies_live_and_acknowledges_alerts(
        dash_settings, served, consumers, worker_metrics, kit, alias_champion):
    from playwright.sync_api import expect, sync_playwright

    store, monitor = consumers
    now = time.time()
    kit.publish(dash_settings, _history(kit, now))
    assert wait_until(lambda: store.count_scores() == 45, 15)
    rng = random.Random(5)
    monitor.evaluate_window.__self__.reference = lambda: {
        "avg_kw": [rng.uniform(1.5, 6.6) for _ in range(300)],
        "kwh": [rng.uniform(3, 20) for _ in range(300)],
        "score": [rng.uniform(0.25, 0.5) for _ in range(300)]}
    monitor.evaluate_window(now=now + 1)  # window of the last hour, 45 sessions

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1480, "height": 1100})
        page.goto(served)
        expect(page.locator("#feed-body tr[data-session]")).to_have_count(45, timeout=10_000)
        expect(page.locator("#sessions-total")).to_have_text("45")
        expect(page.locator("#worker-detail")).to_contain_text("lag 17")
        alias_champion()  # promoted while the page is open
        expect(page.locator("#champion-version")).to_have_text(
            f"{dash_settings.model_name} v1", timeout=20_000)
        expect(page.locator("#champion-metrics")).to_contain_text("pr_auc 0.81")
        expect(page.locator("#champion-threshold")).to_contain_text(
            "threshold 0.710 re-calibrated")
        expect(page.locator("#champion-threshold")).to_contain_text("(trained 0.620)")
        page.evaluate("window.__notReloaded = true")

        fresh = kit.score_message(station="CA-777", score=0.95,
                                  features={"avg_kw": 61.5, "idle_h": 0.2, "kwh": 30.0})
        kit.publish(dash_settings, [fresh])
        row = page.locator(f'#feed-body tr[data-session="{fresh["sessionID"]}"]')
        expect(row).to_have_class("anomaly fresh", timeout=10_000)
        expect(row).to_contain_text("avg_kw 61.5")
        expect(row).to_contain_text("typ 3.2")
        assert page.evaluate("window.__notReloaded") is True

        # a session that breaks a suite rule shows the rule first, marked as one
        rule = "done charging no earlier than 15 min before connecting"
        inverted = kit.score_message(station="CA-778", score=1.0, explanation=[
            {"feature": "charging_hours", "value": -3.0, "contribution": 0.6, "typical": None,
             "rule": rule},
            {"feature": "avg_kw", "value": 2.4, "contribution": 0.05, "typical": 3.2}])
        kit.publish(dash_settings, [inverted])
        chips = page.locator(f'#feed-body tr[data-session="{inverted["sessionID"]}"] .chip')
        expect(chips).to_have_count(2, timeout=10_000)
        expect(chips.nth(0)).to_have_class("chip rule")
        expect(chips.nth(0)).to_have_attribute("title", f"breaks the rule: {rule}")
        expect(chips.nth(0)).to_contain_text("charging_hours -3")
        expect(chips.nth(1)).to_contain_text("typ 3.2")

        alert_row = page.locator(f'#alerts-body tr[data-session="{fresh["sessionID"]}"]')
        expect(alert_row).to_contain_text("sent", timeout=10_000)
        expect(alert_row).to_contain_text("critical")
        alert_row.get_by_role("button", name="Acknowledge").click()
        expect(alert_row).to_contain_text("acknowledged", timeout=5_000)
        alert = store.get_alert(fresh["sessionID"], "3")
        assert alert["acknowledged_ts"] is not None and alert["state"] == "sent"
        expect(page.locator('#stations-body tr[data-station="CA-777"]')).to_contain_text("critical")
        expect(page.locator("#drift-body")).to_contain_text("avg_kw")
        assert page.locator("#chart rect").count() >= 10

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    emails = list(dash_settings.outbox_dir.glob("*.eml"))
    assert any(fresh["sessionID"] in e.read_text() for e in emails)
