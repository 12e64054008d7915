"""``actmax session|thread``: a command-line client of the REST API (reads ACTMAX_URL and ACTMAX_TOKEN),
and ``actmax weights list|verify`` (local: where this machine's server finds generator weights)."""

from __future__ import annotations

import functools
import os
import sys
import time
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

from rig_client.connection import positive
from server import ServerError

DEFAULT_URL = "http://127.0.0.1:8000"
FIRST_TIMEOUT_S = 5.0  # for the first request to a server: a wrong port is named in seconds
ENDED = {"stopped", "finished"}
WATCH_BACKOFF_MAX_S = 30.0  # `session watch` polls a server that stopped answering at most this far apart
# Info events `session watch` prints besides warnings and errors: each explains a jump in the scores or a gap.
WATCH_INFO_KINDS = frozenset({"thread.retargeted", "thread.resumed", "generation.left_pending"})


def add_parser(subcommands) -> None:
    session = subcommands.add_parser(
        "session", help="create, list, show, stop and watch sessions on a running server",
        description="Talk to `actmax serve` over REST. The server is ACTMAX_URL (default "
        f"{DEFAULT_URL}); the token is ACTMAX_TOKEN.")
    commands = session.add_subparsers(dest="session_command", required=True, metavar="SESSION_COMMAND")
    create = commands.add_parser("create", help="create a session from a .json, .yaml or .yml config file")
    create.add_argument("file", type=Path, help="session config (docs/session_config.md)")
    create.set_defaults(func=create_session)
    commands.add_parser("list", help="every session, oldest first").set_defaults(func=list_sessions)
    show = commands.add_parser("show", help="a session and its threads: status, seed, generator, optimizer, "
                               "objective, generations")
    show.add_argument("id", type=int, help="the session's id (`actmax session list`)")
    show.set_defaults(func=show_session)
    stop = commands.add_parser("stop", help="stop every thread of a session, and the session")
    stop.add_argument("id", type=int)
    stop.set_defaults(func=stop_session)
    watch = commands.add_parser("watch", help="print each generation as it completes until the session ends",
                                description="A line per completed generation, thread status change, warning, "
                                "retarget, restart and generation left pending, until the session ends. A server "
                                "that stops answering (a restart) is waited for.")
    watch.add_argument("id", type=int, help="the session's id (`actmax session list`)")
    watch.add_argument("--interval", type=positive, default=1.0, help="seconds between polls (default 1)")
    watch.set_defaults(func=watch_session)

    thread = subcommands.add_parser("thread", help="pause, resume or retarget a thread on a running server",
                                    description="Steer one thread over REST (ACTMAX_URL, ACTMAX_TOKEN).")
    commands = thread.add_subparsers(dest="thread_command", required=True, metavar="THREAD_COMMAND")
    for action, text in (("pause", "finish the current generation, then wait"), ("resume", "go on (a paused thread, or a failed one once its cause is fixed)"),
                         ("stop", "stop for good")):
        command = commands.add_parser(action, help=text)
        command.add_argument("id", type=int)
        command.set_defaults(func=thread_action, action=action)
    retarget = commands.add_parser("retarget", help="change the objective from the next generation on (the pending "
                                   "one if none of its responses arrived yet); prints which")
    retarget.add_argument("id", type=int)
    target = retarget.add_mutually_exclusive_group(required=True)
    target.add_argument("--channels", type=int, nargs="+", metavar="CHANNEL", help="channels to maximise")
    target.add_argument("--expression", help='an objective expression, e.g. "zscore(rate(5)) - 0.5 * rate(2)"')
    retarget.add_argument("--combine", choices=("mean", "sum"), default="mean", help="with --channels (default mean)")
    retarget.set_defaults(func=retarget_thread)

    weights = subcommands.add_parser(
        "weights", help="list or verify generator weights on this machine",
        description="Where each generator's weights are looked for (ACTMAX_WEIGHTS_DIR/<generator>/, then the "
        "generator's standard locations), whether they were found, and their sha256.")
    commands = weights.add_subparsers(dest="weights_command", required=True, metavar="WEIGHTS_COMMAND")
    commands.add_parser("list", help="every generator: where it looks, found or missing, sha256").set_defaults(
        func=list_weights)
    verify = commands.add_parser("verify", help="load each generator and render images (finite, and different for "
                                 "different codes); non-zero exit if any fails")
    verify.add_argument("names", nargs="*", metavar="GENERATOR", help="generators to verify (default: all)")
    verify.set_defaults(func=verify_weights)


# ---------------------------------------------------------------------------- REST client
def api():
    """The REST client of ACTMAX_URL with ACTMAX_TOKEN (a one-line error when either cannot be used)."""
    from server.launch import ApiClient
    from server.settings import check_token

    token = os.environ.get("ACTMAX_TOKEN")
    if not token:
        raise ServerError("no API token: set ACTMAX_TOKEN to the server's token")
    url = os.environ.get("ACTMAX_URL", DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ServerError(f"ACTMAX_URL must start with http:// or https://, e.g. {DEFAULT_URL} (it is {url!r})")
    return ApiClient(url, check_token(token))


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

    session = call("POST", "/sessions", read_config_file(args.file))
    print(f"session {session['id']} {session['name']!r} created for rig {session['rig']!r}")
    print_threads(session["threads"])
    others = [f"{s['id']} {s['name']!r}" for s in call("GET", "/sessions")
              if s["rig"] == session["rig"] and s["status"] == "active" and s["id"] != session["id"]]
    if others:  # allowed (the rig takes turns between sessions), but on an animal rarely meant
        sys.stdout.flush()  # the table first, also when both go to one file
        print(f"actmax session: warning: rig {session['rig']!r} already has active session(s) {', '.join(others)}: "
              "it shows the images of each in turn; `actmax session stop ID` stops one", file=sys.stderr)
    return 0


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
        params = ", ".join(f"{key}={value}" for key, value in t["optimizer_params"].items())
        optimizer = f"{t['optimizer']} ({params})" if params else t["optimizer"]
        print(f"  thread {t['id']} {t['name']!r}: seed {t['seed']}, generator {generator}, optimizer {optimizer}, "
              f"objective {objective_text(t['objective'])}, generations {done} of {t['n_generations']} done")
    return 0


def objective_text(objective: dict) -> str:
    """A thread's objective in one line: ``mean of channels 0, 3`` or its expression."""
    if objective.get("expression"):
        return objective["expression"]
    from server.objectives import channel_ranges

    return f"{objective.get('combine', 'mean')} of channel(s) {channel_ranges(objective['channels'])}"


def stop_session(args) -> int:
    session = call("POST", f"/sessions/{args.id}/stop")
    print(f"session {session['id']} {session['status']}")
    print_threads(session["threads"])
    return 0


def thread_action(args) -> int:
    thread = call("POST", f"/threads/{args.id}/{args.action}")
    print(f"thread {thread['id']} {thread['name']!r}: {thread['status']}")
    return 0


def retarget_thread(args) -> int:
    objective = {"expression": args.expression} if args.expression else \
        {"channels": args.channels, "combine": args.combine}
    thread = call("POST", f"/threads/{args.id}/retarget", {"objective": objective})
    print(retargeted(thread)["message"])
    return 0


def retargeted(thread: dict) -> dict:
    """The ``thread.retargeted`` event the server logged for ``thread`` just now: it names the new objective
    and the generation it applies from."""
    path = f"/sessions/{thread['session_id']}/events"
    total = call("GET", f"{path}?limit=1")["total"]
    latest = call("GET", f"{path}?offset={max(total - 100, 0)}&limit=100")["items"]
    return next(e for e in reversed(latest) if e["kind"] == "thread.retargeted" and e["thread_id"] == thread["id"])


def _number(value) -> str:
    return "" if value is None else f"{value:z.3f}"  # z: -0.0001 prints 0.000


def _time(text: str | None) -> datetime:
    """A server timestamp; none: the earliest (a status no event has changed is the thread's first)."""
    return datetime.fromisoformat(text) if text else datetime.min.replace(tzinfo=UTC)


def watch_session(args) -> int:
    """A line per completed generation (per thread), per thread status change, per warning or error event
    (drift alarms, refused results, a lost rig) and per ``WATCH_INFO_KINDS`` event (a retarget, a restart, a
    generation left pending), in the order they happened, until the session ends.
    A server that stops answering (a restart, a crash) is waited for, with a line when it goes and comes back."""
    shown: dict[int, int] = {}  # thread id -> its complete generations printed
    statuses: dict[int, str] = {}
    changed: dict[tuple[int, str], str] = {}  # (thread id, event kind) -> time of its latest event
    events_seen = 0
    call("GET", f"/sessions/{args.id}")  # an unknown session or server: the error alone, before the header
    print(f"{'thread':<20} {'gen':>4} {'mean':>9} {'max':>9} {'ref mean':>9} {'latency s':>9}", flush=True)
    lines: list[tuple[datetime, str]] = []  # news not yet printed, printed in time order after a whole poll
    away = delay = 0.0  # seconds the server has not answered, and the wait before asking again
    while True:
        try:
            session = call("GET", f"/sessions/{args.id}")
            names = {t["id"]: t["name"] for t in session["threads"]}
            while page := call("GET", f"/sessions/{args.id}/events?offset={events_seen}&limit=100")["items"]:
                events_seen += len(page)
                for event in page:
                    changed[event["thread_id"], event["kind"]] = event["time"]
                    if event["level"] in ("warning", "error") or event["kind"] in WATCH_INFO_KINDS:
                        lines.append((_time(event["time"]), f"{event['level'].upper():<8} "
                                      f"{names.get(event['thread_id'], '-')}: {event['kind']}: {event['message']}"))
            for thread in session["threads"]:
                while page := call("GET", f"/threads/{thread['id']}/generations?status=complete"
                                   f"&offset={shown.get(thread['id'], 0)}&limit=1000")["items"]:
                    shown[thread["id"]] = shown.get(thread["id"], 0) + len(page)
                    lines += [(_time(g["completed_at"]), f"{padded(thread['name'], 20)} {g['number']:>4} "
                               f"{_number(g['mean_score']):>9} {_number(g['max_score']):>9} "
                               f"{_number(g['reference_mean']):>9} {_number(g.get('rig_latency_s')):>9}")
                              for g in page]
                if statuses.get(thread["id"]) != thread["status"]:
                    statuses[thread["id"]] = thread["status"]
                    error = f" ({thread['last_error']})" if thread.get("last_error") else ""
                    lines.append((_time(changed.get((thread["id"], f"thread.{thread['status']}"))),
                                  f"{padded(thread['name'], 20)} {thread['status']}{error}"))
        except Unreachable as exc:
            if not away:
                print(f"actmax session watch: {exc}; waiting for it (Ctrl-C to stop)", file=sys.stderr, flush=True)
            delay = min(max(args.interval, 2 * delay), WATCH_BACKOFF_MAX_S)
            time.sleep(delay)
            away += delay
            continue
        if away:
            print(f"actmax session watch: the server answers again after {away:.0f} s", file=sys.stderr, flush=True)
            away = delay = 0.0
        for _, line in sorted(lines, key=lambda item: item[0]):
            print(line, flush=True)
        lines.clear()
        if session["status"] in ENDED:
            print(f"session {session['id']} {session_status(session)}", flush=True)
            return 0
        time.sleep(args.interval)


# ---------------------------------------------------------------------------- weights
def _cache():
    from server.settings import load_settings
    from server.weights import GeneratorCache

    settings = load_settings()
    return GeneratorCache("cpu", settings.weights_dir)


def list_weights(args) -> int:
    from tqdm import tqdm

    import generators

    cache = _cache()
    statuses = [cache.status(name) for name in tqdm(generators.available(), desc="loading", leave=False,
                                                    disable=not sys.stderr.isatty())]
    print(f"{'generator':<18} {'weights':<8} {'sha256':<64} looks in")
    for s in statuses:
        print(f"{s.generator:<18} {s.label:<8} {s.sha256 or '-':<64} {s.source}")
        if s.problem:
            print("    " + s.problem.replace("\n", "\n    "))
    return 0


def verify_weights(args) -> int:
    import numpy as np
    from tqdm import tqdm

    import generators

    unknown = sorted(set(args.names) - set(generators.available()))
    if unknown:
        print(f"actmax weights verify: unknown generator(s) {', '.join(unknown)}; registered: "
              f"{', '.join(generators.available())}", file=sys.stderr)
        return 2
    cache, statuses = _cache(), []
    for name in tqdm(args.names or generators.available(), desc="verifying", leave=False,
                     disable=not sys.stderr.isatty()):
        status = cache.status(name)
        if status.found:
            generator = cache.get(name)
            image = generator.generate(generator.sample(1, np.random.default_rng(0)))
            if not bool(np.isfinite(image.detach().cpu().numpy()).all()):
                status = status.__class__(name, False, status.source, status.sha256, "rendered non-finite pixels")
            elif (problem := generators.base.ignores_codes(generator)) is not None:
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
