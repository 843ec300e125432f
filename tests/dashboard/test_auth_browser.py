"""Who may acknowledge an alert, in headless Chromium: a page of another origin (a second
local HTTP server) cannot, the dashboard's own page can with its credentials."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboard.auth import hash_password
from evguard.services.process import free_port
from tests.dashboard.conftest import serve_dashboard, with_auth

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
TOKEN = "s3cret-dashboard-token"
PASSWORD = "correct horse"


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def other_origin(tmp_path):
    """A second web server on another port: the pages of a site the operator happens to
    open. Yields (directory it serves, its port)."""
    site = tmp_path / "elsewhere"
    site.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, server.server_address[1]
    server.shutdown()
    server.server_close()


def attack_pages(site, dashboard: str, alert_id: int) -> None:
    ack = f"{dashboard}/api/alerts/{alert_id}/ack"
    (site / "fetch.html").write_text(f"""<!doctype html><title>loading</title><script>
fetch("{ack}", {{method: "POST", mode: "no-cors", credentials: "include"}})
  .then(() => {{ document.title = "sent"; }}, () => {{ document.title = "failed"; }});
</script>""")
    (site / "form.html").write_text(f"""<!doctype html><title>form</title>
<form id="f" method="post" action="{ack}"></form>
<script>document.getElementById("f").submit();</script>""")


def try_to_ack_from_elsewhere(browser, site, port: int, dashboard: str, alert_id: int,
                              **context) -> None:
    """A script's fetch from 127.0.0.1:port (same site, other origin) and a form posted
    from localhost:port (another site), each sent with whatever the browser holds."""
    from playwright.sync_api import expect

    attack_pages(site, dashboard, alert_id)
    page = browser.new_context(**context).new_page()
    page.goto(f"http://127.0.0.1:{port}/fetch.html")
    expect(page).to_have_title("sent", timeout=10_000)  # the request went out
    with page.expect_navigation():
        page.goto(f"http://localhost:{port}/form.html")
    assert page.url.startswith(dashboard)  # the form was posted to the dashboard
    expect(page.locator("body")).to_contain_text("cross-origin request refused")
    page.context.close()


@pytest.mark.browser
def test_a_page_of_another_origin_cannot_acknowledge(dash_settings, alerts, chromium,
                                                     other_origin):
    """The default: no credentials, the dashboard on loopback, the operator's browser on
    the same machine. Before, any page they opened could clear alerts."""
    site, port = other_origin
    alert_id = alerts.open()
    with serve_dashboard(dash_settings) as url:
        try_to_ack_from_elsewhere(chromium, site, port, url, alert_id)
    assert not alerts.acknowledged(alert_id)


@pytest.mark.browser
def test_a_remembered_basic_login_does_not_let_another_origin_act(dash_settings, alerts,
                                                                  chromium, other_origin):
    site, port = other_origin
    alert_id = alerts.open()
    settings = with_auth(dash_settings, dashboard_basic_user="ops",
                         dashboard_basic_password_hash=hash_password(PASSWORD))
    with serve_dashboard(settings) as url:
        try_to_ack_from_elsewhere(chromium, site, port, url, alert_id,
                                  http_credentials={"username": "ops", "password": PASSWORD})
    assert not alerts.acknowledged(alert_id)


@pytest.mark.browser
def test_the_acknowledge_button_asks_for_the_token(dash_settings, alerts, chromium):
    from playwright.sync_api import expect

    first, second = alerts.open("CA-1"), alerts.open("CA-2")
    with serve_dashboard(with_auth(dash_settings, dashboard_token=TOKEN)) as url:
        page = chromium.new_page()
        answers = [None, TOKEN]  # dismissed once, then given
        prompts = []

        def answer(dialog):
            prompts.append(dialog.message)
            given = answers.pop(0)
            dialog.accept(given) if given else dialog.dismiss()

        page.on("dialog", answer)
        page.goto(url)
        button = page.locator(f'#alerts-body tr[data-alert-id="{first}"] button.ack')
        button.click()
        expect(page.locator("#alerts-hint")).to_contain_text("a valid dashboard token is needed")
        assert not alerts.acknowledged(first)
        button.click()
        expect(page.locator(f'#alerts-body tr[data-alert-id="{first}"]')).to_contain_text(
            "acknowledged", timeout=5_000)
        assert alerts.acknowledged(first)
        # the tab keeps the token: no second question
        page.locator(f'#alerts-body tr[data-alert-id="{second}"] button.ack').click()
        expect(page.locator(f'#alerts-body tr[data-alert-id="{second}"]')).to_contain_text(
            "acknowledged", timeout=5_000)
        assert len(prompts) == 2 and "EVGUARD_DASHBOARD_TOKEN" in prompts[0]
    assert alerts.acknowledged(second)


@pytest.mark.browser
def test_the_acknowledge_button_with_a_basic_login(dash_settings, alerts, chromium):
    from playwright.sync_api import expect

    alert_id = alerts.open()
    settings = with_auth(dash_settings, dashboard_basic_user="ops",
                         dashboard_basic_password_hash=hash_password(PASSWORD))
    row = f'#alerts-body tr[data-alert-id="{alert_id}"]'
    with serve_dashboard(settings) as url:
        # a wrong login (with none, headless Chromium waits for a login dialog forever)
        stranger = chromium.new_context(
            http_credentials={"username": "ops", "password": "wrong horse"}).new_page()
        stranger.goto(url)
        stranger.locator(f"{row} button.ack").click()
        expect(stranger.locator("#alerts-hint")).to_contain_text("not acknowledged: log in")
        assert not alerts.acknowledged(alert_id)

        operator = chromium.new_context(
            http_credentials={"username": "ops", "password": PASSWORD}).new_page()
        operator.goto(url)
        operator.locator(f"{row} button.ack").click()
        expect(operator.locator(row)).to_contain_text("acknowledged", timeout=5_000)
    assert alerts.acknowledged(alert_id)
