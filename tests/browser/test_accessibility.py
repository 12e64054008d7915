"""The dashboard for a keyboard, a screen reader and a dark rig room, in Debian's headless Chromium against a real
`actmax serve` and `actmax rig sim` (real processes; the fixtures and helpers of test_dashboard.py).

One server and one session serve every test, in file order: its evolution "a" finishes early and its Manifold
thread "a-map" maps it while the other tests run; the last test stops the session.
"""

from __future__ import annotations

import secrets

import pytest
from playwright.sync_api import expect

from server.launch import ServerProcess, server_with_sim_rig
from server.store import records
from server.store.db import make_db_engine, make_sessionmaker
from tests.browser import test_dashboard
from tests.browser.test_dashboard import login, thread_config, uncaught, wait_until

pytestmark = test_dashboard.pytestmark
browser, page = test_dashboard.browser, test_dashboard.page  # its fixtures: Chromium, and a page that records errors

RIG = "a11y-rig"
WARNING = "rig 'a11y-rig': onsets are 9.0 h ahead of this server's clock"

# Every visible text's contrast with what lies under it (WCAG's ratio of relative luminances), and each chart
# line's with the card: [{what, ratio, minimum}]. Text under an opacity (a disabled button, the greyed rig panel
# of an unreachable server) is left out: greyed on purpose.
CONTRASTS = """() => {
  const rgba = (s) => { const [r, g, b, a = 1] = s.match(/[\\d.]+/g).map(Number); return [r, g, b, a]; };
  const lum = ([r, g, b]) => [r, g, b].map((c) => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4)
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (x, y) => (Math.max(lum(x), lum(y)) + 0.05) / (Math.min(lum(x), lum(y)) + 0.05);
  const over = (top, under) => top.slice(0, 3).map((c, i) => top[3] * c + (1 - top[3]) * under[i]);
  const background = (element) => {  // the backgrounds up the tree, composited
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] === 1) break;
    }
    return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255]);
  };
  const opaque = (element) => { for (let e = element; e; e = e.parentElement) if (getComputedStyle(e).opacity !== "1") return false; return true; };
  const out = [];
  for (const element of document.body.querySelectorAll("*")) {
    const text = [...element.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (!text || !element.checkVisibility() || !opaque(element) || element.closest(".visually-hidden, .skip, template")) continue;
    const style = getComputedStyle(element);
    const color = rgba(element instanceof SVGElement ? style.fill : style.color);
    out.push({ what: `${element.tagName}.${element.className.baseVal ?? element.className}: ${element.textContent.trim().slice(0, 30)}`,
               ratio: ratio(over(color, background(element)), background(element)), minimum: 4.5 });
  }
  for (const line of document.querySelectorAll(".curve path.mean, .curve path.max, .curve path.ref")) {
    out.push({ what: `chart line ${line.getAttribute("class")}`, minimum: 3,
               ratio: ratio(rgba(getComputedStyle(line).stroke), background(line)) });
  }
  return out;
}"""

# Badges and rows the page shows only in some states, put on the page to be measured with the rest.
SAMPLES = """() => document.querySelector('#threads').insertAdjacentHTML('afterbegin', `<section class="card" id="samples">
  ${['running', 'paused', 'waiting_for_rig', 'blocked', 'stopped', 'finished', 'failed', 'active', 'unknown']
    .map((s) => `<span class="status ${s}">${s}</span>`).join(' ')}
  <p class="error">an error</p><p><code>code</code> <a href="#/">link</a> <button class="danger">Stop</button></p>
  <div class="feed"><div class="warning">a warning</div><div class="error">an error</div><div class="quiet">a generation</div></div>
</section>`)"""


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A server and a sim rig on session "a11y": "a" (two generations) mapped by "a-map", and the long evolutions
    "b" and "c"; a rig.clock_offset warning makes the page's banner. The server, REST client and session."""
    tmp = tmp_path_factory.mktemp("a11y")
    server = ServerProcess(tmp / "data", secrets.token_urlsafe(16))
    threads = [thread_config("a", {"channels": [0]}, 2, population=6),
               {"name": "a-map", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [0]},
                "manifold": {"source": "a", "planes": ["random"]}},
               thread_config("b", {"channels": [0]}, 500, population=4),
               thread_config("c", {"channels": [0]}, 500, population=4)]
    with server_with_sim_rig(server, RIG, ["blocks.6:67"], tmp / "rig.log") as (api, _):
        session = api.post("/sessions", {"name": "a11y", "rig": RIG, "references": {"source": "skimage", "count": 2},
                                         "threads": threads})
        log_events(server, dict(kind="rig.clock_offset", message=WARNING, session_id=session["id"]))  # as record_results
        yield server, api, session


def log_events(server: ServerProcess, *events: dict) -> list[int]:
    """Write ``events`` (``records.log_event``'s arguments; warnings unless a ``level`` is given) into the server's
    database, as the engine does; their ids. The page reads them over REST (the live stream does not see them)."""
    db_engine = make_db_engine(f"sqlite:///{server.data_dir / 'actmax.sqlite'}")
    try:
        with make_sessionmaker(db_engine)() as db:
            ids = [records.log_event(db, **{"level": "warning", **event}) for event in events]
            db.commit()
        return ids
    finally:
        db_engine.dispose()


def open_session(page, running) -> dict[str, int]:
    """The session's page, signed in; the thread ids by name."""
    server, _, session = running
    login(page, server, server.token)
    page.wait_for_selector("#live-state.on")
    page.goto(f"{server.url}/#/session/{session['id']}")
    page.wait_for_selector("#feed div")
    return {t["name"]: t["id"] for t in session["threads"]}


def test_the_token_field_is_labelled_and_a_wrong_token_is_announced(page, running):
    server, *_ = running
    login(page, server, "not-the-token")
    page.wait_for_selector("#login-error:not([hidden])")
    expect(page.get_by_role("alert")).to_have_text("Wrong token: the server refused it.")
    token = page.get_by_label("API token")
    expect(token).to_be_focused()
    expect(token).to_have_accessible_description("Wrong token: the server refused it.")


def test_the_legend_draws_each_line_with_its_dash_pattern(page, running):
    """Mean and reference differ by more than hue (1.26:1 in luminance): the reference is dash-dotted, the max
    dashed, and each legend swatch is drawn as its line."""
    server, *_ = running
    page.goto(server.url + "/")
    lines = page.evaluate("""() => {
        const doc = new DOMParser().parseFromString(Charts.scoreCurve([{ generation: 0, mean: 1, max: 2, reference_mean: 1 }])
                                                    + Charts.legend, "text/html");
        const dash = (e) => e.getAttribute("stroke-dasharray");
        return Object.fromEntries(["mean", "max", "ref"].map((line) =>
            [line, [dash(doc.querySelector(`svg[role=img] path.${line}`)), dash(doc.querySelector(`.legend line.${line}`)),
                    doc.querySelector(`.legend line.${line}`).getAttribute("stroke")]]));
    }""")
    assert lines == {"mean": [None, None, "var(--mean)"], "max": ["4 3", "4 3", "var(--max)"],
                     "ref": ["9 3 2 3", "9 3 2 3", "var(--ref)"]}


def test_focus_stays_on_a_button_whose_thread_did_not_change_and_status_changes_are_announced(page, running):
    """Pauses "b" and "c" (the Manifold map then has the rig to itself)."""
    _, api, _ = running
    ids = open_session(page, running)
    b, c = ids["b"], ids["c"]
    # Each card is a region named by its heading; each button names its thread.
    pause_c = page.get_by_role("region", name="c", exact=True).get_by_role("button", name="Pause thread c", exact=True)
    pause_c.focus()
    page.evaluate("window.kept = document.activeElement")
    api.post(f"/threads/{b}/pause")  # as the CLI or another viewer does
    page.wait_for_selector(f"#thread-{b} button[data-action=resume]")
    assert page.evaluate("document.activeElement === window.kept && window.kept.isConnected")
    wait_until(page, "() => document.querySelector('#announce').textContent.includes('Thread b is now paused.')")
    assert page.get_attribute("#announce", "role") == "status"

    # The focused button itself changes: focus goes to the one in its place.
    page.keyboard.press("Enter")
    wait_until(page, f"() => document.activeElement.matches('#thread-{c} button[data-action=resume]')")
    expect(page.locator(f"#thread-{c} button[data-action=resume]")).to_have_accessible_name("Resume thread c")
    assert api.get(f"/threads/{c}")["status"] == "paused"
    wait_until(page, "() => document.querySelector('#announce').textContent.includes('Thread c is now paused.')")
    said = page.text_content("#announce")
    assert "generation" not in said  # status changes only, nothing per generation
    assert uncaught(page) == []


def test_the_rig_panel_keeps_focus_on_its_fold_and_a_skip_link_reaches_it(page, running):
    """A session of nine threads on a rig nobody runs: its panel folds the ninth line under "… 1 more"."""
    server, api, _ = running
    session = api.post("/sessions", {"name": "nine", "rig": "rig-nobody-runs", "references": {"source": "skimage", "count": 2},
                                     "threads": [thread_config(f"s{k}", {"channels": [k]}, 2, population=4) for k in range(9)]})
    try:
        login(page, server, server.token)
        page.wait_for_selector("#live-state.on")
        page.goto(f"{server.url}/#/session/{session['id']}")
        page.wait_for_selector("#rig summary:has-text('… 1 more')")
        hash_before = page.evaluate("location.hash")
        page.focus(".skip[href='#rig']")
        page.keyboard.press("Enter")
        assert page.evaluate("[document.activeElement.id, location.hash]") == ["rig", hash_before]
        expect(page.get_by_role("region", name="Rig rig-nobody-runs not connected")).to_be_visible()

        # The panel is polled every 2 s: count its draws, and keep focus on the fold across two of them.
        page.evaluate("""() => { const load = loadRig; window.draws = 0;
                                 loadRig = async (state) => { await load(state); window.draws += 1; }; }""")
        page.focus("#rig summary")
        page.keyboard.press("Enter")
        page.evaluate("window.draws = 0")
        wait_until(page, "() => window.draws >= 1")
        assert page.evaluate("document.activeElement.matches('#rig summary') && document.querySelector('#rig details').open")
        assert uncaught(page) == []
    finally:
        api.post(f"/sessions/{session['id']}/stop")


def test_a_dark_scheme_with_readable_text_and_readable_text_when_light(browser, running):
    context = browser.new_context(color_scheme="dark", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        open_session(page, running)
        page.wait_for_selector(".curve svg path.mean")
        page.wait_for_selector("#banner:not([hidden])")
        page.evaluate(SAMPLES)
        for scheme in ("dark", "light"):
            page.emulate_media(color_scheme=scheme)
            body = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert (body == "rgb(15, 18, 22)") == (scheme == "dark"), body
            contrasts = page.evaluate(CONTRASTS)
            assert len(contrasts) > 40
            assert [c for c in contrasts if c["ratio"] < c["minimum"]] == [], scheme
            # The "server unreachable" badge is the one thing that must be read while the panel is greyed.
            assert [c for c in contrasts if "unknown" in c["what"]][0]["ratio"] >= 4.5
    finally:
        context.close()


def test_the_manifold_map_says_what_it_shows_once_shown(page, running):
    """The map's image carries what it shows, which replaces its "computing ..." alt once it is shown; that swap is
    checked on a grid image (the map's own PNG is computed on each request, the slow part of this page). The plane
    is the session config's (the page once read it from the thread's optimizer, which has none: always pc2-3), and
    the mapped evolution offers no second map."""
    _, api, _ = running
    ids = open_session(page, running)
    image = f"#thread-{ids['a-map']} .manifold > img"
    page.wait_for_selector(image, state="attached", timeout=60_000)  # once the map's thread has finished
    assert page.get_attribute(image, "data-alt") == ("Manifold map of thread a-map on the random plane: the smoothed "
                                                     "response over θ and φ, with its level sets")
    assert page.text_content(f"#thread-{ids['a-map']} .manifold h3") == \
        "Images on the random grid (11 × 11; θ across, φ up)"
    assert api.get(f"/threads/{ids['a']}")["status"] == "finished"
    assert page.query_selector_all(f"#thread-{ids['a']} .controls button") == []  # no "Add Manifold thread"
    (generation,) = api.get(f"/threads/{ids['a-map']}/generations")["items"]
    stimulus = api.get(f"/generations/{generation['id']}")["stimulus_ids"][0]
    page.evaluate("""(path) => {
        const box = document.createElement('div');
        box.id = 'alt-check';
        box.innerHTML = `<img data-src="${path}" alt="on its way" data-alt="shown">`;
        document.body.append(box);
        fillImages(box);
    }""", f"/stimuli/{stimulus}/png")
    page.wait_for_selector("#alt-check img[src^='blob:']")
    assert page.get_attribute("#alt-check img", "alt") == "shown"
    assert uncaught(page) == []


def test_a_narrow_window_does_not_scroll_sideways(page, running):
    """375 px wide (a phone): the sessions table scrolls inside its card, and a session page, with its
    Manifold map's 420 px grid, fits the window."""
    server, _, session = running
    page.set_viewport_size({"width": 375, "height": 700})
    sideways = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    login(page, server, server.token)
    page.wait_for_selector("#sessions")
    assert page.evaluate(sideways) <= 0
    assert page.evaluate("(({ scrollWidth, clientWidth }) => scrollWidth > clientWidth)(document.querySelector('.scroll'))")
    page.goto(f"{server.url}/#/session/{session['id']}")
    map_thread = next(t["id"] for t in session["threads"] if t["name"] == "a-map")
    page.wait_for_selector(f"#thread-{map_thread} .grid-images img[src^='blob:']", timeout=60_000)
    page.wait_for_selector(".curve svg")
    page.wait_for_selector("#rig tbody tr")
    assert page.evaluate(sideways) <= 0
    assert uncaught(page) == []


def test_a_change_is_announced_once_while_the_session_is_reread_several_times_at_once(page, running):
    """Three re-reads of the session held back until "c" is resumed over REST (and any the stream's events ask
    meanwhile): each finds the change, which is said once. Leaves "c" running (the Manifold map, above, is done)."""
    _, api, session = running
    ids = open_session(page, running)
    page.wait_for_selector("#live-state.on")  # (the page's handler of the stream's items is in place)
    c = ids["c"]
    if api.get(f"/threads/{c}")["status"] != "paused":
        api.post(f"/threads/{c}/pause")
    page.wait_for_selector(f"#thread-{c} button[data-action=resume]")
    page.evaluate("""(id) => {
        const get = api, reread = refreshSession;
        window.gate = new Promise((open) => { window.openGate = open; });
        api = async (path, options) => { if (path === `/sessions/${id}`) await window.gate; return get(path, options); };
        window.pending = 0; window.said = [];
        refreshSession = (state) => { window.pending += 1; return reread(state).finally(() => { window.pending -= 1; }); };
        new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => window.said.push(n.textContent))))
            .observe(document.querySelector('#announce'), { childList: true });
        for (let i = 0; i < 3; i++) live.handlers.forEach((h) => h("session.viewed", { session_id: id }));
    }""", session["id"])
    api.post(f"/threads/{c}/resume")
    page.evaluate("window.openGate()")
    wait_until(page, "() => window.pending === 0")
    said = [line for line in page.evaluate("window.said") if line.startswith("Thread c ")]
    assert said and len(said) == len(set(said)), said  # ("running", or "waiting for rig" first while the rig is busy)
    assert uncaught(page) == []


def test_dismissing_the_banner_hands_focus_to_the_page_heading(page, running):
    open_session(page, running)
    page.wait_for_selector("#banner:not([hidden])")
    page.focus("#banner button")
    page.keyboard.press("Enter")
    assert page.is_hidden("#banner")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    assert uncaught(page) == []


def test_a_page_raises_no_banner_for_a_rig_loss_that_is_over_and_dates_its_banner(page, running):
    """A rig.lost is over once its rig is connected again, or once a later event says the session's threads run
    again: a page that opens shows the newest warning that still holds, with its time as the feed writes it."""
    server, api, session = running
    rig = "rig-nobody-runs"
    other = api.post("/sessions", {"name": "back", "rig": rig, "references": {"source": "skimage", "count": 2},
                                   "threads": [thread_config("t", {"channels": [0]}, 2, population=4)]})
    banner_time = "() => document.querySelector('#banner time').textContent"
    feed_time = "(id) => document.querySelector(`#feed [data-id='${id}'] time`).textContent"
    try:
        # This module's rig is connected: its loss is over, and the older clock warning is the banner.
        lost, = log_events(server, dict(kind="rig.lost", message=f"rig {RIG!r} went silent", session_id=session["id"],
                                        data={"rig": RIG}))
        open_session(page, running)
        page.wait_for_selector(f"#feed [data-id='{lost}']")
        expect(page.get_by_role("alert")).to_contain_text("9.0 h ahead")
        clock_offset = page.get_attribute("#feed div:has-text('9.0 h ahead')", "data-id")
        assert page.evaluate(banner_time) == page.evaluate(feed_time, clock_offset)

        # The other session's rig is not connected, but its thread ran again after the loss.
        thread = other["threads"][0]["id"]
        lost, running_again = log_events(
            server, dict(kind="rig.lost", message=f"rig {rig!r} went silent", session_id=other["id"], data={"rig": rig}),
            dict(kind="thread.running", message=f"thread {thread} 't' running: its rig is connected", thread_id=thread,
                 level="info"))
        page.evaluate("() => { const load = loadEvents; window.eventLoads = 0;"
                      " loadEvents = async (state) => { await load(state); window.eventLoads += 1; }; }")
        page.evaluate(f"location.hash = '#/session/{other['id']}'")
        wait_until(page, "() => window.eventLoads >= 1")
        assert page.is_visible(f"#feed [data-id='{running_again}']")
        assert page.is_hidden("#banner")

        # Lost again, then back with other channels: that warning is the banner.
        message = (f"rig {rig!r} reconnected with other channels: 1 channels -> 2 channels; the session's threads score "
                   "the channels by number: check that they still record the units you meant (retarget the thread "
                   "otherwise)")
        _, changed = log_events(
            server, dict(kind="rig.lost", message=f"rig {rig!r} went silent", session_id=other["id"], data={"rig": rig}),
            dict(kind="rig.channels_changed", message=message, session_id=other["id"],
                 data={"rig": rig, "before": {"channels": 1, "channel_labels": None},
                       "after": {"channels": 2, "channel_labels": None}}))
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text("reconnected with other channels")
        page.wait_for_selector(f"#feed [data-id='{changed}']")
        assert page.evaluate(banner_time) == page.evaluate(feed_time, changed)
        assert uncaught(page) == []
    finally:
        api.post(f"/sessions/{other['id']}/stop")


def test_a_rig_loss_over_while_the_stream_was_down_takes_its_banner_away(page, running):
    """The page reloads its events when its stream is back: a rig.lost banner goes once they say the session's
    threads run again (the rig came back while the stream was down)."""
    server, api, _ = running
    rig = "rig-nobody-runs"
    lost = api.post("/sessions", {"name": "lost", "rig": rig, "references": {"source": "skimage", "count": 2},
                                  "threads": [thread_config("t", {"channels": [0]}, 2, population=4)]})
    thread = lost["threads"][0]["id"]
    try:
        log_events(server, dict(kind="rig.lost", message=f"rig {rig!r} went silent", session_id=lost["id"],
                                data={"rig": rig}))
        login(page, server, server.token)
        page.wait_for_selector("#live-state.on")
        page.goto(f"{server.url}/#/session/{lost['id']}")
        expect(page.get_by_role("alert")).to_contain_text("went silent")
        page.route("**/live*", lambda route: route.abort())
        page.evaluate("live.start(live.sessionId)")
        wait_until(page, "() => document.querySelector('#announce').textContent.includes('Live stream offline')")
        running_again, = log_events(server, dict(kind="thread.running", message=f"thread {thread} 't' running: its rig is "
                                                 "connected", thread_id=thread, level="info"))
        page.unroute("**/live*")
        page.wait_for_selector(f"#feed [data-id='{running_again}']")
        wait_until(page, "() => document.querySelector('#banner').hidden", timeout=5)
        assert page.get_attribute("#banner", "data-event") is None
        assert uncaught(page) == []
    finally:
        api.post(f"/sessions/{lost['id']}/stop")


def test_the_banner_stays_in_view_is_an_alert_said_once_and_the_stream_and_session_end_are_announced(page, running):
    """Last in this file: it stops the session."""
    _, api, session = running
    page.set_viewport_size({"width": 683, "height": 384})  # 1366x768 at 200 % zoom
    open_session(page, running)
    banner = page.get_by_role("alert")
    expect(banner).to_contain_text("9.0 h ahead")
    page.evaluate("() => { window.scrollTo(0, document.body.scrollHeight); window.rewrites = 0;"
                  "new MutationObserver(() => { window.rewrites += 1; }).observe(document.querySelector('#banner'),"
                  " { childList: true, subtree: true, characterData: true }); }")
    assert page.evaluate("window.scrollY") > 500
    top, bottom = page.evaluate("(({ top, bottom }) => [top, bottom])(document.querySelector('#banner').getBoundingClientRect())")
    assert 0 <= top < bottom <= 384

    # The stream drops (restarted where the server cannot be reached) and comes back: both are said, and the reload
    # that follows finds the same warning without redrawing the banner.
    page.evaluate("() => { const load = loadEvents; window.eventLoads = 0;"
                  " loadEvents = async (state) => { await load(state); window.eventLoads += 1; }; }")
    page.route("**/live*", lambda route: route.abort())
    page.evaluate("live.start(live.sessionId)")
    wait_until(page, "() => document.querySelector('#announce').textContent.includes('Live stream offline')")
    page.unroute("**/live*")
    wait_until(page, "() => document.querySelector('#announce').textContent.includes('Live stream back')")
    wait_until(page, "() => window.eventLoads >= 1")
    api.post(f"/sessions/{session['id']}/stop")
    wait_until(page, "() => document.querySelector('#announce').textContent.includes('Session a11y is now stopped.')")
    assert page.is_hidden("#banner")
    assert page.evaluate("window.rewrites") == 0
    assert uncaught(page) == []
