"""How every rig command (``actmax rig sim|bridge|present``) names its server, its rig and its CURVE keys."""

from __future__ import annotations

import argparse

from rig_client import RigError


def add_connection_arguments(parser: argparse.ArgumentParser, default_rig: str) -> None:
    """``--endpoint``, ``--rig``, and the key files a server with CURVE keys needs (``actmax keys``)."""
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555",
                        help="server ZeroMQ endpoint (default tcp://127.0.0.1:5555)")
    parser.add_argument("--rig", default=default_rig,
                        help=f"rig name; a session names the rig it runs on (default {default_rig})")
    parser.add_argument("--server-key", metavar="FILE", help="the server's public server.key (CURVE; with --rig-key)")
    parser.add_argument("--rig-key", metavar="FILE",
                        help="this rig's NAME.key_secret from `actmax keys rig NAME` (CURVE; with --server-key)")


def connection_keys(args: argparse.Namespace) -> dict[str, bytes]:
    """`RigClient`'s CURVE arguments from ``--server-key`` and ``--rig-key`` (none without them)."""
    from rig_client.client import curve_keys

    if (args.server_key is None) != (args.rig_key is None):
        raise RigError("CURVE needs both --server-key and --rig-key")
    return curve_keys(args.server_key, args.rig_key) if args.server_key else {}
