// The actmax dashboard: REST for state, one live stream (/live, Server-Sent Events over fetch) for news.
// Each view is one navigation (`route`): leaving it aborts its requests, its live stream and its timers.
// The token lives in sessionStorage (this tab only) and travels only in the Authorization header.
"use strict";

const TOKEN_KEY = "actmax-token";
const STRIP_IMAGES = 40;      // best images shown per thread (evenly spaced over the evolution)
const MONTAGE_EVERY_MS = 3000; // the latest-generation montage refreshes at most this often
const FEED_EVENTS = 200;       // events kept in the feed
const FEW_CHANNELS = 8;        // longer channel lists are shown as ranges and a count, without labels
const RANGE_PARTS = 10;        // ranges and channels shown of such a list before "…"
const RIG_LINES = 8;           // rig panel: lines of scored channels shown before the rest is folded away
const EXPRESSION_CHARS = 120;  // a longer objective expression is cut on the thread card (whole in its tooltip)
const IMAGES_KEPT = 600;       // stimulus images kept in memory (a session page shows ~80 per generation and 40 best)
const BANNER_KINDS = new Set(["drift.reference", "channel.silent", "rig.lost", "rig.replaced", "rig.clock_offset",
  "rig.channels_changed"]);  // the warnings also shown as the banner
const RUNNING_AGAIN = new Set(["thread.running", "thread.started", "thread.resumed"]); // after these a rig.lost is over
const ENDED = new Set(["stopped", "finished", "failed"]); // thread statuses after which nothing changes

const $ = (selector, root = document) => root.querySelector(selector);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (v, digits = 3) => (typeof v === "number" && Number.isFinite(v) ? v.toPrecision(digits) : "–");
const ms = (v) => (typeof v === "number" ? `${v.toFixed(0)} ms` : "–");
const ZONE = { timeZoneName: "short" }; // every time shown names the browser's zone (e.g. "GMT+9", "CET")
const clock = (iso) => new Date(iso).toLocaleTimeString(undefined, ZONE);
const dateTime = (iso) => new Date(iso).toLocaleString(undefined, ZONE);

class Unauthorized extends Error {}
class Offline extends Error {} // the server did not answer: the live stream's reconnect reloads what was missed
const abandoned = (error) => error?.name === "AbortError"; // the view that asked was left: nothing to show or say

// ---------------------------------------------------------------- REST
async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`, "Content-Type": "application/json",
      "X-Actmax-Client": "dashboard", ...(options.headers || {}) }, // named in the events of the actions it takes
  }).catch((error) => { throw abandoned(error) ? error : new Offline(`the server cannot be reached (${error.message})`); });
  if (response.status === 401) throw new Unauthorized("the server refused the token");
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${response.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`);
  }
  return response.json();
}

// Stimulus PNGs need the header too: fetched once each as blobs and shown through object URLs. One still on its
// way when its view is left (`signal`) is aborted and forgotten: the next view to show it asks again.
// Beyond IMAGES_KEPT, the least recently asked that no <img> shows now are revoked and forgotten.
const images = new Map(); // path -> { url: promise of its object URL, src: that URL once made }, least recent first
function imageUrl(path, signal) {
  let image = images.get(path);
  images.delete(path); // (set again below, as the most recent)
  if (!image) {
    image = { src: null };
    image.url = fetch(path, { signal, headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` } })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`${path}: ${r.status}`))))
      .then((blob) => (image.src = URL.createObjectURL(blob)));
    image.url.catch((error) => { if (abandoned(error) && images.get(path) === image) images.delete(path); });
  }
  images.set(path, image);
  if (images.size > IMAGES_KEPT) forgetImages();
  return image.url;
}
// Forget the least recently asked images beyond IMAGES_KEPT, but not those shown now or still on their way.
function forgetImages() {
  const shown = new Set([...document.images].map((img) => img.src));
  for (const [path, image] of images) {
    if (images.size <= IMAGES_KEPT) return;
    if (image.src && !shown.has(image.src)) { URL.revokeObjectURL(image.src); images.delete(path); }
  }
}
// An image's `data-alt` replaces its alt once it is shown (the alt says meanwhile that it is on its way).
function fillImages(root, signal) {
  for (const img of root.querySelectorAll("img[data-src]")) {
    imageUrl(img.dataset.src, signal).then((url) => { img.src = url; if (img.dataset.alt) img.alt = img.dataset.alt; },
      (error) => { if (!abandoned(error)) img.alt = "missing"; });
    img.removeAttribute("data-src");
  }
}
const channelName = (channel, labels) => (labels?.[channel] ? `${channel} (${labels[channel]})` : `${channel}`);
// Channels for one line: up to FEW_CHANNELS as listed, with their labels (`0 (e1), 2 (e3)`); more as runs of
// three or more and a count (`0-383 (384 channels)`), as the channel.silent warning writes them.
function channelList(channels, labels) {
  if (channels.length <= FEW_CHANNELS) return channels.map((c) => channelName(c, labels)).join(", ");
  const runs = [];
  for (const c of channels.map(Number).sort((a, b) => a - b)) {
    const run = runs[runs.length - 1];
    if (run && c === run[run.length - 1] + 1) run.push(c);
    else runs.push([c]);
  }
  const parts = runs.flatMap((r) => (r.length > 2 ? [`${r[0]}-${r[r.length - 1]}`] : r.map(String)));
  return `${parts.slice(0, RANGE_PARTS).join(", ")}${parts.length > RANGE_PARTS ? ", …" : ""} (${channels.length} channels)`;
}
// The rig panel's lines: channels scored by the same threads share one, `ch 0-383 (384 channels): s0, s1`.
function scoredLines(scoredChannels, labels) {
  const byThreads = new Map();
  for (const [channel, names] of Object.entries(scoredChannels)) {
    const key = names.join(", ");
    byThreads.set(key, [...(byThreads.get(key) || []), Number(channel)]);
  }
  return [...byThreads].map(([names, channels]) => `ch ${channelList(channels, labels)}: ${names}`);
}
// What the rig's program said of itself in HELLO (protocol 1.2 `setup`): one line per field given, objects as JSON.
const setupLines = (setup) => Object.entries(setup || {}).filter(([, value]) => value != null)
  .map(([key, value]) => `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`);
const stimulusImg = (id, title = "") => `<img data-src="/stimuli/${encodeURIComponent(id)}/png" alt="" title="${esc(title)}">`;

// ---------------------------------------------------------------- live stream
// The shown view's stream, stopped when its view is left (`navigate`); start(id) without a view restarts it for the
// view shown. None starts for a view already left.
const live = {
  controller: null, handlers: new Set(), sessionId: null, view: null,
  start(sessionId, view = this.view) {
    if (view.aborted) return; // (a view left starts none)
    this.stop();
    this.sessionId = sessionId;
    this.view = view;
    this.controller = new AbortController();
    this.loop(this.controller.signal);
  },
  stop() { if (this.controller) this.controller.abort(); this.controller = null; setLive(false); },
  // Each connection reports "connected", or "dropped" after a failure: what happened between the page's own reads
  // (or the stream's end) and this connection is not in the stream, so the page reads it again.
  async loop(signal) {
    let wait = 500, failed = false;
    while (!signal.aborted) {
      try {
        const query = this.sessionId == null ? "" : `?session_id=${this.sessionId}`;
        const response = await fetch(`/live${query}`, { signal, headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` } });
        if (response.status === 401) { logout("the server refused the token"); return; }
        if (!response.ok) throw new Error(`live stream: ${response.status}`);
        setLive(true);
        wait = 500;
        if (failed) say("Live stream back: what happened meanwhile is reloaded.");
        this.handlers.forEach((h) => h(failed ? "dropped" : "connected", {}));
        failed = false;
        await readEvents(response.body, (kind, data) => this.handlers.forEach((h) => h(kind, data)));
      } catch (error) {
        if (signal.aborted) return;
      }
      setLive(false);
      if (!failed) say("Live stream offline: the server cannot be reached. Reconnecting.");
      failed = true;
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 8000);
    }
  },
};

// Parse a text/event-stream body: "event: kind" and "data: json" lines, a blank line ends a message.
async function readEvents(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onMessage(kind, JSON.parse(data));
    }
  }
}

function setLive(on) {
  const badge = $("#live-state");
  badge.className = `live ${on ? "on" : "off"}`;
  badge.textContent = on ? "live" : "offline";
}

// The page's one polite status region: short sentences on what changed state (a thread's status, the session's,
// the live stream), never per generation. The latest few lines are kept, so that quick changes are all read.
const SAID_LINES = 5;
function say(text) {
  const region = $("#announce");
  const line = document.createElement("p");
  line.textContent = text;
  region.append(line);
  while (region.childElementCount > SAID_LINES) region.firstElementChild.remove();
}

// ---------------------------------------------------------------- login and routing
function showLogin(message) {
  $("#logout").hidden = true;
  $("#banner").hidden = true;
  const main = $("#main");
  main.replaceChildren($("#login-view").content.cloneNode(true));
  if (message) { $("#login-error").textContent = message; $("#login-error").hidden = false; }
  $("#login").addEventListener("submit", async (event) => {
    event.preventDefault();
    // A pasted token may bring spaces around it; within, a token is visible ASCII (as the server checks it at its
    // start), and a header cannot carry other characters.
    const token = $("#token").value.trim();
    if (!/^[\x21-\x7e]+$/.test(token)) {
      return showLogin("Not a token: a token holds only ASCII letters, digits and punctuation (no spaces within, no "
        + "characters such as é or €). Check what was pasted.");
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    route();
  });
  $("#token").focus();
}

function logout(message) {
  navigate();
  sessionStorage.removeItem(TOKEN_KEY);
  images.forEach((image) => image.url.then((src) => URL.revokeObjectURL(src), () => {}));
  images.clear();
  showLogin(message);
}

// The navigation of the view shown: a view passes its signal to every request it makes and ends its timers and its
// live stream with it, so that once it is left nothing it asked for reaches the page.
let navigation = new AbortController();
function navigate() {
  navigation.abort();
  navigation = new AbortController();
  live.stop();
  live.handlers.clear();
  return navigation.signal;
}

async function route() {
  const signal = navigate();
  hideBanner(); // a page shows its own warnings
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  $("#logout").hidden = false;
  const match = location.hash.match(/^#\/session\/(\d+)/);
  try {
    await (match ? sessionPage(Number(match[1]), signal) : sessionsPage(signal));
  } catch (error) {
    if (signal.aborted) return; // another view was asked for meanwhile: it is the one shown
    if (error instanceof Unauthorized) return logout("Wrong token: the server refused it.");
    $("#main").innerHTML = `<div class="card error">${esc(error.message)}</div>`;
  }
}

// ---------------------------------------------------------------- sessions list
// Kept current from the live stream: a session or thread event redraws the list.
async function sessionsPage(signal) {
  let timer = null;
  const render = async () => { $("#main").innerHTML = sessionsTable(await api("/sessions", { signal })); };
  signal.addEventListener("abort", () => clearTimeout(timer));
  await render();
  const onLive = (kind) => {
    if (kind === "dropped" || kind === "connected" || kind.startsWith("session") || kind.startsWith("thread")) {
      timer ??= setTimeout(() => { timer = null; render(); }, 300);
    }
  };
  live.handlers.add(onLive);
  live.start(null, signal);
}

// A session whose threads failed ends `finished` like a completed one: its badge says how many failed, in red.
function sessionBadge(s) {
  const failed = s.threads_by_status.failed;
  return failed ? `<span class="status failed">${esc(s.status)}, ${failed} failed</span>`
    : `<span class="status ${esc(s.status)}">${esc(s.status)}</span>`;
}

function sessionsTable(sessions) {
  const rows = sessions.slice().reverse().map((s) => `<tr><td>${s.id}</td><td><a href="#/session/${s.id}">${esc(s.name)}</a></td>
    <td>${esc(s.rig)}</td><td>${esc(s.animal)}</td><td>${s.config.threads.length}</td>
    <td>${sessionBadge(s)}</td><td>${dateTime(s.created_at)}</td></tr>`);
  return `<div class="card"><h1>Sessions</h1>${sessions.length ? `<div class="scroll"><table id="sessions"><thead><tr><th>id</th>
    <th>name</th><th>rig</th><th>animal</th><th>threads</th><th>status</th><th>created</th></tr></thead><tbody>${rows.join("")}</tbody>
    </table></div>` : `<p class="muted">No sessions yet: start one with <code>actmax session create CONFIG</code>.</p>`}</div>`;
}

// ---------------------------------------------------------------- session page
async function sessionPage(sessionId, signal) {
  const state = { signal, session: await api(`/sessions/${sessionId}`, { signal }), curves: new Map(), curveLoads: new Map(), otherThreads: new Map(), montageAt: new Map(), montageTimers: new Map(),
    poll: null, rigTimer: null, refreshing: null, refreshQueued: null }; // the session's re-read running, and the one waiting for it
  signal.addEventListener("abort", () => { clearInterval(state.poll); clearTimeout(state.rigTimer); state.montageTimers.forEach(clearTimeout); });
  const main = $("#main");
  main.innerHTML = `<nav class="skips" aria-label="skip links"><a class="skip" href="#rig">Skip to the rig panel</a>
      <a class="skip" href="#events">Skip to the events</a></nav>
    <div class="session-head card"><div><h1 id="session-title" tabindex="-1"></h1><div id="session-meta" class="muted"></div></div>
      <div class="controls"><button id="stop-session" class="danger">Stop session</button></div></div>
    <div class="layout"><div id="threads"></div>
      <aside><section class="card" id="rig" tabindex="-1" aria-labelledby="rig-title"><h2 id="rig-title">Rig ${esc(state.session.rig)}
          <span class="status"></span></h2>
        <dl class="kv"><dt>channels</dt><dd class="channels">–</dd><dt>scored</dt><dd class="scored">–</dd>
          <dt>last heard</dt><dd class="heard">–</dd><dt>setup</dt><dd class="setup">–</dd></dl>
        <h3>Latest batches</h3><table><thead><tr><th>thread</th><th>gen</th><th title="sent → first result">first</th>
          <th title="sent → generation complete">complete</th><th title="previous generation complete → sent (server)">turnaround</th></tr></thead>
          <tbody></tbody></table></section>
        <section class="card" id="events" tabindex="-1" aria-labelledby="events-title"><h2 id="events-title">Events</h2>
          <div class="feed" id="feed"></div></section></aside></div>`;
  // In-page links must not change the hash: it names the page shown.
  for (const link of main.querySelectorAll(".skip")) {
    link.addEventListener("click", (event) => { event.preventDefault(); $(link.getAttribute("href")).focus(); });
  }
  $("#stop-session").addEventListener("click", oneAtATime(async () => {
    if (!confirm("Stop every thread of this session? This is final.")) return;
    await act(() => api(`/sessions/${sessionId}/stop`, { method: "POST" }), state);
  }));

  renderSession(state);
  await Promise.all([...state.session.threads.map((t) => loadCurve(state, t.id)), loadEvents(state), loadRig(state)]);
  signal.throwIfAborted(); // (loadRig ends quietly when its view is left, so the loads may all resolve)

  const onLive = (kind, item) => {
    if (kind === "dropped") { reloadAll(state); return; }
    if (kind === "connected") { // what changed since this page read it (the curves: each its new generations)
      refreshSession(state);
      loadEvents(state);
      state.session.threads.forEach((t) => loadCurve(state, t.id, true));
      return;
    }
    if (item.session_id != null && item.session_id !== sessionId) return;
    if (item.event_id != null) addEvent(item);
    if (kind === "generation.completed") loadCurve(state, item.thread_id, true);
    else if (kind.startsWith("thread") || kind.startsWith("session")) refreshSession(state);
    else if (kind === "rig.connected" && item.data?.rig === state.session.rig) refreshSession(state); // its channel labels
    if (kind.startsWith("rig") || kind.startsWith("batch")) scheduleRig(state);
    if (item.level === "warning" && BANNER_KINDS.has(kind)) showBanner(state, item);
  };
  live.handlers.add(onLive);
  live.start(sessionId, signal);
  state.poll = setInterval(() => loadRig(state), 2000);
}

// A button's click handler that runs `action` once at a time: a click while it runs (a double click) is ignored.
// The button says so (aria-busy) but is not disabled, which would take its keyboard focus away.
function oneAtATime(action) {
  return async (event) => {
    const button = event.currentTarget;
    if (button.getAttribute("aria-busy") === "true") return;
    button.setAttribute("aria-busy", "true");
    try { await action(); } finally { button.removeAttribute("aria-busy"); }
  };
}

async function act(call, state) {
  try { await call(); } catch (error) {
    if (error instanceof Unauthorized) return logout("Wrong token: the server refused it.");
    alert(error.message);
  }
  await refreshSession(state);
}

// One re-read at a time, each comparing with what the one before it left, so a change is said once; calls made
// while one waits to start share it.
function refreshSession(state) {
  if (!state.refreshQueued) {
    state.refreshQueued = (state.refreshing ?? Promise.resolve()).catch(() => {}).then(() => {
      state.refreshQueued = null;
      return rereadSession(state);
    });
    state.refreshing = state.refreshQueued;
  }
  return state.refreshQueued;
}

async function rereadSession(state) {
  const before = new Map(state.session.threads.map((t) => [t.id, t.status]));
  const sessionBefore = state.session.status;
  state.session = await api(`/sessions/${state.session.id}`, { signal: state.signal });
  if (state.session.status !== "active") $("#banner").hidden = true; // as showBanner: nothing at stake any more
  renderSession(state);
  const changed = new Map(), added = []; // new status -> the threads that changed to it; new threads
  for (const t of state.session.threads) {
    if (!before.has(t.id)) added.push(t.name);
    else if (t.status !== before.get(t.id)) changed.set(t.status, [...(changed.get(t.status) || []), t.name]);
  }
  const threads = (names) => `${names.length > 1 ? "Threads" : "Thread"} ${names.join(", ")}`;
  const news = [...changed].map(([status, names]) => `${threads(names)} ${names.length > 1 ? "are" : "is"} now ${status.replaceAll("_", " ")}.`);
  if (added.length) news.push(`${threads(added)} added.`);
  if (state.session.status !== sessionBefore) news.push(`Session ${state.session.name} is now ${state.session.status}.`);
  if (news.length) say(news.join(" "));
  for (const t of state.session.threads) {
    if (!state.curves.has(t.id)) loadCurve(state, t.id);
    else if (ENDED.has(t.status) && !ENDED.has(before.get(t.id))) loadCurve(state, t.id, true); // its last generation, at once
  }
}

async function reloadAll(state) {
  state.curves.clear();
  await refreshSession(state);
  await loadEvents(state);
}

function renderSession(state) {
  const s = state.session;
  $("#session-title").innerHTML = `${esc(s.name)} ${sessionBadge(s)}`;
  $("#session-meta").textContent = `session ${s.id} · rig ${s.rig}${s.animal ? ` · ${s.animal}` : ""}${s.array ? ` · ${s.array}` : ""}`;
  $("#stop-session").disabled = s.status !== "active";
  const container = $("#threads");
  for (const thread of s.threads) {
    let card = $(`#thread-${thread.id}`);
    if (!card) {
      card = document.createElement("section");
      card.className = "card thread";
      card.id = `thread-${thread.id}`;
      card.setAttribute("aria-labelledby", `thread-${thread.id}-name`);
      card.innerHTML = `<div class="thread-head"><h2 id="thread-${thread.id}-name" tabindex="-1"></h2><span class="status"></span><span class="muted info"></span>
        <div class="controls"></div></div><div class="body"></div>`;
      container.append(card);
      if (thread.kind === "evolution") {
        $(".body", card).innerHTML = `<div class="curve"></div>${Charts.legend}<h3>Best image per generation</h3>
          <div class="strip"></div><h3 class="montage-title">Latest generation</h3><div class="montage"></div>`;
      } else if (thread.kind === "manifold") {
        $(".body", card).innerHTML = `<div class="manifold"><p class="muted">The map appears once the grid is presented.</p></div>`;
      } else {
        $(".body", card).innerHTML = `<p class="muted">A retest shows its evolution's best images again, once that evolution
          ends; <code>actmax analyze session</code> compares their new scores with their evolution scores.</p>`;
      }
    }
    $("h2", card).textContent = `${thread.name}`;
    $(".status", card).className = `status ${thread.status}`;
    $(".status", card).textContent = thread.status;
    const expression = thread.objective.expression;
    const objective = expression ? (expression.length > EXPRESSION_CHARS ? `${expression.slice(0, EXPRESSION_CHARS - 1)}…` : expression)
      : `channels ${channelList(thread.objective.channels, s.channel_labels)}`;
    const error = thread.last_error ? ` · ${thread.last_error}` : "";
    $(".info", card).textContent = `${thread.kind} · ${thread.generator} · ${thread.optimizer} · ${objective}${error}`;
    $(".info", card).title = expression && expression !== objective ? expression : "";
    renderControls(state, thread, $(".controls", card));
    if (thread.kind === "manifold" && thread.status === "finished" && !card.dataset.map) loadManifold(state, card, thread);
  }
}

// The thread's buttons, each named with the thread. Refreshes keep the buttons that stay (and their focus): one that
// goes away with focus (Pause -> Resume) hands it to the button now in its place, or to the thread's heading.
function renderControls(state, thread, box) {
  const buttons = [];
  const post = (action) => () => act(() => api(`/threads/${thread.id}/${action}`, { method: "POST" }), state);
  const live = ["running", "waiting_for_rig", "blocked"].includes(thread.status);  // not ended, not paused
  if (live) buttons.push(["Pause", post("pause")]);
  if (thread.status === "paused") buttons.push(["Resume", post("resume")]);
  const stop = post("stop");
  if (live || thread.status === "paused") {
    buttons.push(["Stop", () => confirm(`Stop thread '${thread.name}'? This is final.`) && stop(), "danger"]);
  }
  const mapped = state.session.threads.some((t) => t.kind === "manifold" && manifoldOf(state, t).source === thread.name);
  // A finished session takes new threads (it becomes active again); a stopped one does not.
  if (thread.kind === "evolution" && thread.status === "finished" && !mapped && state.session.status !== "stopped") {
    buttons.push(["Add Manifold thread", () => act(() => api(`/sessions/${state.session.id}/threads`, {
      method: "POST",
      body: JSON.stringify({ name: `${thread.name}-manifold`, kind: "manifold", generator: thread.generator,
        manifold: { source: thread.name }, objective: thread.objective, repeats: thread.repeats }),
    }), state), "", `Add Manifold thread around ${thread.name}`]);
  }
  const old = [...box.children], focused = old.indexOf(document.activeElement);
  const next = buttons.map(([label, onClick, cls = "", name = `${label} thread ${thread.name}`]) => {
    const action = label.toLowerCase();
    const b = old.find((o) => o.dataset.action === action) || document.createElement("button");
    b.textContent = label;
    b.dataset.action = action;
    b.className = cls;
    b.setAttribute("aria-label", name);
    b.onclick = oneAtATime(onClick);  // (this refresh's thread and session; busy is the button's, across refreshes)
    return b;
  });
  for (const b of old) if (!next.includes(b)) b.remove();
  next.forEach((b, i) => { if (box.children[i] !== b) box.insertBefore(b, box.children[i] ?? null); });
  if (focused >= 0 && !next.includes(old[focused])) (next[Math.min(focused, next.length - 1)] ?? $(`#thread-${thread.id}-name`)).focus();
}

// The curve: loaded whole once, then only the generations after the last one known (one load at a time).
function loadCurve(state, threadId, incremental = false) {
  const previous = state.curveLoads.get(threadId) || Promise.resolve();
  const next = previous.catch(() => {}).then(() => fetchCurve(state, threadId, incremental));
  state.curveLoads.set(threadId, next);
  return next;
}

async function fetchCurve(state, threadId, incremental) {
  const thread = state.session.threads.find((t) => t.id === threadId);
  if (!thread || thread.kind !== "evolution") return;
  const known = state.curves.get(threadId);
  const from = incremental && known && known.points.length ? known.points[known.points.length - 1].generation + 1 : 0;
  const curve = await api(`/threads/${threadId}/curve?from_generation=${from}`, { signal: state.signal });
  const points = from ? known.points.concat(curve.points) : curve.points;
  const segments = from ? known.segments.concat(curve.segments) : curve.segments; // those beginning from `from` on
  state.curves.set(threadId, { points, segments });
  drawThread(state, thread, points, segments);
}

function drawThread(state, thread, points, segments) {
  const card = $(`#thread-${thread.id}`);
  if (!card) return;
  $(".curve", card).innerHTML = Charts.scoreCurve(points, { label: thread.score_label, segments });
  const step = Math.max(1, Math.ceil(points.length / STRIP_IMAGES));
  const shown = points.filter((p, i) => (points.length - 1 - i) % step === 0 && p.best_stimulus_id);
  $(".strip", card).innerHTML = shown.map((p) => `<figure>${stimulusImg(p.best_stimulus_id, `generation ${p.generation}: max ${num(p.max)}`)}
    <figcaption>g${p.generation}</figcaption></figure>`).join("");
  fillImages($(".strip", card), state.signal);
  scheduleMontage(state, thread.id, card);
}

// The montage of the newest generation, at most every MONTAGE_EVERY_MS (a trailing refresh catches up).
// An ended thread's montage loads at once: no later generation will bring the trailing refresh.
function scheduleMontage(state, threadId, card) {
  const ended = ENDED.has(state.session.threads.find((t) => t.id === threadId)?.status);
  if (ended) clearTimeout(state.montageTimers.get(threadId));
  else if (state.montageTimers.has(threadId)) return;
  const wait = ended ? 0 : Math.max(0, (state.montageAt.get(threadId) || 0) + MONTAGE_EVERY_MS - Date.now());
  state.montageTimers.set(threadId, setTimeout(() => {
    state.montageTimers.delete(threadId);
    state.montageAt.set(threadId, Date.now());
    const points = state.curves.get(threadId)?.points; // (none while a reload reads the curves again)
    if (points?.length) loadMontage(state, card, points[points.length - 1].generation_id);
  }, wait));
}

async function loadMontage(state, card, generationId) {
  card.dataset.montage = generationId;
  const generation = await api(`/generations/${generationId}`, { signal: state.signal });
  if (card.dataset.montage !== String(generationId)) return; // a newer one was asked meanwhile
  $(".montage-title", card).textContent = `Latest generation (${generation.number}), by score`;
  const order = generation.stimulus_ids.map((id, i) => [generation.scores[i], id]).sort((a, b) => (b[0] ?? -Infinity) - (a[0] ?? -Infinity));
  $(".montage", card).innerHTML = order.map(([score, id]) => `<figure>${stimulusImg(id)}<figcaption>${num(score)}</figcaption></figure>`).join("");
  fillImages($(".montage", card), state.signal);
}

// A Manifold thread's settings (source, planes, step_deg), from the session's config: its optimizer has none.
function manifoldOf(state, thread) {
  return state.session.config.threads.find((t) => t.name === thread.name)?.manifold || {};
}

// The Manifold map (figure from the server) beside the grid of images it was measured on.
async function loadManifold(state, card, thread) {
  card.dataset.map = "loading";
  const [first] = (await api(`/threads/${thread.id}/generations?limit=1`, { signal: state.signal })).items;
  if (!first) return;
  const generation = await api(`/generations/${first.id}`, { signal: state.signal });
  const settings = manifoldOf(state, thread);
  const plane = settings.planes?.[0] || "pc2-3";
  const side = 180 / (settings.step_deg || 18) + 1;
  // Stimulus index k = i·side + j (θ index i, φ index j); shown like the map: θ across, φ up.
  const ids = [];
  for (let row = side - 1; row >= 0; row--) for (let col = 0; col < side; col++) ids.push(generation.stimulus_ids[col * side + row]);
  const box = $(".manifold", card);
  box.innerHTML = `<img data-src="/threads/${thread.id}/manifold.png?plane=0" alt="computing the Manifold map (plane ${esc(plane)}) ..."
      data-alt="Manifold map of thread ${esc(thread.name)} on the ${esc(plane)} plane: the smoothed response over θ and φ, with its level sets">
    <div><h3>Images on the ${esc(plane)} grid (${side} × ${side}; θ across, φ up)</h3>
    <div class="grid-images" style="grid-template-columns: repeat(${side}, 1fr)">${ids.map((id) => stimulusImg(id)).join("")}</div></div>`;
  fillImages(box, state.signal);
  card.dataset.map = "shown";
}

// ---------------------------------------------------------------- events and banner
async function loadEvents(state) {
  const first = await api(`/sessions/${state.session.id}/events?limit=1`, { signal: state.signal });
  const offset = Math.max(0, first.total - FEED_EVENTS);
  const page = await api(`/sessions/${state.session.id}/events?offset=${offset}&limit=${FEED_EVENTS}`, { signal: state.signal });
  $("#feed").replaceChildren();
  for (const event of page.items) addEvent({ ...event, event_id: event.id });
  const warning = await currentWarning(state, page.items);
  if (warning) showBanner(state, { ...warning, event_id: warning.id });
  else hideBanner(); // (what it showed is over: a rig lost while the stream was down is back)
}

// The newest banner warning among `events` that still holds: a rig loss is over once a later event says the
// session's threads run again, or once the rig is connected now (a page load does not raise an old alarm again).
async function currentWarning(state, events) {
  let runningAgain = false, connected;
  for (const event of [...events].reverse()) {
    if (RUNNING_AGAIN.has(event.kind)) runningAgain = true;
    if (event.level !== "warning" || !BANNER_KINDS.has(event.kind)) continue;
    if (event.kind !== "rig.lost") return event;
    if (runningAgain) continue;
    connected ??= (await api(`/rigs/${encodeURIComponent(state.session.rig)}?batches=1`, { signal: state.signal })).connected;
    if (!connected) return event;
  }
  return null;
}

function addEvent(event) {
  const feed = $("#feed");
  if (!feed || feed.querySelector(`[data-id="${event.event_id}"]`)) return;
  const row = document.createElement("div");
  row.dataset.id = event.event_id;
  row.className = event.kind === "generation.completed" ? "quiet" : event.level;
  row.innerHTML = `<time title="${esc(dateTime(event.time))}">${clock(event.time)}</time>${esc(event.message)}`;
  feed.prepend(row);
  while (feed.childElementCount > FEED_EVENTS) feed.lastElementChild.remove();
}

// Only while the session is active (a lost rig or a drifting recording no longer matters once it ended),
// and a lost rig only when it is the session's (a rig that served no thread loses no session's event).
// The banner is an alert: a reload that finds the same warning again leaves it as it is (not announced again).
function showBanner(state, event) {
  if (state.session.status !== "active" || (event.data?.rig ?? state.session.rig) !== state.session.rig) return;
  const banner = $("#banner");
  if (banner.dataset.event === String(event.event_id)) return;
  banner.dataset.event = event.event_id;
  // Its time, as the feed writes it: an alarm from an hour ago is not read as news.
  banner.innerHTML = `⚠ <time title="${esc(dateTime(event.time))}">${clock(event.time)}</time>: ${esc(event.message)} <button>dismiss</button>`;
  banner.hidden = false;
  $("button", banner).addEventListener("click", () => {
    if (banner.contains(document.activeElement)) $("#session-title").focus(); // not lost to the page's top
    banner.hidden = true;
  });
}

function hideBanner() {
  $("#banner").hidden = true;
  delete $("#banner").dataset.event;
}

// ---------------------------------------------------------------- rig panel
// On rig and batch events (several a second while a session runs): one request a second at most.
function scheduleRig(state) {
  state.rigTimer ??= setTimeout(() => { state.rigTimer = null; loadRig(state); }, 1000);
}

// A batch's thread: its name, and its session's id when it is another session's (the rig is shared).
function batchThread(state, id) {
  const own = state.session.threads.find((t) => t.id === id);
  if (own) return own.name;
  if (!state.otherThreads.has(id)) {
    state.otherThreads.set(id, api(`/threads/${id}`, { signal: state.signal }).then((t) => `${t.name} (session ${t.session_id})`, () => `thread ${id}`));
  }
  return state.otherThreads.get(id);
}

// The panel is polled every 2 s: each part is rewritten only when it changed, so what has focus in it keeps it.
const drawn = new WeakMap();
function draw(element, html) {
  if (drawn.get(element) === html) return false;
  drawn.set(element, html);
  element.innerHTML = html;
  return true;
}

async function loadRig(state) {
  let rig;
  try {
    rig = await api(`/rigs/${encodeURIComponent(state.session.rig)}?batches=8`, { signal: state.signal });
  } catch (error) {
    if (error instanceof Offline) rigUnknown();
    return;
  }
  const threads = await Promise.all(rig.batches.map((b) => batchThread(state, b.thread_id)));
  const box = $("#rig");
  if (!box || state.signal.aborted) return; // (batchThread answers even when its view was left)
  box.className = "card";
  const status = $("h2 .status", box);
  status.className = `status ${rig.connected ? "running" : "stopped"}`;
  status.textContent = rig.connected ? "connected" : "not connected";
  const lines = scoredLines(rig.scored_channels, rig.channel_labels).map(esc);
  const open = $("details", box)?.open; // what was unfolded stays so
  const channels = lines.slice(0, RIG_LINES).join("<br>") + (lines.length > RIG_LINES
    ? `<details><summary>… ${lines.length - RIG_LINES} more</summary>${lines.slice(RIG_LINES).join("<br>")}</details>` : "");
  if (draw($(".scored", box), channels || "–") && open && $("details", box)) $("details", box).open = true;
  draw($(".channels", box), `${rig.channels ?? "–"}`);
  draw($(".heard", box), rig.heard_s_ago == null ? "–" : `${rig.heard_s_ago.toFixed(1)} s ago (heartbeat ${rig.heartbeat_s} s)`);
  draw($(".setup", box), setupLines(rig.setup).map(esc).join("<br>") || "–");
  draw($("tbody", box), rig.batches.map((b, i) => `<tr><td>${esc(threads[i])}</td><td>${b.generation}</td><td>${ms(b.first_result_ms)}</td>
    <td>${ms(b.complete_ms)}</td><td>${ms(b.turnaround_ms)}</td></tr>`).join(""));
}

// While the server cannot be reached, what the panel last showed is greyed out: nothing about the rig is known.
function rigUnknown() {
  const box = $("#rig");
  if (!box) return;
  box.className = "card stale";
  const status = $("h2 .status", box);
  status.className = "status unknown";
  status.textContent = "unknown (server unreachable)";
}

// ---------------------------------------------------------------- start
$("#logout").addEventListener("click", () => logout());
window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason instanceof Unauthorized) { event.preventDefault(); logout("Wrong token: the server refused it."); }
  if (event.reason instanceof Offline) event.preventDefault(); // (rigUnknown and the live badge say so)
  if (abandoned(event.reason)) event.preventDefault(); // a request of a view left: nothing to say
});
route();
