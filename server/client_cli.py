"""``actmax session|thread``: a command-line client of the REST API (reads ACTMAX_URL and ACTMAX_TOKEN),
and ``actmax weights list|verify`` (local: where this machine's server finds generator weights)."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
import unicodedata
import uuid
from datetime import UTC, datetime
from pathlib import Path

from rig_client.connection import positive, positive_int
from server import ServerError

DEFAULT_URL = "http://127.0.0.1:8000"
FIRST_TIMEOUT_S = 5.0  # for the first request to a server: a wrong port is named in seconds
REQUEST_TIMEOUT_S = 30.0  # for every other request
CREATE_ATTEMPTS = 3  # `session create` sends its POST this often (one Idempotency-Key) to a server that does not answer
ENDED = {"stopped", "finished"}
WATCH_BACKOFF_MAX_S = 30.0  # `session watch` polls a server that stopped answering at most this far apart
# Info events `session watch` prints besides warnings and errors: each explains a jump in the scores or a gap,
# or is the experimenter's own note.
WATCH_INFO_KINDS = frozenset({"thread.retargeted", "thread.extended", "thread.resumed", "generation.left_pending",
                              "session.note"})


def idempotency_key(text: str) -> str:
    """An ``Idempotency-Key`` header value: 1-200 printable ASCII characters."""
    if not (1 <= len(text) <= 200 and all(" " <= c <= "~" for c in text)):
        raise argparse.ArgumentTypeError(f"{text!r}: a key is 1 to 200 printable ASCII characters")
    return text


def generation_range(text: str) -> list[int]:
    """``12-14`` (or ``12``, one generation) as ``[12, 14]``."""
    first, _, last = text.partition("-")
    try:
        bounds = [int(first), int(last or first)]
    except ValueError:
        bounds = []
    if not bounds or min(bounds) < 0 or bounds[0] > bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIRST-LAST, e.g. 12-14, or one generation, e.g. 12 "
                                         "(numbers from 0, FIRST <= LAST)")
    return bounds


SESSION_ID = "the session's id (`actmax session list`)"
THREAD_IDS = ("thread ids count across the whole server, not within a session (`actmax session show SESSION` lists "
              "a session's): a second session's first thread may be 4")


def _interval(text: str) -> float:
    """argparse type: seconds between polls, > 0 and at most an hour."""
    seconds = positive(text)
    if seconds > 3600:
        raise argparse.ArgumentTypeError(f"{text}: at most 3600 s between polls")
    return seconds


def add_parser(subcommands) -> None:
    session = subcommands.add_parser(
        "session", help="create, list, show, pause, resume, stop, annotate and watch sessions on a running server",
        description="Talk to `actmax serve` over REST. The server is ACTMAX_URL (default "
        f"{DEFAULT_URL}); the token is ACTMAX_TOKEN.")
    commands = session.add_subparsers(dest="session_command", required=True, metavar="SESSION_COMMAND")
    create = commands.add_parser("create", help="create a session from a .json, .yaml or .yml config file",
                                 description="POST the config with an Idempotency-Key, and send it again with the same "
                                 "key when the server does not answer in time: the session is created at most once.")
    create.add_argument("file", type=Path, help="session config (docs/session_config.md)")
    create.add_argument("--idempotency-key", metavar="KEY", type=idempotency_key,
                        help="the key to send (default: a new random one): a script that runs this command again "
                        "after a failure, with the same key and file, gets the session created the first time")
    create.set_defaults(func=create_session)
    commands.add_parser("list", help="every session, oldest first").set_defaults(func=list_sessions)
    show = commands.add_parser("show", help="a session and its threads: status, seed, generator, optimizer, "
                               "objective, generations")
    show.add_argument("id", type=int, help=SESSION_ID)
    show.set_defaults(func=show_session)
    for action, text in (("pause", "pause every running, waiting or blocked thread of a session (a thread added "
                                   "while all of them are paused starts paused)"),
                         ("resume", "resume every paused thread of a session"),
                         ("stop", "stop every thread of a session, and the session")):
        command = commands.add_parser(action, help=text)
        command.add_argument("id", type=int, help=SESSION_ID)
        command.set_defaults(func=session_action, action=action)
    add = commands.add_parser("add-thread", help="add a thread to a session from a .json, .yaml or .yml file",
                              description="The file holds one thread config: one entry of a session config's "
                              "`threads` (docs/session_config.md), without the leading `- ` of a YAML list.")
    add.add_argument("id", type=int, help=SESSION_ID)
    add.add_argument("file", type=Path, help="thread config (name, generator, optimizer, objective, ...)")
    add.set_defaults(func=add_thread)
    note = commands.add_parser("note", help="write a note into a session's event log, e.g. what happened on the rig",
                               description="A `session.note` event: it is in the event log, `session watch` and the "
                               "dashboard's feed, and may be written to a session in any status, an ended one too.")
    note.add_argument("id", type=int, help=SESSION_ID)
    note.add_argument("text", help="the note (up to 2000 characters)")
    note.add_argument("--thread", type=int, metavar="THREAD", help="the id of the thread it is about; " + THREAD_IDS)
    note.add_argument("--generations", type=generation_range, metavar="FIRST-LAST",
                      help="the generations it is about, e.g. 12-14 or 12 (needs --thread)")
    note.set_defaults(func=note_session)
    watch = commands.add_parser("watch", help="print each generation as it completes until the session ends",
                                description="A line per completed generation, thread status change, warning, "
                                "note, retarget, extension, restart and generation left pending, each starting with "
                                "its local time and offset from UTC, in the order they happened: first what happened "
                                "since the session began (all of an ended session), then each as it happens, until "
                                "the session ends. A server that stops answering (a restart) is waited for. Exits 0 when the session "
                                "ended with no thread failed, 1 when a thread of it failed (for scripts: "
                                "`actmax session watch 3 && ...`).")
    watch.add_argument("id", type=int, help=SESSION_ID)
    watch.add_argument("--interval", type=_interval, default=1.0,
                       help="seconds between polls (default 1, at most 3600)")
    watch.set_defaults(func=watch_session)

    thread = subcommands.add_parser("thread", help="pause, resume, stop, extend or retarget threads on a running "
                                    "server", description="Steer threads over REST (ACTMAX_URL, ACTMAX_TOKEN).")
    commands = thread.add_subparsers(dest="thread_command", required=True, metavar="THREAD_COMMAND")
    for action, text in (("pause", "finish the current generation, then wait"), ("resume", "go on (a paused thread, or a failed one once its cause is fixed)"),
                         ("stop", "stop for good")):
        command = commands.add_parser(action, help=text + "; a line per thread, non-zero exit if any was refused")
        command.add_argument("ids", type=int, nargs="+", metavar="ID", help="one or more thread ids; " + THREAD_IDS)
        command.set_defaults(func=thread_action, action=action)
    extend = commands.add_parser("extend", help="raise an evolution's number of generations; a finished one goes on "
                                 "from its stored optimizer state")
    extend.add_argument("id", type=int, help="the thread's id; " + THREAD_IDS)
    extend.add_argument("--generations", type=positive_int, required=True, metavar="N",
                        help="the thread's new total number of generations (more than it has asked so far)")
    extend.set_defaults(func=extend_thread)
    retarget = commands.add_parser("retarget", help="change the objective from the next generation on (the pending "
                                   "one if none of its responses arrived yet); prints which")
    retarget.add_argument("id", type=int, help="the thread's id; " + THREAD_IDS)
    target = retarget.add_mutually_exclusive_group(required=True)
    target.add_argument("--channels", type=int, nargs="+", metavar="CHANNEL", help="channels to maximise")
    target.add_argument("--expression", help='an objective expression, e.g. "zscore(rate(5)) - 0.5 * rate(2)"; one '
                        'that starts with a minus takes an =: --expression=-rate(0)')
    retarget.add_argument("--combine", choices=("mean", "sum"), default="mean", help="with --channels (default mean)")
    retarget.set_defaults(func=retarget_thread)

    weights = subcommands.add_parser(
        "weights", help="list or verify generator weights on this machine",
        description="Where each generator's weights are looked for (ACTMAX_WEIGHTS_DIR/<generator>/, then the "
        "generator's standard locations), whether they load, and their sha256: each generator is loaded as "
        "`actmax serve` with the same settings loads it, on its device and in its precision (ACTMAX_DEVICE, "
        "ACTMAX_PRECISION, or --device and --precision), which the first line (on stderr) names.")
    commands = weights.add_subparsers(dest="weights_command", required=True, metavar="WEIGHTS_COMMAND")
    listing = commands.add_parser("list", help="every generator: where it looks, found or missing, sha256")
    listing.set_defaults(func=list_weights)
    verify = commands.add_parser("verify", help="load each generator and render images (finite, and different for "
                                 "different codes); non-zero exit if any fails")
    verify.add_argument("names", nargs="*", metavar="GENERATOR", help="generators to verify (default: all)")
    verify.set_defaults(func=verify_weights)
    for command in (listing, verify):
        command.add_argument("--device", help="torch device to load on: auto, cpu, cuda, ... (default: ACTMAX_DEVICE, "
                             "else auto, as `actmax serve`)")
        command.add_argument("--precision", choices=["float32", "float16", "bfloat16"],
                             help="precision to load in (default: ACTMAX_PRECISION, else float32, as `actmax serve`)")


# ---------------------------------------------------------------------------- REST client
def address() -> tuple[str, str]:
    """ACTMAX_URL and ACTMAX_TOKEN (a one-line error when either cannot be used)."""
    from server.settings import check_token

    token = os.environ.get("ACTMAX_TOKEN")
    if not token:
        raise ServerError("no API token: set ACTMAX_TOKEN to the server's token")
    url = os.environ.get("ACTMAX_URL", DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ServerError(f"ACTMAX_URL must start with http:// or https://, e.g. {DEFAULT_URL} (it is {url!r})")
    return url, check_token(token)


def api():
    """The REST client of ACTMAX_URL with ACTMAX_TOKEN."""
    from server.launch import ApiClient

    return ApiClient(*address(), timeout=REQUEST_TIMEOUT_S, client="cli")


class Unreachable(ServerError):
    """The server did not answer at all (not running, restarting, a wrong ACTMAX_URL)."""


def _unreachable(url: str, exc: Exception) -> Unreachable:
    return Unreachable(f"cannot reach the server at {url}: {exc}; is `actmax serve` running? (set ACTMAX_URL)")


@functools.cache
def check_server(url: str) -> None:
    """``GET /health`` with a short timeout, once per URL: a port that is not actmax's REST API (the rigs'
    ZeroMQ port, another service) is named in seconds, not after a request's long timeout."""
    import httpx

    try:
        health = httpx.get(f"{url}/health", timeout=FIRST_TIMEOUT_S).json()
    except (httpx.ReadTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, ValueError):  # no HTTP
        health = None
    except httpx.TransportError as exc:
        if not _reset(exc):  # a reset: something listens there, and hung up on HTTP
            raise _unreachable(url, exc) from None
        health = None
    if not (isinstance(health, dict) and "status" in health):
        raise ServerError(f"{url} answered, but not as actmax's REST API: ACTMAX_URL is the REST address of "
                          f"`actmax serve` (its --port, e.g. {DEFAULT_URL}), not the rigs' ZeroMQ port")


def _reset(exc: BaseException | None) -> bool:
    """Whether ``exc`` came from a connection reset by its peer (wrapped by httpx and httpcore)."""
    while exc is not None and not isinstance(exc, ConnectionResetError):
        exc = exc.__cause__ or exc.__context__
    return exc is not None


def call(method: str, path: str, body: dict | None = None):
    import httpx

    client = api()
    try:
        check_server(client.url)
        return client.get(path) if method == "GET" else client.post(path, body)
    except httpx.TransportError as exc:
        raise _unreachable(client.url, exc) from None
    finally:
        client.close()


def padded(text: str, columns: int) -> str:
    """``text`` left-aligned in ``columns`` terminal columns, for a table's name column (``f"{text:<20}"``
    counts code points): a wide character (CJK, most emoji) takes two columns, a combining mark (an NFD
    umlaut) or a zero-width one (a joiner, a variation selector) none, and a character the console cannot
    encode the escape it is printed as (``server.cli``)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    shown = text.encode(encoding, "backslashreplace").decode(encoding)
    width = sum(0 if unicodedata.category(c) in ("Mn", "Me", "Cf") else
                2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in shown)
    return text + " " * max(columns - width, 0)


def print_threads(threads: list[dict]) -> None:
    print(f"  {'thread':>6}  {'name':<20} {'kind':<10} {'status':<16} last error")
    for t in threads:
        print(f"  {t['id']:>6}  {padded(t['name'], 20)} {t['kind']:<10} {t['status']:<16} {t.get('last_error') or ''}")


def create_session(args) -> int:
    from server.session_config import read_config_file

    response = post_session(read_config_file(args.file), args.idempotency_key or uuid.uuid4().hex)
    session = response.json()
    earlier = " (by an earlier request with this Idempotency-Key: nothing new was created)" \
        if response.headers.get("Idempotency-Replayed") == "true" else ""
    print(f"session {session['id']} {session['name']!r} created for rig {session['rig']!r}{earlier}")
    print_threads(session["threads"])
    if warning := response.headers.get("X-Actmax-Warning"):  # e.g. the rig already runs another active session
        sys.stdout.flush()  # the table first, also when both go to one file
        print(f"actmax session: warning: {unescaped(warning)}", file=sys.stderr)
    return 0


ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")  # as ascii() writes one, or a backslash


def unescaped(header: str) -> str:
    """A header's text with the names the server escaped to ASCII (``ascii(name)``: ``'\\u5b9f\\u9a13'``) as
    ``repr(name)`` shows them (``'実験'``): a printable character itself, an escaped backslash and a control
    character still escaped. The console's encoding escapes what it cannot show (``server.cli``)."""
    def shown(escape: re.Match) -> str:
        if escape[1] == "\\":  # a backslash of the name: repr() escapes it too
            return escape[0]
        character = chr(int(escape[1][1:], 16))
        return character if character.isprintable() else escape[0]

    return ESCAPE.sub(shown, header)


def post_session(config: dict, key: str):
    """``POST /sessions`` with ``key`` as its Idempotency-Key; a request that gets no answer in time (the session
    may have been created all the same) is sent again with the same key, up to ``CREATE_ATTEMPTS`` times, so that
    the server creates the session at most once. The response."""
    import httpx

    from server.launch import error_text

    url, token = address()
    check_server(url)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key, "X-Actmax-Client": "cli"}
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                response = http.post("/sessions", json=config)
                break
            except httpx.TimeoutException:
                if attempt == CREATE_ATTEMPTS:
                    raise ServerError(
                        f"POST /sessions: no answer from {url} within {REQUEST_TIMEOUT_S:.0f} s, {attempt} times; the "
                        "session may have been created: `actmax session list` shows it, and `actmax session create "
                        f"FILE --idempotency-key {key}` asks again without creating a second one") from None
                print(f"actmax session: POST /sessions got no answer within {REQUEST_TIMEOUT_S:.0f} s; sending it "
                      f"again with the same Idempotency-Key {key}, so that the server creates the session at most once",
                      file=sys.stderr, flush=True)
            except httpx.TransportError as exc:
                raise _unreachable(url, exc) from None
    if response.is_error:
        raise ServerError(f"POST /sessions: HTTP {response.status_code}: {error_text(response)}")
    return response


def session_status(session: dict) -> str:
    """The session's status, with how many of its threads failed: ``finished (1 of 3 threads failed)``."""
    counts = session.get("threads_by_status", {})  # (an older server leaves it out)
    if not (failed := counts.get("failed", 0)):
        return session["status"]
    return f"{session['status']} ({failed} of {sum(counts.values())} threads failed)"


def list_sessions(args) -> int:
    sessions = call("GET", "/sessions")
    statuses = [session_status(s) for s in sessions]
    width = max([9, *map(len, statuses)])
    print(f"{'id':>4}  {'name':<30} {'rig':<16} {'status':<{width}} created")
    for s, status in zip(sessions, statuses, strict=True):
        print(f"{s['id']:>4}  {padded(s['name'], 30)} {s['rig']:<16} {status:<{width}} {s['created_at']}")
    return 0


def show_session(args) -> int:
    """The session, its threads' statuses, then what each thread runs: seed (a drawn one too), generator,
    optimizer with its configured hyperparameters, objective, generations done of those configured."""
    session = call("GET", f"/sessions/{args.id}")
    print(f"session {session['id']} {session['name']!r} on rig {session['rig']!r}: {session_status(session)}")
    print_threads(session["threads"])
    for t in session["threads"]:
        done = call("GET", f"/threads/{t['id']}/generations?status=complete&limit=1")["total"]
        generator = f"{t['generator']} {t['generator_version'] or ''}".rstrip()
        params = ", ".join(f"{key}={shortened(value)}" for key, value in t["optimizer_params"].items())
        optimizer = f"{t['optimizer']} ({params})" if params else t["optimizer"]
        print(f"  thread {t['id']} {t['name']!r}: seed {t['seed']}, generator {generator}, optimizer {optimizer}, "
              f"objective {objective_text(t['objective'])}, generations {done} of {t['n_generations']} done")
    return 0


def shortened(value) -> str:
    """A setting as ``session show`` prints it: a long list (a seeded thread's ``init_code``) as its length."""
    if isinstance(value, list | tuple) and len(str(value)) > 40:
        return f"[{len(value)} values]"
    return str(value)


def objective_text(objective: dict) -> str:
    """A thread's objective in one line: ``mean of channels 0, 3`` or its expression."""
    if objective.get("expression"):
        return objective["expression"]
    from server.objectives import channel_ranges

    return f"{objective.get('combine', 'mean')} of channel(s) {channel_ranges(objective['channels'])}"


def session_action(args) -> int:
    """``session pause|resume|stop ID``: the session's status, then its threads'."""
    session = call("POST", f"/sessions/{args.id}/{args.action}")
    print(f"session {session['id']} {session_status(session)}")
    print_threads(session["threads"])
    return 0


def add_thread(args) -> int:
    from server.session_config import ConfigError, read_config_file

    try:
        config = read_config_file(args.file)
    except ConfigError as error:
        if "is a mapping" not in str(error):
            raise
        raise ConfigError(f"{args.file}: a thread config is one mapping (name, generator, optimizer, objective, ...): "
                          "one entry of a session config's `threads`, without the leading `- `") from None
    if "threads" in config:
        raise ConfigError(f"{args.file} is a session config: add-thread takes one thread, one entry of its `threads`")
    thread = call("POST", f"/sessions/{args.id}/threads", config)
    print(f"thread {thread['id']} {thread['name']!r} added to session {thread['session_id']}")
    print_threads([thread])
    if thread["status"] == "paused":
        print(f"it waits, paused like the session's other threads: `actmax session resume {thread['session_id']}` "
              "resumes them all")
    return 0


def note_session(args) -> int:
    if args.generations and args.thread is None:
        raise ServerError("--generations needs --thread: the thread whose generations the note is about")
    event = call("POST", f"/sessions/{args.id}/notes",
                 {"text": args.text, "thread_id": args.thread, "generations": args.generations})
    print(f"{clock(event['time'])} session {event['session_id']}: {event['message']}")
    return 0


def thread_action(args) -> int:
    """``thread pause|resume|stop ID...``: a line per thread, its new status or why it was refused; non-zero when
    any was refused."""
    refused = 0
    for thread_id in args.ids:
        try:
            thread = call("POST", f"/threads/{thread_id}/{args.action}")
        except Unreachable:
            raise
        except ServerError as exc:
            refused += 1
            print(f"actmax thread: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"thread {thread['id']} {thread['name']!r}: {thread['status']}", flush=True)
    return 2 if refused else 0


def extend_thread(args) -> int:
    before = call("GET", f"/threads/{args.id}")["n_generations"]
    thread = call("POST", f"/threads/{args.id}/extend", {"n_generations": args.generations})
    if thread["n_generations"] == before:  # extended to this total before: nothing changed
        print(f"thread {thread['id']} {thread['name']!r} runs {before} generations already: {thread['status']}")
    else:
        print(f"{logged(thread, 'thread.extended')['message']}: {thread['status']}")
    return 0


def retarget_thread(args) -> int:
    objective = {"expression": args.expression} if args.expression else \
        {"channels": args.channels, "combine": args.combine}
    before = call("GET", f"/threads/{args.id}")["objective"]
    thread = call("POST", f"/threads/{args.id}/retarget", {"objective": objective})
    if thread["objective"] == before:  # the objective it has: nothing changed, nothing logged
        print(f"thread {thread['id']} {thread['name']!r} scores this objective already: {thread['score_label']}")
    else:
        print(logged(thread, "thread.retargeted")["message"])
    return 0


def logged(thread: dict, kind: str) -> dict:
    """The latest ``kind`` event of ``thread``: the one the server logged for it just now (a retarget names the
    new objective and the generation it applies from; an extension the old and new number of generations)."""
    path = f"/sessions/{thread['session_id']}/events?kind={kind}&thread_id={thread['id']}"
    total = call("GET", f"{path}&limit=1")["total"]
    return call("GET", f"{path}&offset={total - 1}&limit=1")["items"][0]


def _number(value) -> str:
    return "" if value is None else f"{value:z.3f}"  # z: -0.0001 prints 0.000


def _time(text: str) -> datetime:
    """A server timestamp (UTC), in this machine's time zone."""
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone()


def clock(text: str | None = None) -> str:
    """A server timestamp (None: this moment) as the CLI prints it: local time and its offset from UTC,
    ``2026-11-30 14:25:05+0900`` (as ``actmax``'s log lines)."""
    moment = datetime.now().astimezone() if text is None else _time(text)
    return f"{moment:%Y-%m-%d %H:%M:%S%z}"


def status_after(event: dict, before: str | None) -> str | None:
    """The status a session event leaves its thread in, ``before`` the one its earlier events left; None for an
    event that changes no thread's status. ``thread.<status>`` (paused, running, finished, ...) says it;
    ``thread.started`` is running, and so is ``thread.resumed`` after a restart unless the thread was taken up
    paused; an extension runs a finished evolution again, a retarget a blocked thread."""
    from server.store.models import ThreadStatus

    kind = event["kind"].removeprefix("thread.")
    if kind in {status.value for status in ThreadStatus}:
        return kind
    if kind == "resumed" and (event.get("data") or {}).get("paused"):
        return ThreadStatus.PAUSED.value
    if kind in ("started", "resumed") or (kind, before) in (("extended", "finished"), ("retargeted", "blocked")):
        return ThreadStatus.RUNNING.value
    return None


def watch_session(args) -> int:
    """A line per completed generation (per thread), per thread status change (from its ``thread.*`` event,
    ``status_after``), per warning or error event (drift alarms, refused results, a lost rig) and per
    ``WATCH_INFO_KINDS`` event (a retarget, an extension, a restart, a generation left pending, a note), each
    starting with its time, in the order they happened, until the session ends: first everything since the session
    began, then each as it happens.
    A server that stops answering (a restart, a crash) is waited for, with a line on stderr, starting with its time
    too, when it goes and when it comes back. 1 when a thread of the ended session failed, else 0."""
    shown: dict[int, int] = {}  # thread id -> its complete generations printed
    statuses: dict[int, str] = {}  # thread id -> the status its events printed so far left it in
    names: dict[int, str] = {}
    events_seen = 0
    call("GET", f"/sessions/{args.id}")  # an unknown session or server: the error alone, before the header
    print(f"{'time':<24} {'thread':<20} {'gen':>4} {'mean':>9} {'max':>9} {'ref mean':>9} {'latency s':>9}",
          flush=True)
    lines: list[tuple[str, str]] = []  # (time, line) not yet printed, printed in time order after a whole poll
    away = delay = 0.0  # seconds the server has not answered, and the wait before asking again
    while True:
        try:
            session = call("GET", f"/sessions/{args.id}")
            names.update((t["id"], t["name"]) for t in session["threads"])
            while page := call("GET", f"/sessions/{args.id}/events?offset={events_seen}&limit=100")["items"]:
                for thread_id in {event["thread_id"] for event in page} - {None, *names}:  # a thread added since
                    names[thread_id] = call("GET", f"/threads/{thread_id}")["name"]
                events_seen += len(page)
                for event in page:
                    thread_id = event["thread_id"]
                    if event["level"] in ("warning", "error") or event["kind"] in WATCH_INFO_KINDS:
                        lines.append((event["time"], f"{event['level'].upper():<8} "
                                      f"{names.get(thread_id, '-')}: {event['kind']}: {event['message']}"))
                    if thread_id is not None and (status := status_after(event, statuses.get(thread_id))) \
                            not in (None, statuses.get(thread_id)):
                        statuses[thread_id] = status
                        lines.append((event["time"], f"{padded(names[thread_id], 20)} {status}"))
            for thread in session["threads"]:
                while page := call("GET", f"/threads/{thread['id']}/generations?status=complete"
                                   f"&offset={shown.get(thread['id'], 0)}&limit=1000")["items"]:
                    shown[thread["id"]] = shown.get(thread["id"], 0) + len(page)
                    lines += [(g["completed_at"], f"{padded(thread['name'], 20)} {g['number']:>4} "
                               f"{_number(g['mean_score']):>9} {_number(g['max_score']):>9} "
                               f"{_number(g['reference_mean']):>9} {_number(g.get('rig_latency_s')):>9}")
                              for g in page]
        except Unreachable as exc:
            if not away:
                print(f"{clock()} actmax session watch: {exc}; waiting for it (Ctrl-C to stop)", file=sys.stderr,
                      flush=True)
            delay = min(max(args.interval, 2 * delay), WATCH_BACKOFF_MAX_S)
            time.sleep(delay)
            away += delay
            continue
        if away:
            print(f"{clock()} actmax session watch: the server answers again after {away:.0f} s", file=sys.stderr,
                  flush=True)
            away = delay = 0.0
        for moment, line in sorted(lines, key=lambda item: _time(item[0])):
            print(f"{clock(moment)} {line}", flush=True)
        lines.clear()
        if session["status"] in ENDED:
            print(f"session {session['id']} {session_status(session)}", flush=True)
            return 1 if session.get("threads_by_status", {}).get("failed") else 0
        time.sleep(args.interval)


# ---------------------------------------------------------------------------- weights
def _cache(args):
    """The server's generator cache, with its settings and --device and --precision over them; says on stderr where
    the generators load (a device this torch cannot use is refused here)."""
    from server.settings import load_settings
    from server.weights import GeneratorCache, generators_device

    settings = load_settings({"device": ("--device", args.device), "precision": ("--precision", args.precision)})
    on = generators_device(settings.device, settings.precision, "--device or ACTMAX_DEVICE")
    print(f"actmax weights {args.weights_command}: generators on {on}, as `actmax serve` with these settings",
          file=sys.stderr, flush=True)
    return GeneratorCache(settings.device, settings.weights_dir, settings.precision)


def list_weights(args) -> int:
    from tqdm import tqdm

    import generators

    cache = _cache(args)
    statuses = [cache.status(name) for name in tqdm(generators.available(), desc="loading", leave=False,
                                                    disable=not sys.stderr.isatty())]
    print(f"{'generator':<18} {'weights':<8} {'sha256':<64} looks in")
    for s in statuses:
        print(f"{s.generator:<18} {s.label:<8} {s.sha256 or '-':<64} {s.source}")
        if s.problem:
            print("    " + s.problem.replace("\n", "\n    "))
    return 0


def verify_weights(args) -> int:
    from tqdm import tqdm

    import generators

    unknown = sorted(set(args.names) - set(generators.available()))
    if unknown:
        print(f"actmax weights verify: unknown generator(s) {', '.join(unknown)}; registered: "
              f"{', '.join(generators.available())}", file=sys.stderr)
        return 2
    cache, statuses = _cache(args), []
    for name in tqdm(args.names or generators.available(), desc="verifying", leave=False,
                     disable=not sys.stderr.isatty()):
        status = cache.status(name)
        if status.found:
            try:  # images not finite, or one image for every code
                problem = generators.base.ignores_codes(cache.get(name))
            except generators.GeneratorError as error:
                problem = str(error)
            if problem is not None:
                status = status.__class__(name, False, status.source, status.sha256, problem)
        statuses.append(status)
    for status in statuses:  # after the bar, which would cut into the table
        first, _, rest = (status.sha256 if status.found else status.problem).partition("\n")  # a problem: the paths tried, what to do
        print(f"{status.generator:<18} {'ok' if status.found else 'FAILED':<7} {first}")
        if rest:
            print("    " + rest.replace("\n", "\n    "))
    failed = [status.generator for status in statuses if not status.found]
    if failed:
        print(f"actmax weights verify: {len(failed)} generator(s) cannot be used: {', '.join(failed)}; "
              "`actmax weights list` says where each looks", file=sys.stderr)
        return 1
    return 0
