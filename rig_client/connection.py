"""What every rig command (``actmax rig sim|bridge|present``) shares: how it names its server, its
rig, its CURVE keys and its setup, and the checks of its numeric flags."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rig_client import RigError


def check_endpoint(endpoint: str, *, bind: bool = False) -> str:
    """``endpoint`` if a rig can connect to it (``bind``: if a server can bind it, ``*`` meaning every interface or
    any free port), else ValueError showing a valid one."""
    kind, _, address = endpoint.partition("://")
    host, _, port = address.rpartition(":")
    host_ok = host != "" and (host != "*" or bind)
    port_ok = port.isdigit() and 0 < int(port) < 65536 or bind and port == "*"
    if not address or not (kind in ("ipc", "inproc") or kind == "tcp" and host_ok and port_ok):
        example = "e.g. tcp://127.0.0.1:5555" + ("; PORT 1-65535, or * for any free one" if bind else "")
        raise ValueError(f"{endpoint!r} is not an endpoint to {'bind' if bind else 'connect to'}: use tcp://HOST:PORT "
                         f"({example}), ipc://PATH or inproc://NAME")
    return endpoint


def _endpoint(text: str) -> str:
    try:
        return check_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rig_name(text: str) -> str:
    from rig_client.protocol import is_rig_name

    if not is_rig_name(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a rig name is 1-64 of A-Z a-z 0-9 . _ - (no spaces or "
                                         "accented letters), starting with a letter or digit")
    return text


def _number(text: str, kind: type, allow_zero: bool) -> float:
    bound = ">= 0" if allow_zero else "> 0"
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > 0 or allow_zero and value == 0)):
        raise argparse.ArgumentTypeError(
            f"{text}: expected {'a whole number' if kind is int else 'a number'} {bound}")
    return value


def positive(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, allow_zero=False)


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, allow_zero=True)


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    return _number(text, int, allow_zero=False)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _number(text, int, allow_zero=True)


def add_weights_argument(parser: argparse.ArgumentParser, where: str = "") -> None:
    """``--weights`` of a command that loads a generator (``generators.weights_source`` resolves it); ``where``:
    more of where it is read."""
    parser.add_argument("--weights", help="the generator's weights file or folder (default: ACTMAX_WEIGHTS_DIR/"
                        f"<generator>/ when it exists, else its standard locations, as `actmax serve`){where}")


def add_connection_arguments(parser: argparse.ArgumentParser, default_rig: str) -> None:
    """``--endpoint``, ``--rig``, and the key files a server with CURVE keys needs (``actmax keys``)."""
    parser.add_argument("--endpoint", type=_endpoint, default="tcp://127.0.0.1:5555",
                        help="server ZeroMQ endpoint (default tcp://127.0.0.1:5555)")
    parser.add_argument("--rig", type=_rig_name, default=default_rig,
                        help=f"rig name; a session names the rig it runs on (default {default_rig})")
    parser.add_argument("--server-key", metavar="FILE", help="the server's public server.key (CURVE; with --rig-key)")
    parser.add_argument("--rig-key", metavar="FILE",
                        help="this rig's NAME.key_secret from `actmax keys rig NAME` (CURVE; with --server-key)")
    parser.add_argument("--setup", metavar="FILE", type=_setup_file,
                        help="a JSON object describing the rig for the session's record (e.g. {\"monitor\": \"VPixx "
                        "VIEWPixx\", \"viewing_distance_cm\": 57}), sent in HELLO beside what this program says of "
                        "itself; at most 4096 bytes")


def connection_keys(args: argparse.Namespace) -> dict[str, bytes]:
    """`RigClient`'s CURVE arguments from ``--server-key`` and ``--rig-key`` (none without them)."""
    from rig_client.client import curve_keys

    if (args.server_key is None) != (args.rig_key is None):
        raise RigError("CURVE needs both --server-key and --rig-key")
    return curve_keys(args.server_key, args.rig_key) if args.server_key else {}


def _setup_file(text: str) -> dict:
    """argparse type: the JSON object in the file ``text`` (``--setup``), read at once."""
    from rig_client.protocol import MAX_SETUP_BYTES, MAX_SETUP_DEPTH, setup_problem

    def constant(name: str):
        raise ValueError(f"{name} is not JSON; write a number")

    try:
        given = json.loads(Path(text).read_text(encoding="utf-8-sig"), parse_constant=constant)  # a BOM: Notepad's
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc.strerror}; give a JSON file that exists") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text} is not UTF-8 JSON ({exc}); give a file holding one JSON object, "
                                         'e.g. {"viewing_distance_cm": 57}') from None
    if (problem := setup_problem(given)) is not None:
        raise argparse.ArgumentTypeError(f"{text} must hold a JSON object such as {{\"viewing_distance_cm\": 57}}, "
                                         f"at most {MAX_SETUP_BYTES} bytes as compact JSON and nested at most "
                                         f"{MAX_SETUP_DEPTH} deep; {problem}")
    return given


def rig_setup(args: argparse.Namespace, own: dict) -> dict:
    """HELLO's ``setup``: the ``--setup`` file's fields and what the program says of itself (``own``); `RigError` when
    the file names a field the program sets, or together they are too large for HELLO."""
    from rig_client.protocol import setup_problem

    given = args.setup or {}
    if clash := sorted(set(given) & set(own)):
        raise RigError(f"--setup: this program sets {', '.join(map(repr, clash))} itself; rename the file's field(s) "
                       f"(e.g. 'lab_{clash[0]}')")
    setup = {**given, **own}
    if (problem := setup_problem(setup)) is not None:
        raise RigError(f"--setup: with what this program says of itself, {problem}, over what HELLO takes; keep the "
                       "file shorter")
    return setup
