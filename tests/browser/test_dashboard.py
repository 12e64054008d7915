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
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo
from urllib.parse import urlparse

import httpx
import pytest

from server.launch import ServerProcess, server_with_sim_rig, stop
from server.store import records
from server.store.db import make_db_engine, make_sessionmaker
from server.store.models import ThreadStatus

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


def thread_config(name: str, objective: dict, n_generations: int, population: int = 12) -> dict:
    return {"name": name, "generator": "dcgan-faces", "optimizer": "cma", "optimizer_params": {"population": population},
            "objective": objective, "seed": 3, "n_generations": n_generations}


def session_config(name: str = "browser", threads: list[dict] | None = None) -> dict:
    """By default a long evolution on channel 0 and a short one on its z-score, which ends with the page open."""
    threads = threads or [thread_config("cma", {"channels": [0]}, 500),
                          thread_config("z", {"expression": "zscore(rate(0))"}, 3, population=6)]
    return {"name": name, "rig": RIG, "references": {"source": "skimage", "count": 3}, "threads": threads}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A server and a sim rig (channel 0 labelled e1) evolving ``session_config()``: the server, the REST
    client, the session and the rig's process."""
    tmp = tmp_path_factory.mktemp("browser")
    server = ServerProcess(tmp / "data", secrets.token_urlsafe(16), env={"ACTMAX_HEARTBEAT_S": "0.5"})  # a rig lost soon
    with server_with_sim_rig(server, RIG, ["blocks.6:67"], tmp / "rig.log", extra=["--labels", "e1"]) as (api, rig):
        session = api.post("/sessions", session_config())
        yield server, api, session, rig


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


def uncaught(page) -> list[str]:
    """The page's errors but the browser's own line for each request the test made fail."""
    return [e for e in page.errors if not e.startswith("Failed to load resource: net::")]


def wait_until(page, predicate: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` (a JS function's source) until it returns true. Not ``page.wait_for_function``:
    that evaluates with ``eval``, which the dashboard's content security policy forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {predicate}"
        time.sleep(0.02)


def completed(api, thread_id: int) -> int:
    return api.get(f"/threads/{thread_id}/curve", max_points=2)["total"]


def test_wrong_token_is_refused(page, running):
    server, *_ = running
    login(page, server, "not-the-token")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "refused" in page.inner_text("#login-error")
    assert httpx.get(server.url + "/live", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert page.outside == []


def test_a_pasted_token_is_trimmed_and_one_no_header_can_carry_is_refused_at_the_form(page, running):
    """A token is visible ASCII (the server checks its own at its start): spaces around a pasted one are dropped, and
    one with other characters is refused at the form, not sent (fetch cannot send "€" in a header: the page said that
    the server cannot be reached)."""
    server, *_ = running
    asked = []
    page.on("request", lambda request: asked.append(urlparse(request.url).path))
    login(page, server, f"{server.token[:4]}€{server.token[4:]}")
    page.wait_for_selector("#login-error:not([hidden])")
    assert page.inner_text("#login-error") == (
        "Not a token: a token holds only ASCII letters, digits and punctuation (no spaces within, no characters such as "
        "é or €). Check what was pasted.")
    assert page.evaluate("document.activeElement.id") == "token"
    assert page.evaluate("sessionStorage.getItem('actmax-token')") is None
    assert "/sessions" not in asked
    login(page, server, f"  {server.token}\t")
    page.wait_for_selector("#sessions, #main .card h1:has-text('Sessions')")
    page.wait_for_selector("#live-state.on")
    assert page.evaluate("sessionStorage.getItem('actmax-token')") == server.token
    assert uncaught(page) == []


def test_a_script_smuggled_into_the_page_does_not_run(page, running):
    """The dashboard's content security policy: markup injected into the page (as a stored name or
    message would be, were it not escaped) cannot run its inline handlers. The bait goes into the body,
    not ``#main``: a live event can re-render ``#main`` and take the bait with it."""
    server, *_ = running
    login(page, server, server.token)
    page.wait_for_selector("#live-state.on")
    page.evaluate("""() => {
        window.violations = 0;
        document.addEventListener('securitypolicyviolation', () => { window.violations += 1; });
        document.body.insertAdjacentHTML('beforeend',
            '<img id="bait" src="/ui/no-such-image.png" onerror="window.ran = 1">');
    }""")
    wait_until(page, "() => window.violations > 0 && document.querySelector('#bait').complete")
    assert page.evaluate("window.ran") is None  # (named so: window.bait is the element)
    assert page.outside == []


def test_session_page_is_live_and_controls_the_thread(page, running):
    server, api, session, _ = running
    thread_id, z_id = (t["id"] for t in session["threads"])
    login(page, server, server.token)

    # The sessions list follows the live stream: a session created elsewhere appears. (It waits, paused,
    # until its batches are needed below.)
    page.wait_for_selector("#live-state.on")
    other = api.post("/sessions", session_config("other", [thread_config("other", {"channels": [0]}, 3, 6)]))
    other_thread = other["threads"][0]["id"]
    api.post(f"/threads/{other_thread}/pause")
    page.wait_for_selector(f"#sessions a[href='#/session/{other['id']}']")

    page.click(f"#sessions a[href='#/session/{session['id']}']")
    page.wait_for_selector(f"#thread-{thread_id} .curve svg")
    page.wait_for_selector("#live-state.on")
    # The score axis says what the thread's objective makes: spikes/s of channels, a z-score has no unit.
    assert page.text_content(f"#thread-{thread_id} .curve .y-label") == "score (spikes/s)"
    page.wait_for_selector(f"#thread-{z_id} .curve svg")
    assert page.text_content(f"#thread-{z_id} .curve .y-label") == "score = zscore(rate(0))"
    # Channels are shown with the labels the rig sent.
    page.wait_for_selector(f"#thread-{thread_id} .info:has-text('channels 0 (e1)')")
    page.wait_for_selector("#rig dd:has-text('ch 0 (e1): cma')")  # (z, once ended, is not listed; other is)
    # What the simulated rig said of itself in HELLO, a line per field given (its units: --labels renamed them).
    page.wait_for_selector("#rig .setup:has-text('rig_program: actmax rig sim')")
    setup = page.inner_text("#rig .setup").splitlines()
    assert "seed: 0" in setup and 'units: ["blocks.6:67"]' in setup and not any(s.startswith("rf:") for s in setup)
    assert '"eps":0' in next(line for line in setup if line.startswith("noise: "))
    assert page.evaluate("() => { const rig = document.querySelector('#rig'); return rig.scrollWidth - rig.clientWidth; }"
                         ) <= 0  # its long JSON lines wrap inside the panel
    # The z thread ends with the page open: its montage shows its last generation.
    page.wait_for_selector(f"#thread-{z_id} .status.finished")
    page.wait_for_selector(f"#thread-{z_id} .montage-title:has-text('Latest generation (2)')")

    # Each generation the REST API reports reaches the curve through the stream alone (the page does
    # not poll the curve), within 2 s of REST showing it.
    for _ in range(3):
        before = completed(api, thread_id)
        while (now := completed(api, thread_id)) == before:
            time.sleep(0.05)
        wait_until(page, f"() => document.querySelector('#thread-{thread_id} .curve svg').dataset.points >= {now}",
                   timeout=2)
    shown = int(page.get_attribute(f"#thread-{thread_id} .curve svg", "data-points"))
    assert shown <= completed(api, thread_id)

    page.wait_for_selector(f"#thread-{thread_id} .strip img[src^='blob:']")
    page.wait_for_selector(f"#thread-{thread_id} .montage img[src^='blob:']")
    page.wait_for_selector("#rig .status.running")  # the rig panel says connected
    # The strip wraps: nothing scrolled away. Measured in one go: a generation arriving re-renders the strip.
    past_the_edge = page.evaluate(f"""() => {{
        const strip = document.querySelector('#thread-{thread_id} .strip');
        const figures = strip.querySelectorAll('figure');
        return figures[figures.length - 1].getBoundingClientRect().right - strip.getBoundingClientRect().right;
    }}""")
    assert past_the_edge <= 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-session.png"), full_page=True)

    page.click(f"#thread-{thread_id} button[data-action=pause]")
    page.wait_for_selector(f"#thread-{thread_id} button[data-action=resume]")
    assert api.get(f"/threads/{thread_id}")["status"] == "paused"
    paused = [e["message"] for e in api.get(f"/sessions/{session['id']}/events", kind="thread.paused")["items"]]
    assert paused == [f"thread {thread_id} 'cma' paused via the dashboard"]  # the record says which program did it
    # The rig also serves the other session: its batches are marked with it.
    api.post(f"/threads/{other_thread}/resume")
    page.wait_for_selector(f"#rig td:has-text('other (session {other['id']})')")

    # Stopping a thread is final: the page asks, and a "no" leaves it as it was.
    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.click(f"#thread-{thread_id} button[data-action=stop]")
    assert dialogs == ["Stop thread 'cma'? This is final."]
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


def test_times_name_the_browsers_zone(browser, running):
    """A viewer in Tokyo sees the session's creation and each event in Tokyo time, the zone named."""
    server, api, session, _ = running
    context = browser.new_context(timezone_id="Asia/Tokyo", locale="en-US")
    page = context.new_page()
    try:
        login(page, server, server.token)
        created = page.text_content(f"#sessions tr:has(a[href='#/session/{session['id']}']) td:last-child")
        tokyo = datetime.fromisoformat(session["created_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
        assert created.endswith(" GMT+9") and f"{tokyo.hour % 12 or 12}:{tokyo.minute:02d}:" in created
        page.click(f"#sessions a[href='#/session/{session['id']}']")
        page.wait_for_selector("#feed time")
        times = page.locator("#feed time").all_text_contents()
        assert times and all(t.endswith(" GMT+9") for t in times)
        assert page.get_attribute("#feed time", "title").endswith(" GMT+9")  # with its date
    finally:
        context.close()


def test_score_ticks_share_their_precision(page, running):
    server, *_ = running
    page.goto(server.url + "/")
    ticks = page.evaluate("""() => {
        const svg = new DOMParser().parseFromString(Charts.scoreCurve([{ generation: 0, mean: -0.4, max: 1.4 }]), "text/html");
        return [...svg.querySelectorAll("text[text-anchor=end]")].map((t) => t.textContent);
    }""")
    assert ticks == ["-0.5", "0.0", "0.5", "1.0", "1.5"]


def test_many_channels_are_shown_as_ranges_and_a_few_with_their_labels(page, running):
    """A 384-channel probe: the thread card's channels and the rig panel's scored lines stay one line each."""
    server, *_ = running
    page.goto(server.url + "/")
    shown = page.evaluate("""() => {
        const all = [...Array(384).keys()], labels = Object.fromEntries(all.map((c) => [c, `np-${c}`]));
        const scored = Object.fromEntries(all.map((c) => [c, c < 100 ? ["s0", "s1"] : ["s0"]]));
        return [channelList([0, 2], labels), channelList(all, labels), channelList(all.filter((c) => c % 2), {}),
                scoredLines({0: ["cma", "z"]}, {0: "e1"}), scoredLines(scored, labels)];
    }""")
    assert shown == ["0 (np-0), 2 (np-2)", "0-383 (384 channels)",
                     "1, 3, 5, 7, 9, 11, 13, 15, 17, 19, … (192 channels)",
                     ["ch 0 (e1): cma, z"], ["ch 0-99 (100 channels): s0, s1", "ch 100-383 (284 channels): s0"]]


@pytest.mark.parametrize("path, ready", [("/docs", ".swagger-ui .info"), ("/redoc", "redoc h1, [role=search]")])
def test_api_docs_work_offline(page, running, path, ready):
    server, *_ = running
    page.goto(server.url + path)
    page.wait_for_selector(ready)
    assert page.errors == []
    assert page.outside == []


def test_a_retarget_is_marked_on_the_curve_and_what_the_stream_missed_is_shown(page, running):
    server, api, *_ = running
    session = api.post("/sessions", session_config("retarget", [thread_config("late", {"channels": [0]}, 500, 6)]))
    thread_id = session["threads"][0]["id"]
    page.route("**/live*", lambda route: route.abort())  # the page's stream is down from the start
    login(page, server, server.token)
    page.goto(f"{server.url}/#/session/{session['id']}")
    page.wait_for_selector("#feed div")  # the page read the events
    while completed(api, thread_id) < 1:
        time.sleep(0.05)
    api.post(f"/threads/{thread_id}/retarget", {"objective": {"expression": "zscore(rate(0))"}})
    (retarget,) = (e for e in api.get(f"/sessions/{session['id']}/events")["items"] if e["kind"] == "thread.retargeted")
    # Once the stream is back, what happened while it was down is shown.
    page.unroute("**/live*")
    page.wait_for_selector(f"#feed div:has-text({retarget['message']!r})")
    # The curve marks where the objective changed, each part labelled with its own unit.
    page.wait_for_selector(f"#thread-{thread_id} .curve .segment-label:has-text('score = zscore(rate(0))')")
    labels = page.locator(f"#thread-{thread_id} .curve .segment-label").all_text_contents()
    assert labels == ["score (spikes/s) of ch 0 (e1)", "score = zscore(rate(0))"]
    start = retarget["data"]["from_generation"]
    assert page.text_content(f"#thread-{thread_id} .curve .y-label") == (
        f"score (objective changed at generation {start}: see markers)")
    assert uncaught(page) == []
    api.post(f"/sessions/{session['id']}/stop")


def test_the_sessions_list_tells_a_session_whose_thread_failed_from_a_completed_one(page, running):
    """Both end ``finished``; the failed one's badge says so, in the failed threads' colour."""
    server, api, *_ = running
    ok, bad = (api.post("/sessions", {**session_config(name, [thread_config(name, {"channels": [0]}, 3)]),
                                      "rig": "rig-nobody-runs"}) for name in ("completed", "crashed"))
    db_engine = make_db_engine(f"sqlite:///{server.data_dir / 'actmax.sqlite'}")
    try:
        with make_sessionmaker(db_engine)() as db:  # as the server's engine ends them
            records.finish_thread(db, ok["threads"][0]["id"])
            records.end_session_if_done(db, ok["id"])
            records.set_thread_error(db, bad["threads"][0]["id"], "thread.failed", "failed: boom",
                                     status=ThreadStatus.FAILED)
            db.commit()
    finally:
        db_engine.dispose()
    login(page, server, server.token)
    badge = "#sessions tr:has(a[href='#/session/{}']) .status"
    page.wait_for_selector(badge.format(bad["id"]) + ".failed:has-text('finished, 1 failed')")
    assert page.get_attribute(badge.format(ok["id"]), "class") == "status finished"
    assert page.text_content(badge.format(ok["id"])) == "finished"
    page.goto(f"{server.url}/#/session/{bad['id']}")  # the session's own page says so too
    page.wait_for_selector("#session-title .status.failed:has-text('finished, 1 failed')")
    assert uncaught(page) == []


def test_a_retest_card_says_what_it_shows_and_a_rig_clock_warning_is_a_banner(page, running):
    server, api, *_ = running
    evolution = thread_config("evo", {"channels": [0]}, 3)
    retest = {"name": "evo-retest", "kind": "retest", "generator": "dcgan-faces", "objective": {"channels": [0]},
              "retest": {"source": "evo", "top": 3}}
    session = api.post("/sessions", {**session_config("retested", [evolution, retest]), "rig": "rig-nobody-runs"})
    db_engine = make_db_engine(f"sqlite:///{server.data_dir / 'actmax.sqlite'}")
    try:
        with make_sessionmaker(db_engine)() as db:  # as record_results logs it
            records.log_event(db, "rig.clock_offset", "rig 'rig-nobody-runs': onsets are 9.0 h ahead of this "
                              "server's clock", level="warning", session_id=session["id"])
            db.commit()
    finally:
        db_engine.dispose()
    login(page, server, server.token)
    page.goto(f"{server.url}/#/session/{session['id']}")
    card = f"#thread-{session['threads'][1]['id']}"
    page.wait_for_selector(f"{card} .body:has-text('best images again, once that evolution')")
    assert not page.query_selector(f"{card} .manifold")  # not a Manifold map's placeholder
    page.wait_for_selector("#banner:not([hidden]):has-text('9.0 h ahead')")
    assert uncaught(page) == []
    api.post(f"/sessions/{session['id']}/stop")


def test_what_changed_between_the_pages_reads_and_its_stream_connecting_is_shown(page, running):
    """A session page reads the session, then opens its live stream: a thread paused in between (its event
    published before the stream connected) is shown paused once the stream connects, not left as it was read."""
    server, api, *_ = running
    session = api.post("/sessions", {**session_config("gap", [thread_config("gap", {"channels": [0]}, 3)]),
                                     "rig": "rig-nobody-runs"})
    thread_id = session["threads"][0]["id"]
    login(page, server, server.token)
    page.wait_for_selector("#live-state.on")

    paused = []

    def paused_meanwhile(route):  # the page has read the session; its stream is not connected yet
        if not paused:
            paused.append(api.post(f"/threads/{thread_id}/pause"))
        route.continue_()
    page.route(f"**/live?session_id={session['id']}", paused_meanwhile)
    page.goto(f"{server.url}/#/session/{session['id']}")
    page.wait_for_selector(f"#thread-{thread_id} .status.paused")
    page.wait_for_selector("#feed div:has-text('paused')")  # and the event it missed is in the feed
    assert uncaught(page) == []
    api.post(f"/sessions/{session['id']}/stop")


def test_a_double_click_on_a_button_sends_one_request(page, running):
    """A thread's button and Stop session ignore clicks while their action runs: the first click's POST is held back
    at the network while the second click comes."""
    server, api, *_ = running
    session = api.post("/sessions", {**session_config("twice", [thread_config("twice", {"channels": [0]}, 3)]),
                                     "rig": "rig-nobody-runs"})
    thread_id = session["threads"][0]["id"]
    try:
        login(page, server, server.token)
        page.goto(f"{server.url}/#/session/{session['id']}")
        pause = f"#thread-{thread_id} button[data-action=pause]"
        page.wait_for_selector(pause)
        posts, held = [], []
        page.on("request", lambda request: request.method == "POST" and posts.append(urlparse(request.url).path))
        page.route("**/stop", lambda route: held.append(route))
        page.route("**/pause", lambda route: held.append(route))
        page.dblclick(pause)
        page.wait_for_timeout(500)
        assert posts == [f"/threads/{thread_id}/pause"]
        assert page.get_attribute(pause, "aria-busy") == "true"
        held.pop().continue_()
        page.wait_for_selector(f"#thread-{thread_id} button[data-action=resume]:not([aria-busy])")

        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        page.dblclick("#stop-session")
        page.wait_for_timeout(500)
        assert posts[1:] == [f"/sessions/{session['id']}/stop"] and len(dialogs) == 1
        held.pop().continue_()
        page.wait_for_selector("#stop-session:disabled:not([aria-busy])")
        assert held == [] and len(posts) == 2
        assert api.get(f"/threads/{thread_id}")["status"] == "stopped"
        assert uncaught(page) == []
    finally:
        api.post(f"/sessions/{session['id']}/stop")


def test_the_page_keeps_a_bounded_number_of_images_but_those_shown(page, running):
    """Past IMAGES_KEPT, the least recently asked images that no <img> shows are revoked (their object URLs no
    longer load) and forgotten; logging out revokes them all. One stimulus is asked under many paths: the page
    keeps each path's image, and fetch does not send the fragments that tell them apart."""
    server, api, session, _ = running
    thread_id = session["threads"][0]["id"]
    while completed(api, thread_id) < 1:
        time.sleep(0.05)
    stimulus = api.get(f"/threads/{thread_id}/curve")["points"][0]["best_stimulus_id"]
    login(page, server, server.token)
    page.wait_for_selector("#live-state.on")  # (the sessions list: no images)
    kept = page.evaluate("""async (path) => {
        const box = document.createElement('div');
        box.innerHTML = `<img data-src="${path}#shown">`;
        document.body.append(box);
        fillImages(box);
        const shown = await imageUrl(`${path}#shown`), old = await imageUrl(`${path}#old`), later = [];
        for (let i = 0; i < IMAGES_KEPT; i++) later.push(await imageUrl(`${path}#${i}`));
        const loads = (url) => Object.assign(new Image(), { src: url }).decode().then(() => true, () => false);
        window.shownUrl = shown;
        return { size: images.size, limit: IMAGES_KEPT, isShown: box.querySelector('img').src === shown,
                 shown: await loads(shown), old: await loads(old), first: await loads(later[0]),
                 second: await loads(later[1]), newest: await loads(later[later.length - 1]) };
    }""", f"/stimuli/{stimulus}/png")
    assert kept == {"size": 600, "limit": 600, "isShown": True, "shown": True, "old": False, "first": False,
                    "second": True, "newest": True}
    page.click("#logout")
    page.wait_for_selector("#token")
    assert page.evaluate("""async () => [images.size,
        await Object.assign(new Image(), { src: window.shownUrl }).decode().then(() => true, () => false)]""") == [0, False]
    assert uncaught(page) == []


def test_a_banner_is_about_an_active_session_and_a_dead_server_has_no_rig_state(page, running):
    """Last in this file: it stops the module's rig and kills its server."""
    server, api, session, rig = running
    assert api.post(f"/sessions/{session['id']}/stop")["status"] == "stopped"  # (already, by a test above)
    # Its own session (the tests may run in several processes: the others of this file are not all in this one's).
    active = api.post("/sessions", session_config("last", [thread_config("last", {"channels": [0]}, 500, 6)]))
    while completed(api, active["threads"][0]["id"]) < 1:  # (a rig that served no thread of it loses it nothing)
        time.sleep(0.05)
    login(page, server, server.token)
    page.goto(f"{server.url}/#/session/{active['id']}")
    page.wait_for_selector("#rig .status.running")
    page.wait_for_selector("#live-state.on")
    stop(rig)
    page.wait_for_selector("#banner:not([hidden]):has-text('went silent')")
    # Another session's page (reached in the page) shows no banner, nor does a session once it ended (the
    # warning stays in the feed).
    page.evaluate(f"location.hash = '#/session/{session['id']}'")
    page.wait_for_selector(f"#session-title:has-text('{session['name']}')")
    assert page.is_hidden("#banner")
    page.evaluate(f"location.hash = '#/session/{active['id']}'")
    page.wait_for_selector("#banner:not([hidden]):has-text('went silent')")
    api.post(f"/sessions/{active['id']}/stop")
    page.wait_for_selector("#banner", state="hidden")
    assert page.is_visible("#feed .warning:has-text('went silent')")
    page.wait_for_selector("#rig .status.stopped")  # not connected
    server.kill()
    page.wait_for_selector("#rig.stale .status.unknown:has-text('unknown (server unreachable)')")
    page.wait_for_selector("#live-state.off")
    assert uncaught(page) == []
