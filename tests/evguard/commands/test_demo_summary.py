"""The demo's summary says what is still running: no links to UIs it has just stopped."""

from __future__ import annotations

from evguard.commands.common import console
from evguard.commands.platform import print_summary
from evguard.demo import DemoSummary

URLS = {"dashboard": "http://127.0.0.1:8050", "prefect": "http://127.0.0.1:4200",
        "mlflow": "http://127.0.0.1:5000"}


def printed(keep_running: bool) -> str:
    summary = DemoSummary(replayed=10, scored=10, urls=dict(URLS),
                          champion={"name": "evguard-anomaly", "version": "1", "threshold": 0.5},
                          timings={"total": 12.0})
    with console.capture() as captured:
        print_summary(summary, keep_running)
    return captured.get()


def test_a_finished_demo_names_no_url_of_a_stopped_ui_and_says_how_to_keep_them():
    out = printed(keep_running=False)
    assert not any(url in out for url in URLS.values()), out
    assert "stopped" in out and "--keep-running" in out
    assert "still running" not in out


def test_a_kept_demo_lists_each_ui_and_how_to_stop_it():
    out = printed(keep_running=True)
    assert all(url in out for url in URLS.values()), out
    assert "still running" in out and "evguard services down" in out
