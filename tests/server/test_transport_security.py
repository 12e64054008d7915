"""Who may talk to the rigs' socket: CURVE keys bound to rig names, routing ids, noisy peers."""

from __future__ import annotations

import asyncio
import re
import logging
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from rig_client import RigError
from rig_client.client import RigClient, curve_keys
from rig_client.protocol import MessageType, decode
from server import ServerError
from server.keys import KeyStore
from server.settings import Settings
from server.launch import free_port
from tests.server.test_transport import HB, LIVENESS, Harness, hello, raw, run


@pytest.fixture
def keys(tmp_path) -> KeyStore:
    store = KeyStore(tmp_path / "keys")
    store.init_server()
    store.add_rig("rig-a")
    store.add_rig("rig-b")
    return store


class CurveServer(Harness):
    """A CURVE Transport (on its own context) and client sockets holding chosen keys."""

    def __init__(self, keys: KeyStore, ctx: zmq.Context, endpoint: str):
        # the rig keys read at every handshake, as `actmax serve` does
        super().__init__(ctx, endpoint, server_key=keys.server_keys(), rig_keys=keys.rig_keys)
        self.keys = keys

    def curve_dealer(self, public: bytes | None, secret: bytes | None) -> zmq.asyncio.Socket:
        d = self.dealer(connect=False)
        if public is not None:
            d.setsockopt(zmq.CURVE_SERVERKEY, self.keys.server_keys()[0])
            d.setsockopt(zmq.CURVE_PUBLICKEY, public)
            d.setsockopt(zmq.CURVE_SECRETKEY, secret)
        return d

    def rig_dealer(self, name: str) -> zmq.asyncio.Socket:
        public, secret = zmq.auth.load_certificate(self.keys.root / "issued" / f"{name}.key_secret")
        return self.curve_dealer(public, secret)

    async def handshake_failure(self, d: zmq.asyncio.Socket) -> int:
        """Connect ``d`` and return the monitor event that ends its failed handshake."""
        monitor = d.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                       | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                       | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                       | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            d.connect(self.endpoint)
            await d.send_multipart(hello("rig-a"))
            event = await asyncio.wait_for(recv_monitor_message(monitor), 5)
            return event["event"]
        finally:
            d.disable_monitor()
            monitor.close(linger=0)


async def reply(d) -> dict:
    while True:
        msg = decode(await asyncio.wait_for(d.recv_multipart(), 5))
        if msg.type != MessageType.HEARTBEAT:
            return {"type": msg.type, **msg.header}


def test_rig_key_is_welcomed_as_its_own_name_only(keys, zmq_context, endpoint):
    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint) as server:
            a = server.rig_dealer("rig-a")
            a.connect(endpoint)
            await a.send_multipart(hello("rig-a"))
            assert (await reply(a))["type"] == "WELCOME"
            thief = server.rig_dealer("rig-b")  # a valid key, claiming another rig's name
            thief.connect(endpoint)
            await thief.send_multipart(hello("rig-a"))
            refused = await reply(thief)
            assert (refused["code"], refused["in_reply_to"]) == ("refused", "HELLO")
            assert "rig-b" in refused["message"]
            assert server.handler.events == [("hello", "rig-a"), ("connected", "rig-a")]
            assert server.transport.connected("rig-a")

    run(scenario())


def test_unknown_key_and_plain_peers_fail_the_handshake(keys, zmq_context, endpoint):
    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint) as server:
            stranger = server.curve_dealer(*zmq.curve_keypair())
            assert await server.handshake_failure(stranger) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            plain = server.curve_dealer(None, None)
            assert await server.handshake_failure(plain) != zmq.EVENT_HANDSHAKE_SUCCEEDED
            assert server.handler.events == []

    run(scenario())


def test_a_rig_key_registered_while_serving_is_accepted_and_failed_handshakes_are_logged_once(
        keys, zmq_context, endpoint, caplog):
    """`actmax keys rig` needs no restart; a peer without CURVE, with another server's key or with an unknown
    key fails its handshake, retried every 100 ms by ZeroMQ, and the server says why once. While a key file cannot
    be read, every new connection is refused: the keys read before could hold one revoked since."""
    stranger_public, stranger_secret = zmq.curve_keypair()
    broken = keys.root / "rigs" / "broken.key"

    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint) as server:
            keys.add_rig("rig-c")
            d = server.rig_dealer("rig-c")
            d.connect(endpoint)
            await d.send_multipart(hello("rig-c"))
            assert (await reply(d))["type"] == "WELCOME"
            broken.write_text("not a key")
            assert await server.handshake_failure(server.rig_dealer("rig-a")) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            broken.unlink()
            assert await server.handshake_failure(server.rig_dealer("rig-a")) == zmq.EVENT_HANDSHAKE_SUCCEEDED
            other_server = server.rig_dealer("rig-a")
            other_server.setsockopt(zmq.CURVE_SERVERKEY, zmq.curve_keypair()[0])
            for peer in (server.curve_dealer(None, None), other_server, server.curve_dealer(stranger_public,
                                                                                            stranger_secret),
                         server.curve_dealer(*zmq.curve_keypair())):  # another unknown key: no more lines
                assert await server.handshake_failure(peer) != zmq.EVENT_HANDSHAKE_SUCCEEDED
            await asyncio.sleep(0.5)  # retries

    with caplog.at_level(logging.WARNING, logger="server.transport"):
        run(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "refusing every rig's new connection until the rig keys can be read: cannot read the key file "
        f"{broken}: No public key found in {broken}; restore it, or move it out of {broken.parent} (`actmax keys` "
        "makes keys)"]
    refused = [r.getMessage() for r in caplog.records if "refused a CURVE handshake" in r.getMessage()]
    for reason in ("the rig keys cannot be read", "not using CURVE, or closed", "wrong server key",
                   f"unknown CURVE key {stranger_public.decode()}"):
        assert sum(reason in line for line in refused) == 1, "\n".join(r.getMessage() for r in caplog.records)
    assert len(refused) == 4


def test_a_revoked_rig_fails_its_next_handshake(keys, zmq_context, endpoint):
    rig_b = zmq.auth.load_certificate(keys.root / "issued" / "rig-b.key_secret")

    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint) as server:
            before = server.curve_dealer(*rig_b)
            before.connect(endpoint)
            await before.send_multipart(hello("rig-b"))
            assert (await reply(before))["type"] == "WELCOME"
            assert [p.name for p in keys.revoke_rig("rig-b")] == ["rig-b.key", "rig-b.key_secret"]
            assert await server.handshake_failure(server.curve_dealer(*rig_b)) != zmq.EVENT_HANDSHAKE_SUCCEEDED

    run(scenario())


@pytest.mark.parametrize("rig_keys, hint", [(False, "--server-key and --rig-key"), (True, "`actmax keys list`")])
def test_a_rig_the_server_never_answers_is_told_what_keys_to_check(keys, zmq_context, endpoint, caplog, tmp_path,
                                                                   rig_keys, hint):
    """A rig without keys may need them; a rig with a key the server refuses (here revoked) is told to check it."""
    secret = tmp_path / "rig-b.key_secret"
    secret.write_bytes((keys.root / "issued" / "rig-b.key_secret").read_bytes())
    keys.revoke_rig("rig-b")
    curve = curve_keys(keys.root / "server.key", secret) if rig_keys else {}

    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint):
            client = RigClient(endpoint, "rig-b", channels=2, heartbeat_s=HB, liveness=LIVENESS, **curve)
            try:
                for _ in range(100):
                    if any("server silent" in r.getMessage() for r in caplog.records):
                        break
                    await asyncio.sleep(0.05)
            finally:
                await asyncio.to_thread(client.close)

    with caplog.at_level(logging.WARNING, logger="rig_client.client"):
        run(scenario())
    silent = [r.getMessage() for r in caplog.records if "server silent" in r.getMessage()]
    assert silent and hint in silent[0]


def test_a_closed_rig_connection_is_logged_once_not_at_every_heartbeat(zmq_context, endpoint, caplog):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = await h.register()
            d.close(linger=0)
            while ("disconnect", "rig-a") not in h.handler.events:  # LIVENESS heartbeats later
                await asyncio.sleep(HB)

    with caplog.at_level(logging.WARNING, logger="server.transport"):
        run(scenario())
    assert len([r for r in caplog.records if "could not send HEARTBEAT" in r.getMessage()]) == 1


def test_rig_client_with_key_files(keys, zmq_context, endpoint):
    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint) as server:
            files = curve_keys(keys.root / "server.key", keys.root / "issued" / "rig-b.key_secret")
            client = RigClient(endpoint, "rig-b", channels=2, heartbeat_s=HB, liveness=LIVENESS,
                               **files)
            try:
                assert await asyncio.to_thread(client.wait_connected, 5)
            finally:
                await asyncio.to_thread(client.close)
            assert ("hello", "rig-b") in server.handler.events

    run(scenario())


def test_every_rig_command_takes_the_key_files_and_the_bridge_connects_with_them(keys, zmq_context, endpoint,
                                                                                  tmp_path):
    """`actmax rig bridge|present|sim` share --endpoint, --rig, --server-key and --rig-key; the bridge, run as its
    own process, completes the CURVE handshake as its rig. Half a key pair is a clear error."""
    from server.cli import build_parser

    files = ["--server-key", str(keys.root / "server.key"), "--rig-key", str(keys.root / "issued" / "rig-a.key_secret")]
    for command in (["bridge", "--folder", "f"], ["present", "--spikes", "replay:x.npz"], ["sim"]):
        args = build_parser().parse_args(["rig", *command, "--rig", "rig-a", *files])
        assert (args.rig, args.server_key, args.rig_key) == ("rig-a", files[1], files[3])
    bridge = [sys.executable, "-m", "server.cli", "rig", "bridge", "--folder", str(tmp_path / "rig-folder"),
              "--endpoint", endpoint, "--rig", "rig-a"]
    half = subprocess.run([*bridge, *files[:2]], capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "CURVE needs both --server-key and --rig-key" in half.stderr

    async def scenario():
        async with CurveServer(keys, zmq_context, endpoint) as server:
            process = await asyncio.to_thread(subprocess.Popen, [*bridge, *files], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE)
            try:
                for _ in range(1200):  # the bridge's own start takes seconds on a loaded machine
                    if ("connected", "rig-a") in server.handler.events:
                        break
                    await asyncio.sleep(0.05)
                assert server.handler.events[:2] == [("hello", "rig-a"), ("connected", "rig-a")], \
                    process.stderr.read1().decode() if process.poll() is not None else "bridge still running"
            finally:
                process.terminate()
                await asyncio.to_thread(process.wait, 30)

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_keys_store_refuses_bad_input(keys, tmp_path):
    with pytest.raises(ServerError, match="already has a key"):
        keys.add_rig("rig-a")
    with pytest.raises(ServerError, match="not valid"):
        keys.add_rig("../evil")
    with pytest.raises(ServerError, match="cannot read"):
        keys.add_rig("rig-c", tmp_path / "missing.key")
    for own_key in ("server.key", "server.key_secret"):
        with pytest.raises(ServerError, match="holds the server's own key"):
            keys.add_rig("rig-c", keys.root / own_key)
    own, _ = zmq.auth.create_certificates(tmp_path, "rig-c")  # a key pair the rig made itself
    keys.add_rig("rig-c", own)
    with pytest.raises(ServerError, match="already the key of rig 'rig-c'"):
        keys.add_rig("rig-d", own)
    with pytest.raises(ServerError, match="rig 'rig-d' has no key"):
        keys.revoke_rig("rig-d")
    with pytest.raises(RigError, match="no secret key"):
        curve_keys(keys.root / "server.key", keys.root / "server.key")
    with pytest.raises(ServerError, match="not valid"):  # it deleted server.key and server.key_secret
        keys.revoke_rig("../server")
    assert keys.enabled() and (keys.root / "server.key").is_file()


def test_a_rig_given_the_servers_secret_or_a_damaged_key_is_refused_naming_the_file(keys, tmp_path):
    rig_secret = keys.root / "issued" / "rig-a.key_secret"
    with pytest.raises(RigError, match="holds the server's secret key: pass server.key .*pose as the server"):
        curve_keys(keys.root / "server.key_secret", rig_secret)  # it connected: the secret had reached a rig PC
    cut = tmp_path / "server.key"
    cut.write_text(re.sub(r'public-key = "(.{39}).', r'public-key = "\1', (keys.root / "server.key").read_text()))
    with pytest.raises(RigError, match=f"{cut} holds .*not a CURVE key \\(40 Z85 characters\\)"):
        curve_keys(cut, rig_secret)  # a ZMQError traceback before
    junk = tmp_path / "junk.key"
    junk.write_text('metadata\ncurve\n    public-key = "hello world"\n')
    with pytest.raises(ServerError, match="not a CURVE key"):
        keys.add_rig("rig-f", junk)  # it was registered, and listed as the key "hello world"


def test_key_files_others_could_read_or_change_are_warned_about(keys, capsys):
    from server.cli import main

    assert keys.exposed() == []
    keys.server_secret_file.chmod(0o644)
    (keys.root / "rigs").chmod(0o777)
    assert main(["keys", "--data-dir", str(keys.root.parent), "list"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert f"warning: {keys.server_secret_file} can be read by other users: chmod 600 it" in warnings
    assert f"warning: {keys.root / 'rigs'} can be written by other users, who could add a rig or replace a key: " \
           "chmod 755 it" in warnings


def test_keys_rig_and_revoke_warn_that_a_damaged_key_file_stops_every_new_connection(keys, capsys):
    from server.cli import main

    (keys.root / "rigs" / "stray.key").write_text("")
    assert main(["keys", "--data-dir", str(keys.root.parent), "revoke", "rig-b"]) == 0
    assert "warning: a running server refuses every rig's new connection until this is fixed: cannot read the " \
           f"key file {keys.root / 'rigs' / 'stray.key'}" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, curve, message", [
    ({"zmq_endpoint": "tcp://0.0.0.0:5555"}, False, "off loopback without CURVE"),
    ({"zmq_endpoint": "tcp://*:5555"}, False, "off loopback without CURVE"),
    ({"http_host": "0.0.0.0", "token": "short"}, False, "at least 32"),
    ({"zmq_endpoint": "tcp://0.0.0.0:5555", "http_host": "::", "token": "x" * 32}, True, None),
    ({"zmq_endpoint": "tcp://[::1]:5555", "token": "short"}, False, None),
    ({"zmq_endpoint": "ipc:///tmp/actmax", "token": "short"}, False, None),
])
def test_serving_off_loopback_needs_curve_and_a_long_token(tmp_path, overrides, curve, message):
    settings = Settings(data_dir=tmp_path, **{"token": "t" * 8, **overrides})
    if message is None:
        settings.check_exposure(curve)
    else:
        with pytest.raises(ServerError, match=message):
            settings.check_exposure(curve)


SERVER = textwrap.dedent("""
    import asyncio, sys
    from server.transport import Transport
    from tests.server.test_transport import Recorder

    async def main():
        transport = Transport(sys.argv[1], Recorder())
        print("ready", flush=True)
        await transport.run()

    asyncio.run(main())
""")


def test_peers_claiming_routing_ids_cannot_abort_the_server(zmq_context):
    """Unseeded, libzmq's first automatic id is 0x6b8b4567 in every run; peers that claim it and
    the ids after it made the next plain connection abort the server (socket_base.cpp:2113)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, endpoint], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    sockets = []
    try:
        assert server.stdout.readline() == "ready\n"
        for k in range(16):
            claimer = zmq_context.socket(zmq.DEALER)
            claimer.setsockopt(zmq.ROUTING_ID, b"\0" + struct.pack(">I", 0x6B8B4567 + k))
            sockets.append(claimer)
            claimer.connect(endpoint)
            claimer.send_multipart(hello(f"claim-{k}"))
            assert claimer.poll(5000), "the server did not answer a claimed-id peer"
            claimer.recv_multipart()
        for k in range(16):
            plain = zmq_context.socket(zmq.DEALER)
            sockets.append(plain)
            plain.connect(endpoint)
            plain.send_multipart(hello(f"plain-{k}"))
            assert plain.poll(5000), f"no WELCOME for plain peer {k}; server exit {server.poll()}"
            assert decode(plain.recv_multipart()).type == MessageType.WELCOME
        assert server.poll() is None
    finally:
        for s in sockets:
            s.close(linger=0)
        server.kill()
        server.wait()


def test_noisy_peer_is_answered_but_its_log_lines_are_limited(zmq_context, endpoint, caplog):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = h.dealer()
            for _ in range(200):
                await d.send_multipart(raw(b"HELLO", b"{not json"))
            codes = [(await h.reply(d)).header["code"] for _ in range(200)]
            assert codes == ["bad_json"] * 200

    with caplog.at_level(logging.INFO, logger="server.transport"):
        run(scenario())
    bad = [r for r in caplog.records if "bad message" in r.getMessage()]
    assert 20 <= len(bad) < 200


def test_hello_flood_from_one_address_is_refused_before_the_handler(zmq_context, endpoint):
    async def scenario():
        async with Harness(zmq_context, endpoint) as h:
            d = h.dealer()
            for k in range(300):
                await d.send_multipart(hello(f"invented-{k}"))
            codes = [(await h.reply(d)).type for _ in range(300)]
            assert MessageType.ERROR in codes
            hellos = [e for e in h.handler.events if e[0] == "hello"]
            assert 100 <= len(hellos) < 300

    run(scenario())


def test_keys_command_makes_and_lists_keys_and_serve_refuses_open_endpoints(tmp_path, capsys, monkeypatch):
    from server.cli import main

    data = str(tmp_path / "data")
    assert main(["keys", "rig", "rig-a", "--data-dir", data]) == 0  # the option before or after the action
    assert "run `actmax keys init`" in capsys.readouterr().out
    assert main(["keys", "init", "--data-dir", data]) == 0
    made = capsys.readouterr().out
    public = made.split(": ")[1].split()[0]
    assert "restart a running server" in made
    assert main(["keys", "--data-dir", data, "rig", "rig-b"]) == 0
    made = capsys.readouterr().out
    assert "issued/rig-b.key_secret" in made and "no restart needed" in made
    assert main(["keys", "--data-dir", data, "list"]) == 0
    listing = capsys.readouterr().out
    assert public in listing and "rig rig-a: " in listing and "rig rig-b: " in listing
    assert "warning: " in listing and "issued/rig-b.key_secret is a rig's secret key" in listing
    assert main(["keys", "--data-dir", data, "rig", "rig a"]) == 2
    assert "not valid" in capsys.readouterr().err
    made_on_rig = zmq.auth.create_certificates(tmp_path, "rig-c")[1]  # the pair file, where the .key was meant
    assert main(["keys", "rig", "rig-c", "--public-key", str(made_on_rig), "--data-dir", data]) == 0
    assert "also holds the rig's secret key; only its public key is registered" in capsys.readouterr().err
    assert "secret" not in (tmp_path / "data" / "keys" / "rigs" / "rig-c.key").read_text()
    assert main(["keys", "revoke", "rig-b", "--data-dir", data]) == 0
    assert "restart `actmax serve` to cut it" in capsys.readouterr().out
    assert main(["keys", "--data-dir", data, "list"]) == 0
    listing = capsys.readouterr().out
    assert "rig rig-a: " in listing and "rig-b" not in listing

    monkeypatch.setenv("ACTMAX_TOKEN", "t" * 40)
    empty = str(tmp_path / "no-keys")
    assert main(["serve", "--data-dir", empty, "--zmq-endpoint", "tcp://0.0.0.0:5555"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "actmax keys init" in error


def test_keys_init_writes_a_lost_public_key_again_and_warns_when_a_new_pair_strands_the_registered_rigs(keys,
                                                                                                       capsys):
    from server.cli import main

    public = keys.server_keys()[0]
    (keys.root / "server.key").unlink()  # moved away, not copied: `keys init` told to copy a file that was gone
    assert main(["keys", "--data-dir", str(keys.root.parent), "init"]) == 0
    assert zmq.auth.load_certificate(keys.root / "server.key") == (public, None)
    keys.server_secret_file.unlink()  # lost: a new pair, which the rigs registered before do not know
    assert main(["keys", "--data-dir", str(keys.root.parent), "init"]) == 0
    assert "warning: the rigs registered here (rig-a, rig-b) hold the server.key of the key pair this one " \
           "replaces" in capsys.readouterr().err
    assert keys.server_keys()[0] != public
