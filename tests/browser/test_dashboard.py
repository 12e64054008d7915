"""The dashboard in a real headless Chromium against `actmax serve` and `actmax rig sim` (real processes).

Needs Debian's Chromium and the Python Playwright package: ``apt-get install -y chromium`` and
``pip install playwright`` (the ``test`` extra has it; no browser download: the system Chromium is used).
The session page's screenshot goes to ``$ACTMAX_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from server.launch import ServerProcess, server_with_sim_rig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or sync_playwright is None,
                       reason="needs a browser: `apt-get install -y chromium` and `pip install playwright` "
                              "(.ci/run installs Chromium when missing)"),
]

ARTIFACTS = Path(os.environ.get("ACTMAX_TEST_ARTIFACTS", "test-artifacts"))
RIG = "browser-rig"


def session_config() -> dict:
    return {
        "name": "browser", "rig": RIG, "references": {"source": "skimage", "count": 3},
        "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma",
                     "optimizer_params": {"population": 12}, "objective": {"channels": [0]},
                     "seed": 3, "n_generations": 500}],
    }


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A server and a sim rig evolving one thread, with the REST client."""
    tmp = tmp_path_factory.mktemp("browser")
    server = ServerProcess(tmp / "data", secrets.token_urlsafe(16))
    with server_with_sim_rig(server, RIG, ["blocks.6:67"], tmp / "rig.log") as (api, rig):
        session = api.post("/sessions", session_config())
        yield server, api, session


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, running):
    """A fresh page that records console errors and every request leaving 127.0.0.1."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors, page.outside = [], []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))

    def check(request):
        url = urlparse(request.url)
        if url.scheme not in ("data", "blob") and url.hostname != "127.0.0.1":
            page.outside.append(request.url)

    page.on("request", check)
    yield page
    page.close()


def login(page, server, token):
    page.goto(server.url + "/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def completed(api, thread_id: int) -> int:
    return api.get(f"/threads/{thread_id}/curve", max_points=2)["total"]


def test_wrong_token_is_refused(page, running):
    server, _, _ = running
    login(page, server, "not-the-token")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "refused" in page.inner_text("#login-error")
    assert httpx.get(server.url + "/live", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert page.outside == []


def test_session_page_is_live_and_controls_the_thread(page, running):
    server, api, session = running
    thread_id = session["threads"][0]["id"]
    login(page, server, server.token)
    page.click(f"#sessions a[href='#/session/{session['id']}']")
    page.wait_for_selector(f"#thread-{thread_id} .curve svg")
    page.wait_for_selector("#live-state.on")

    # Each generation the REST API reports reaches the curve through the stream alone (the page does
    # not poll the curve), within 2 s of REST showing it.
    for _ in range(3):
        before = completed(api, thread_id)
        while (now := completed(api, thread_id)) == before:
            time.sleep(0.05)
        page.wait_for_function(f"document.querySelector('#thread-{thread_id} .curve svg').dataset.points >= {now}",
                               timeout=2000)
    shown = int(page.get_attribute(f"#thread-{thread_id} .curve svg", "data-points"))
    assert shown <= completed(api, thread_id)

    page.wait_for_selector(f"#thread-{thread_id} .strip img[src^='blob:']")
    page.wait_for_selector(f"#thread-{thread_id} .montage img[src^='blob:']")
    page.wait_for_selector("#rig .status.running")  # the rig panel says connected
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-session.png"), full_page=True)

    page.click(f"#thread-{thread_id} button[data-action=pause]")
    page.wait_for_selector(f"#thread-{thread_id} button[data-action=resume]")
    assert api.get(f"/threads/{thread_id}")["status"] == "paused"
    page.click(f"#thread-{thread_id} button[data-action=resume]")
    page.wait_for_selector(f"#thread-{thread_id} button[data-action=pause]")
    assert api.get(f"/threads/{thread_id}")["status"] == "running"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#stop-session")
    page.wait_for_selector("#stop-session:disabled")
    assert api.get(f"/sessions/{session['id']}")["status"] == "stopped"
    assert api.get(f"/threads/{thread_id}")["status"] == "stopped"
    assert page.errors == []
    assert page.outside == []


@pytest.mark.parametrize("path, ready", [("/docs", ".swagger-ui .info"), ("/redoc", "redoc h1, [role=search]")])
def test_api_docs_work_offline(page, running, path, ready):
    server, _, _ = running
    page.goto(server.url + path)
    page.wait_for_selector(ready)
    assert page.errors == []
    assert page.outside == []
