"""The ``actmax`` console script: one subcommand per module, each adding its own parser.

Subcommand modules, and the packages they are in, keep heavy imports (torch, pandas, scipy, the server)
inside their run functions, so every command, ``actmax --help`` and ``actmax thread pause ID`` included,
answers at once (``tests/test_cli.py`` checks that building the parser imports none of torch, pandas, scipy).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import logging
import os
import sys
from datetime import UTC, datetime

from rig_client.version import package_version

SUBCOMMAND_MODULES = (
    "server.serve",  # actmax serve
    "server.keys",  # actmax keys init|rig|list
    "rig_client.sim",  # actmax rig sim
    "server.demo",  # actmax demo
    "insilico.bench",  # actmax bench, actmax bench report
    "server.analyze",  # actmax analyze manifold|session|geometry|study
    "server.client_cli",  # actmax session ..., actmax thread ..., actmax weights list|verify
    "server.export.cli",  # actmax export nwb|parquet|csv
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actmax", description="Closed-loop image evolution for visual neurophysiology."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"actmax {package_version()}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subcommands)
    return parser


def escape_what_the_console_cannot_encode() -> None:
    """Print a character the console's encoding lacks as an escape (``\\u5b9f``) instead of failing on it: a
    Japanese session name on a Latin-1 locale, or on Windows with the output redirected (cp1252), must not turn
    a session just created into an exit with a codec error, which a retry would create again."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # not None (pythonw) nor a caller's StringIO
            stream.reconfigure(errors="backslashreplace")


class ZonedFormatter(logging.Formatter):
    """Log lines whose local time carries its offset from UTC (``2026-11-30 14:25:05,241+0900``), as the CLI's
    UTC times carry their ``Z``."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        local = datetime.fromtimestamp(record.created, UTC).astimezone()
        return f"{local:%Y-%m-%d %H:%M:%S},{int(record.msecs):03d}{local:%z}"


def main(argv: list[str] | None = None) -> int:
    escape_what_the_console_cannot_encode()
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # while the subcommands import
        return 130
    handler = logging.StreamHandler()
    handler.setFormatter(ZonedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    for noisy in ("httpx", "alembic"):  # a line per REST call or migration step is noise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.INFO)  # -v: not a line per PNG chunk read
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader (``| head``) closed the output early: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        return 1
    except MemoryError as exc:  # numpy's says how much it asked for
        said = f" ({exc})" if str(exc) else ""
        print(f"actmax {args.command}: ran out of memory{said}; ask for less (smaller counts or sizes), or run it on a "
              "machine with more memory", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        # Our errors subclass these built-ins and carry a message that says what to do.
        print(f"actmax {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file where a folder is wanted or the reverse, no permission, a full disk
        where = f" {exc.filename}" if exc.filename else ""
        print(f"actmax {args.command}: cannot use{where}: {exc.strerror or exc}; check the paths given", file=sys.stderr)
        return 2


def entry() -> None:
    """The console script: ``main``, then exit without the interpreter's last full garbage collections.

    With torch loaded those walk some 300 000 objects that die with the process anyway: 1-2 s at every
    exit of ``serve`` and ``rig sim`` (a restart waits for it). By then each command has closed what it
    wrote, and ``atexit`` handlers (logging's flush) still run; only objects in reference cycles go
    unfinalized, which no command relies on.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
