"""``actmax serve``: the REST API (uvicorn) and the ZeroMQ loop in one process, one event loop."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="run the experiment server (REST + ZeroMQ)",
        description="Run the REST API and the rigs' ZeroMQ endpoint in one process. "
        "Settings come from ACTMAX_* environment variables; these flags override them. "
        "The API token is read from ACTMAX_TOKEN only (never from the command line).",
    )
    parser.add_argument("--host", help="REST bind address (default 127.0.0.1, loopback)")
    parser.add_argument("--port", type=int, help="REST port (default 8000)")
    parser.add_argument("--zmq-endpoint", help="ZeroMQ ROUTER endpoint (default tcp://127.0.0.1:5555)")
    parser.add_argument("--data-dir", help="database and image archive folder (default ./actmax-data)")
    parser.add_argument("--device", help='torch device for generators: auto, cpu, cuda, ... (default auto)')
    parser.add_argument("--precision", choices=["float32", "float16", "bfloat16"],
                        help="generator precision (default float32); a half precision only for generators whose "
                        "images of 8 prior codes stay within 4/255 of float32 (checked at load; evolved codes far "
                        "from the prior may differ more, and a NaN or infinite pixel fails the thread)")
    parser.add_argument("--batch-timeout", type=float,
                        help="seconds without results, while the rig is connected, before missing ones are "
                        "re-queued (default 300)")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from server.settings import load_settings

    return load_settings({
        "http_host": ("--host", args.host), "http_port": ("--port", args.port),
        "zmq_endpoint": ("--zmq-endpoint", args.zmq_endpoint), "data_dir": ("--data-dir", args.data_dir),
        "device": ("--device", args.device), "batch_timeout_s": ("--batch-timeout", args.batch_timeout),
        "precision": ("--precision", args.precision),
    })


def run(args: argparse.Namespace) -> int:
    from server.keys import KeyStore
    from server.settings import unknown_variables

    settings = settings_from_args(args)
    keys = KeyStore(settings.keys_dir)
    settings.check_exposure(curve=keys.enabled())
    for problem in keys.exposed():
        log.warning("CURVE keys: %s", problem)
    if unknown := unknown_variables(os.environ):
        log.warning("no setting reads %s: misspelt? (the settings: docs/rest_api.md)", ", ".join(unknown))
    asyncio.run(serve(settings))
    return 0


async def serve(settings) -> None:
    """Migrate the database (logging it when it is new or migrated), then run uvicorn, the ZeroMQ transport and
    the engine until SIGINT/SIGTERM.

    The process's one database engine is made, migrated and disposed of here. A device this torch cannot
    use is refused first (``GeneratorError``), not at the first session. The open-file limit is raised first.
    """
    from server.engine import Engine
    from server.keys import KeyStore
    from server.main import create_app
    from server.store.archive import ImageArchive
    from server.store.db import make_db_engine, make_sessionmaker, upgrade
    from server.transport import Transport
    from server.weights import generators_device, weights_dir_note

    generators_on = generators_device(settings.device, settings.precision, "--device or ACTMAX_DEVICE")
    open_files = raise_open_file_limit()
    lock = hold_data_dir(settings.data_dir)
    data_dir = settings.data_dir.resolve()  # logged in full: a relative --data-dir depends on the working folder
    http_socket = bind_http(settings.http_host, settings.http_port)
    transport = db_engine = None
    try:
        # Both sockets first: a busy port or a damaged key file is told before the database is made or migrated.
        keys = KeyStore(settings.keys_dir)
        # The rig keys are read at every handshake: `actmax keys rig` needs no restart (`keys init` does).
        curve = {"server_key": keys.server_keys(), "rig_keys": keys.rig_keys} if keys.enabled() else {}
        security = f"CURVE, {len(keys.rig_keys())} rig keys" if curve else "no CURVE: loopback only"
        transport = Transport(
            settings.zmq_endpoint, None, heartbeat_s=settings.heartbeat_s,  # its handler: the engine, below
            liveness=settings.liveness, max_message_bytes=settings.max_message_bytes, **curve,
        )
        db_engine = make_db_engine(settings.database_url, background_checkpoints=True)
        before, after = upgrade(db_engine)
        if before is None:  # before a rig connects, so that a mistyped --data-dir shows
            log.info("created a new, empty database in %s: no sessions yet (not what you expected? stop and check "
                     "--data-dir)", data_dir)
        elif before != after:
            log.info("migrated the database in %s from schema %s to %s (one-way: older actmax releases cannot "
                     "open it now)", data_dir, before, after)
        log.log(*weights_dir_note(settings.weights_dir))
        db_sessions = make_sessionmaker(db_engine)
        archive = ImageArchive(settings.data_dir)
        if removed := archive.remove_partial_writes():
            log.info("removed %d partial image files a previous run left in %s", removed, data_dir)
        engine = Engine(settings, db_sessions, archive)
        transport.handler, engine.transport = engine, transport
        await _run_until_stopped(http_config(create_app(settings, db_sessions, engine=engine), settings, open_files),
                                 settings, engine, transport, http_socket, security, generators_on)
    finally:
        if transport is not None:
            await transport.close()  # closed already when it ran
        http_socket.close()
        if db_engine is not None:
            db_engine.dispose()
        lock.close()


def hold_data_dir(data_dir: Path):
    """Lock ``data_dir`` for this server (the open lock file; closing it lets go): a second ``actmax serve``
    on the same folder would run its threads twice, so it is refused with the holder's pid, and so is a data folder
    that cannot be written."""
    import errno
    import fcntl

    from server import ServerError

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(data_dir / "serve.lock", "a+", encoding="utf-8")
    except OSError as error:
        if error.errno not in (errno.EROFS, errno.EACCES):
            raise
        raise ServerError(f"the data folder {data_dir} cannot be written ({error.strerror}: {error.filename}): make "
                          "it writable, or pass another --data-dir") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ServerError(f"{data_dir} is in use by another actmax serve ({holder}); stop that one, or give this "
                          "one another --data-dir") from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit (REST connections, the rigs' ZeroMQ sockets, the
    database and image files all draw on it); the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 2**20  # Linux refuses an infinite soft limit here
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as error:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, wanted, error)
        return soft
    return wanted


# Seconds an idle REST connection stays open: longer than the 5 s for which httpx (our own clients included) and
# most HTTP clients keep one, so that no client sends a request on a connection the server is just closing (uvicorn's
# default of 5 s raced httpx's: "Server disconnected without sending a response", or a reset).
HTTP_KEEP_ALIVE_S = 10


def http_config(app, settings, open_files: int):
    """uvicorn's config for ``app``: at most ``settings.http_max_connections`` REST connections, and no more than
    half of the ``open_files`` limit, so that the rigs' socket and the database always have files left; each
    request must arrive within ``settings.http_request_timeout_s`` (``server.api.connections``), which also bounds
    the keep-alive of an idle connection."""
    from server.api.connections import HttpConfig

    connections = min(settings.http_max_connections, max(open_files // 2, 1))
    if connections < settings.http_max_connections:
        log.warning("REST connections capped at %d, half the open-file limit (%d), below ACTMAX_HTTP_MAX_CONNECTIONS "
                    "(%d); raise the limit (ulimit -n, systemd's LimitNOFILE) for more", connections, open_files,
                    settings.http_max_connections)
    return HttpConfig(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                      timeout_graceful_shutdown=3, lifespan="off",  # the app has no lifespan
                      timeout_keep_alive=HTTP_KEEP_ALIVE_S,
                      limit_concurrency=connections, request_timeout_s=settings.http_request_timeout_s)


def bind_http(host: str, port: int) -> socket.socket:
    """The REST listening socket, or a one-line ``ServerError`` if the address is taken (as for ZeroMQ)."""
    from server import ServerError

    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        fix = {errno.EADDRINUSE: "choose a free port (--port) or stop the process that holds it",
               errno.EADDRNOTAVAIL: "give an address of this machine (--host; `ip addr` lists them)"}.get(
            exc.errno, "give an address or host name of this machine (--host), and a port over 1023 (--port)")
        what = exc.strerror or str(exc)
        raise ServerError(f"cannot serve REST on {host}:{port}: {what.split(' (while attempting')[0]}; {fix}") \
            from None
    return sock


async def _run_until_stopped(config, settings, engine, transport, http_socket, security: str,
                             generators_on: str) -> None:
    """Serve HTTP (uvicorn's ``config``) in the foreground and the transport and engine loops beside it; stop all
    three together. Errors that repeat per connection are logged once a minute. The start line says where the
    generators run (``generators_on``, from ``generators_device``)."""
    import uvicorn

    from rig_client.version import package_version
    from server import live
    from server.api.connections import REFUSED, OncePerPeriod

    class Http(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            log.info("shutting down")
            live.hub.end_streams()  # else the dashboards' streams hold the graceful wait, then are cancelled
            await super().shutdown(sockets)

    limited = [(logging.getLogger("asyncio"), OncePerPeriod(
                   "socket.accept() out of system resource", "the process has no open files left: new REST "
                   "connections wait (lower ACTMAX_HTTP_MAX_CONNECTIONS or raise the open-file limit)")),
               (logging.getLogger("server.api.connections"), OncePerPeriod(REFUSED))]
    for logger, once in limited:
        logger.addFilter(once)
    http = Http(config)
    background = [asyncio.create_task(transport.run()), asyncio.create_task(engine.run())]
    for stop in (signal.SIGINT, signal.SIGTERM):  # until uvicorn has its own: a Ctrl-C while it starts
        asyncio.get_running_loop().add_signal_handler(stop, setattr, http, "should_exit", True)
    # The ports bound: --port 0 and tcp://HOST:* take any free one.
    log.info("actmax %s serving REST on http://%s:%s, rigs on %s (%s), generators on %s, data in %s",
             package_version(), settings.http_host, http_socket.getsockname()[1], transport.endpoint, security,
             generators_on, settings.data_dir.resolve())
    try:
        await http.serve(sockets=[http_socket])
    finally:
        for logger, once in limited:
            logger.removeFilter(once)
        await engine.close()
        await transport.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
