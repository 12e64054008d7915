"""CURVE keys for the rigs' ZeroMQ socket, and ``actmax keys`` to make and list them.

Layout of the keys folder (``{data_dir}/keys`` unless ``ACTMAX_KEYS_DIR`` says otherwise)::

    server.key          the server's public key: copy it to every rig
    server.key_secret   the server's key pair: never leaves the server; its presence turns CURVE on
    rigs/NAME.key       the public key of rig NAME: only a client holding its secret may say HELLO as NAME
                        (a running server reads these at every handshake; server.key_secret only at start)
    issued/NAME.key_secret  a key pair `actmax keys rig NAME` made: move it to that rig, then delete it here
                        (`actmax keys list` warns while one is left; `actmax keys revoke NAME` forbids a rig)

The files are pyzmq's certificate format (``zmq.auth.create_certificates``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from rig_client.client import is_z85_key
from rig_client.protocol import is_rig_name
from server import ServerError



class KeyStore:
    """The CURVE key files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def server_secret_file(self) -> Path:
        return self.root / "server.key_secret"

    def enabled(self) -> bool:
        """CURVE is on once the server has a key pair."""
        return self.server_secret_file.is_file()

    def server_keys(self) -> tuple[bytes, bytes]:
        """The server's (public, secret) Z85 keys."""
        return _load(self.server_secret_file, secret=True)

    def rig_keys(self) -> dict[bytes, str]:
        """Allowed rigs: Z85 public key -> rig name."""
        names: dict[bytes, str] = {}
        for path in sorted((self.root / "rigs").glob("*.key")):
            public, _ = _load(path, secret=False)
            if public in names:
                raise ServerError(f"{path} holds the same public key as rig {names[public]!r}; "
                                  "one key per rig: delete one of them")
            names[public] = path.stem
        return names

    def init_server(self) -> Path:
        """Make the server key pair unless it exists (its public key file written again from it when that went
        missing); the public key file's path."""
        public_file = self.root / "server.key"
        if not self.enabled():
            _make_pair(self.root, "server")
        elif not public_file.is_file():
            _write_public(public_file, self.server_keys()[0])
        return public_file

    def add_rig(self, name: str, public_key_file: Path | None = None) -> Path | None:
        """Allow rig ``name``: with its public key file, or with a new pair (its secret's path)."""
        _check_name(name)
        target = self.root / "rigs" / f"{name}.key"
        if target.exists():
            raise ServerError(f"rig {name!r} already has a key ({target}); delete that file to "
                              "replace it")
        if public_key_file is not None:
            public, _ = _load(public_key_file, secret=False)
            if self.enabled() and public == self.server_keys()[0]:
                raise ServerError(f"{public_key_file} holds the server's own key; give the rig's public key file "
                                  "(made on the rig, see `actmax keys rig --help`)")
            if public in self.rig_keys():
                raise ServerError(f"{public_key_file} is already the key of rig "
                                  f"{self.rig_keys()[public]!r}; one key per rig")
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_public(target, public)
            return None
        secret = _make_pair(self.root / "issued", name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / "issued" / f"{name}.key", target)
        (self.root / "issued" / f"{name}.key").unlink()
        return secret


    def revoke_rig(self, name: str) -> list[Path]:
        """Forbid rig ``name``: delete its public key (and a key pair issued here); the files deleted."""
        _check_name(name)
        files = [path for path in (self.root / "rigs" / f"{name}.key", self.root / "issued" / f"{name}.key_secret")
                 if path.is_file()]
        if not files:
            raise ServerError(f"rig {name!r} has no key in {self.root / 'rigs'}; `actmax keys list` shows the rigs")
        for path in files:
            path.unlink()
        return files

    def issued(self) -> list[Path]:
        """Key pairs made here and not yet deleted (each belongs on its rig, not on the server)."""
        return sorted((self.root / "issued").glob("*.key_secret"))


    def exposed(self) -> list[str]:
        """What in the keys folder others on this machine may read or change (the server's secret readable, a
        folder whose keys they could add or replace), each with its fix."""
        found = [f"{self.server_secret_file} can be read by other users: chmod 600 it"
                 for _ in [0] if self.enabled() and self.server_secret_file.stat().st_mode & 0o077]
        found += [f"{folder} can be written by other users, who could add a rig or replace a key: chmod 755 it"
                  for folder in (self.root, self.root / "rigs") if folder.is_dir() and folder.stat().st_mode & 0o022]
        return found


def _check_name(name: str) -> None:
    if not is_rig_name(name):
        raise ServerError(f"rig name {name!r} is not valid: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or "
                          "digit")


def _write_public(path: Path, public: bytes) -> None:
    """A public key file (pyzmq's certificate format) holding ``public``."""
    path.write_text(f"metadata\ncurve\n    public-key = \"{public.decode()}\"\n", encoding="utf-8")


def _make_pair(folder: Path, name: str) -> Path:
    import zmq.auth

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # never a half-written key pair
        public, secret = zmq.auth.create_certificates(scratch, name)
        Path(secret).chmod(0o600)
        Path(public).replace(folder / f"{name}.key")
        Path(secret).replace(folder / f"{name}.key_secret")
    return folder / f"{name}.key_secret"


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot read the key file {path}: {exc}; restore it, or move it out of {path.parent} "
                          "(`actmax keys` makes keys)") from None
    if secret and secret_key is None:
        raise ServerError(f"{path} holds no secret key; it must be a .key_secret file")
    for key in (public, secret_key) if secret else (public,):
        if not is_z85_key(key):
            raise ServerError(f"{path} holds {key[:50]!r}, not a CURVE key (40 Z85 characters): damaged, or not a "
                              "key file `actmax keys` made; restore it, or make the key again")
    return public, secret_key


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "keys", help="make, list and revoke the CURVE keys of the rigs' ZeroMQ socket",
        description="CURVE keys authenticate rigs on the ZeroMQ socket; a rig name is bound to its "
        "key. Keys live in ACTMAX_KEYS_DIR (default {data_dir}/keys). Serving rigs off loopback "
        "needs them; `serve` turns CURVE on when it starts with the server key pair; a running server "
        "reads the rig keys at every connection.")
    data_dir = "data folder whose keys/ to use (default: ACTMAX_DATA_DIR or ./actmax-data)"
    parser.add_argument("--data-dir", help=data_dir)
    common = argparse.ArgumentParser(add_help=False)  # the same option after the action too
    common.add_argument("--data-dir", default=argparse.SUPPRESS, help=data_dir)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("init", parents=[common], help="make the server key pair (once) and print its public key")
    rig = actions.add_parser("rig", parents=[common],
                             help="allow a rig: make its key pair, or register its public key")
    rig.add_argument("name", help="the rig name its HELLO uses")
    rig.add_argument("--public-key", type=Path, metavar="FILE",
                     help="the rig's own public .key file (default: make a new pair here). On the rig: python -c "
                     "\"import zmq.auth; zmq.auth.create_certificates('.', 'NAME')\" makes NAME.key (copy it here) "
                     "and NAME.key_secret (its --rig-key, stays on the rig)")
    revoke = actions.add_parser("revoke", parents=[common],
                                help="forbid a rig: delete its key; it is refused from its next connection")
    revoke.add_argument("name", help="the rig name")
    actions.add_parser("list", parents=[common], help="list the server key and the allowed rigs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.settings import load_settings

    store = KeyStore(load_settings({"data_dir": ("--data-dir", args.data_dir)}).keys_dir)
    if args.action == "init":
        existed = store.enabled()
        public_file = store.init_server()
        print(f"server public key ({'existing' if existed else 'new'}): "
              f"{store.server_keys()[0].decode()}\ncopy {public_file} to every rig")
        if not existed and (registered := sorted(p.stem for p in (store.root / "rigs").glob("*.key"))):
            print(f"warning: the rigs registered here ({', '.join(registered)}) hold the server.key of the key pair "
                  "this one replaces: copy the new server.key to each, or they are refused", file=sys.stderr)
        if not existed:
            print("CURVE turns on when `actmax serve` starts: restart a running server; from then on every "
                  "rig needs --server-key and --rig-key")
    elif args.action == "rig":
        if args.public_key is not None and _load(args.public_key, secret=False)[1] is not None:
            print(f"warning: {args.public_key} also holds the rig's secret key; only its public key is registered. "
                  "A secret key belongs on its rig alone: copy only the .key file next time", file=sys.stderr)
        secret = store.add_rig(args.name, args.public_key)
        print(f"rig {args.name!r} allowed ({store.root / 'rigs' / (args.name + '.key')}); a running server "
              "with CURVE accepts it at its next connection, no restart needed")
        if secret is not None:
            print(f"move {secret} to the rig (its --rig-key) and delete it here")
        if not store.enabled():
            print("no server key pair yet: run `actmax keys init`, then (re)start `actmax serve`")
    elif args.action == "revoke":
        for path in store.revoke_rig(args.name):
            print(f"deleted {path}")
        print(f"rig {args.name!r} is refused from its next connection; a connection open now lasts until the rig "
              "disconnects: restart `actmax serve` to cut it at once")
    if args.action in ("rig", "revoke"):
        try:
            store.rig_keys()
        except ServerError as exc:
            print(f"warning: a running server refuses every rig's new connection until this is fixed: {exc}",
                  file=sys.stderr)
    else:
        folder = store.root.resolve()
        if not folder.parent.is_dir():  # a mistyped --data-dir: say so rather than list nothing
            raise ServerError(f"{folder.parent} does not exist, so there are no keys in {folder}: check --data-dir "
                              "(or ACTMAX_KEYS_DIR)")
        print(f"keys folder: {folder}" + ("" if folder.is_dir() else " (none yet: `actmax keys init` makes it)"))
        print(f"server: {store.server_keys()[0].decode() if store.enabled() else 'no key pair (CURVE off)'}")
        for public, name in store.rig_keys().items():
            print(f"rig {name}: {public.decode()}")
        for path in store.issued():
            print(f"warning: {path} is a rig's secret key: move it to the rig and delete it here")
        for problem in store.exposed():
            print(f"warning: {problem}")
    return 0
