"""Switching views while the view left is still loading, in Debian's headless Chromium against a real `actmax serve`
and `actmax rig sim` (real processes; the fixtures and helpers of test_dashboard.py): the page shows the last view
asked for, nothing of a view left reaches it (late responses, its live stream, its polls), and one live stream is
open, the shown view's.

The idle session's requests are held back at the network (Playwright's routes) and let through once another view
is shown: the late answers a slow server gives.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Error as PlaywrightError

from server.launch import ServerProcess, server_with_sim_rig
from tests.browser import test_dashboard
from tests.browser.test_dashboard import login, session_config, thread_config, uncaught

pytestmark = test_dashboard.pytestmark
browser, page = test_dashboard.browser, test_dashboard.page  # its fixtures: Chromium, and a page that records errors

RIG = "nav-rig"
IDLE_RIG = "rig-nobody-runs"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A server and a sim rig: session "busy" evolves on the rig, session "idle" waits for a rig nobody runs. The
    server, the REST client and the two sessions."""
    tmp = tmp_path_factory.mktemp("navigation")
    server = ServerProcess(tmp / "data", secrets.token_urlsafe(16))
    with server_with_sim_rig(server, RIG, ["blocks.6:67"], tmp / "rig.log") as (api, _):
        busy = api.post("/sessions", {**session_config("busy", [thread_config("evolving", {"channels": [0]}, 500, 4)]),
                                      "rig": RIG})
        idle = api.post("/sessions", {**session_config("idle", [thread_config("waiting", {"channels": [0]}, 3, 4)]),
                                      "rig": IDLE_RIG})
        yield server, api, busy, idle


class Network:
    """What the page asks of the server (path and query, in order) and its live streams open now."""

    def __init__(self, page):
        self.asked: list[str] = []
        self._streams: list = []
        page.on("request", self._request)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)  # (an aborted stream)

    def _request(self, request) -> None:
        url = urlparse(request.url)
        self.asked.append(f"{url.path}?{url.query}")
        if url.path == "/live":
            self._streams.append(request)

    def _ended(self, request) -> None:
        if request in self._streams:
            self._streams.remove(request)

    def streams(self) -> list[str]:
        """The open live streams' queries (``session_id=3``)."""
        return [urlparse(request.url).query for request in self._streams]


def hold(page, pattern: str) -> list:
    """Hold back the page's requests matching ``pattern``: the held routes, to let through with `release`."""
    held = []
    page.route(pattern, lambda route: held.append(route))
    return held


def release(page, held: list) -> None:
    """Let the held requests through (late answers) and hold back no more."""
    page.unroute_all()
    for route in held:
        try:
            route.continue_()
        except PlaywrightError:  # the page aborted it: nothing to answer
            pass


def settle(page, network: Network, since: int) -> list[str]:
    """What the page asked from ``network.asked[since]`` on, once the late answers are in and a view left would have
    polled its rig (every 2 s) were it still running, and the shown page's rig panel has polled."""
    page.wait_for_timeout(2500)
    while not any(path.startswith(f"/rigs/{RIG}?") for path in network.asked[since:]):
        page.wait_for_timeout(50)
    return network.asked[since:]


def about(path: str, session: dict) -> bool:
    """Whether the page asked ``path`` for ``session``'s view."""
    return (path.startswith(f"/sessions/{session['id']}?") or path.startswith(f"/sessions/{session['id']}/")
            or path == f"/live?session_id={session['id']}" or path.startswith(f"/rigs/{session['rig']}?"))


def shows_only(page, api, shown: dict, left: dict) -> None:
    """The page is ``shown``'s session page, with nothing of ``left``'s."""
    assert page.text_content("#session-title").startswith(shown["name"])
    assert page.is_visible(f"#thread-{shown['threads'][0]['id']}")
    assert not page.query_selector(f"#thread-{left['threads'][0]['id']}")
    assert page.text_content("#rig-title").split()[:2] == ["Rig", shown["rig"]]
    feed = {int(i) for i in page.locator("#feed div").evaluate_all("(rows) => rows.map((row) => row.dataset.id)")}
    assert feed, "the shown session's events"
    assert not feed & {event["id"] for event in api.get(f"/sessions/{left['id']}/events")["items"]}


def shows_only_the_busy_session_once_released(page, network, held, api, busy, idle) -> None:
    """Once the busy session's page is shown, let the idle session's held answers through: the one stream open is
    the busy session's, nothing more is asked about the idle one, the page shows the busy one alone, no error."""
    page.wait_for_selector(f"#thread-{busy['threads'][0]['id']} .curve svg")
    page.wait_for_selector("#live-state.on")
    since = len(network.asked)
    release(page, held)
    asked = settle(page, network, since)
    assert network.streams() == [f"session_id={busy['id']}"]
    assert [path for path in asked if about(path, idle)] == []
    shows_only(page, api, busy, idle)
    assert uncaught(page) == []


def test_a_view_left_while_it_loads_shows_nothing_and_keeps_no_stream_or_poll(page, running):
    """The idle session's page is left while it waits for its events: they come once the busy session's page is
    shown, and are not drawn into it; the idle page neither starts its stream nor polls its rig."""
    server, api, busy, idle = running
    network = Network(page)
    held = hold(page, f"**/sessions/{idle['id']}/events*")
    login(page, server, server.token)
    page.wait_for_selector("#live-state.on")
    page.evaluate("(id) => { location.hash = `#/session/${id}`; }", idle["id"])
    page.wait_for_selector("#session-title:has-text('idle')")
    while not held:
        page.wait_for_timeout(20)
    page.evaluate("(id) => { location.hash = `#/session/${id}`; }", busy["id"])
    shows_only_the_busy_session_once_released(page, network, held, api, busy, idle)


def test_quick_switches_show_the_last_view_asked_for_with_one_stream(page, running):
    """Three rounds of idle session, sessions list, busy session, each left at once; the idle session's page waits
    for its session until the busy one is shown."""
    server, api, busy, idle = running
    network = Network(page)
    held = hold(page, f"**/sessions/{idle['id']}")
    login(page, server, server.token)
    page.wait_for_selector("#live-state.on")
    for _ in range(3):
        for view in (f"#/session/{idle['id']}", "#/", f"#/session/{busy['id']}"):
            page.evaluate("(view) => { location.hash = view; }", view)
    shows_only_the_busy_session_once_released(page, network, held, api, busy, idle)
