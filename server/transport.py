"""The server's side of wire protocol v1: one asyncio ZeroMQ ROUTER socket for all rigs.

`Transport` maps ZeroMQ identities to rig names (from HELLO), keeps an expiry per rig (Paranoid
Pirate), heartbeats every rig, and hands HELLO/RESULTS to an async handler. Nothing a rig sends can
stop the loop: bad input gets an ERROR reply and a log line (rate-limited per peer address).

Each connection's messages are handled in order, one at a time, by a task of its own (`_Inbox`), so
a slow handler call (a RESULTS that completes a generation waits for its render) holds up only the
connection it answers: the socket is read meanwhile, and every message a rig sends renews its expiry
the moment it arrives.

With CURVE keys the socket only completes handshakes with allowed rig keys (a ZAP handler on a
private context), and a HELLO must name the rig its key belongs to.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from rig_client.protocol import (
    MAX_MESSAGE_BYTES, PRESENTATION_FIELDS, ErrorCode, Message, MessageType, ProtocolError, decode, encode, error,
    is_id,
)
from rig_client.version import package_version
from server import RigInputError, ServerError

log = logging.getLogger(__name__)

# What one connection may have waiting for its turn (messages, bytes). A connection that reaches either
# stops the socket's reading until it has room: ZeroMQ queues the rest (as it did every message while
# one was handled, before connections had inboxes), so nothing is refused and replies keep their order.
MAX_QUEUED_MESSAGES = 1_000
MAX_QUEUED_BYTES = MAX_MESSAGE_BYTES
MAX_UNKNOWN_FIELDS = 32  # unknown presentation field names a connection is warned about; later ones are not
SILENT = "went silent"  # why a rig is gone when it was not heard for a liveness period (``Handler.on_disconnect``)
LIVE_HEARTBEATS = 2  # a connection heard within this many heartbeats still runs (a rig sends one every heartbeat)

# CURVE handshakes that fail before the ZAP handler is asked, by ZeroMQ's error code; ZeroMQ's monitor names no
# peer address for them. A peer without CURVE may also just close the connection (a failure with no detail).
NO_CURVE = "not using CURVE, or closed the connection mid-handshake (a rig without --server-key and --rig-key)"
HANDSHAKE_FAILURES = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: NO_CURVE,
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "a wrong server key (the rig's --server-key must be this server's "
                                           "keys/server.key) or a broken rig key pair",
}


SERVER_NAME = f"actmax {package_version()}"  # WELCOME's ``server``: the name and version


class Handler(Protocol):
    """What the transport calls; all methods are coroutines and should return quickly."""

    async def on_hello(self, rig_name: str, header: dict) -> dict:
        """WELCOME header fields (the transport adds server, heartbeat_ms, liveness, max_message_bytes).

        Raise `ProtocolError` or `server.RigInputError` to refuse the rig (it gets an ERROR reply).
        """

    async def on_results(self, rig_name: str, header: dict) -> dict:
        """The ACK header for valid RESULTS; raise `ProtocolError` or `RigInputError` to reply ERROR instead."""

    async def on_disconnect(self, rig_name: str, why: str = SILENT) -> None:
        """The rig is gone: ``why`` it went (`SILENT`: not heard for `liveness` heartbeats; or its connection's
        HELLO was refused, or named another rig)."""

    async def on_connected(self, rig_name: str) -> None:
        """Optional: WELCOME was sent; (re)send the rig's outstanding batch here."""

    async def on_refused(self, rig_name: str, batch_id: str, refusal: RigInputError) -> None:
        """Optional: the transport itself refused a RESULTS (e.g. rates not matching HELLO's channels)."""

    async def on_replaced(self, rig_name: str, heard_s_ago: float) -> None:
        """Optional: a HELLO took the rig name from a connection still live (heard ``heard_s_ago``, within
        ``LIVE_HEARTBEATS`` heartbeats, none of them a pause of the server's): perhaps a second program under that name.
        Called before `on_connected`."""


@dataclass
class _Rig:
    identity: bytes
    channels: int
    expires: float
    heard: float  # monotonic time its last message arrived (its HELLO's, at first)
    unreachable: bool = False  # the last send to it failed (its connection is gone): logged once
    unknown_fields: set[str] = field(default_factory=set)  # presentation fields it was warned about


@dataclass
class _Inbox:
    """A connection's messages not yet handled (frames without the identity, and the sender)."""

    messages: deque[tuple[list[bytes], _Peer]] = field(default_factory=deque)
    size: int = 0  # their bytes
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set when one is handled

    def full(self) -> bool:
        return len(self.messages) >= MAX_QUEUED_MESSAGES or self.size >= MAX_QUEUED_BYTES


class PeerBudget:
    """Token buckets per peer address: ``burst`` actions at once, refilled at ``per_s``."""

    def __init__(self, burst: float, per_s: float, max_peers: int = 10_000):
        self.burst, self.per_s, self.max_peers = burst, per_s, max_peers
        self._peers: dict[str, tuple[float, float]] = {}

    def allow(self, peer: str) -> bool:
        now = time.monotonic()
        tokens, since = self._peers.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.per_s)
        if len(self._peers) >= self.max_peers and peer not in self._peers:
            self._peers.clear()  # bounded memory; forgetting budgets only forgives
        self._peers[peer] = (max(tokens - 1, 0.0), now)
        return tokens >= 1


def _unpredictable_routing_ids() -> None:
    """Seed libc's rand(), from which libzmq draws a ROUTER's first automatic routing id.

    Unseeded, every run starts at 0x6b8b4567; a peer that claims the next ids (ZMQ_ROUTING_ID)
    makes the following automatic id collide, and libzmq aborts the process
    (socket_base.cpp:2113). A random start makes the colliding id a 1 in 2**31 guess.
    """
    try:
        ctypes.CDLL(None).srand(secrets.randbits(32))
    except (OSError, AttributeError):  # no C library to seed (not on Linux/macOS)
        log.warning("could not seed libzmq's routing ids; keep the rigs' port on loopback or CURVE")


def _batch_id(header: dict) -> str | None:
    """The header's batch_id for an ERROR reply, if it is a valid id (types without one may carry junk)."""
    value = header.get("batch_id")
    return value if is_id(value) else None


class _Peer:
    """Who sent a message, from ZeroMQ's frame metadata: address, and rig name under CURVE; and when it arrived."""

    def __init__(self, frame: zmq.Frame, curve: bool):
        self.arrived = time.monotonic()
        self.address = _frame_property(frame, "Peer-Address") or "unknown address"
        self.rig = _frame_property(frame, "User-Id") if curve else None


def _frame_property(frame: zmq.Frame, name: str) -> str | None:
    try:
        return frame.get(name)
    except zmq.ZMQError:  # not set for this transport (inproc, ipc)
        return None


class Transport:
    """ROUTER socket bound to ``endpoint`` that serves rigs until `close`.

    Binds at construction (``tcp://127.0.0.1:*`` picks a free port; see `endpoint`). ``handler`` may be set
    later, before `run`.

    ``server_key`` (public, secret; Z85) turns CURVE on: then only the public keys in
    ``rig_keys`` (Z85 key -> rig name) connect, each as its own rig name, and the transport uses a
    private ZeroMQ context for its ZAP handler (``context`` is ignored). ``rig_keys`` may be a function
    returning them: it is called at every handshake, so keys registered meanwhile need no restart.
    Failed handshakes are logged, once a minute per peer and reason.
    """

    def __init__(self, endpoint: str, handler: Handler | None, *, heartbeat_s: float = 2.0,
                 liveness: int = 5, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 context: zmq.Context | None = None,
                 server_key: tuple[bytes, bytes] | None = None,
                 rig_keys: Mapping[bytes, str] | Callable[[], Mapping[bytes, str]] | None = None):
        if heartbeat_s <= 0 or liveness < 1 or max_message_bytes < 1024:
            raise ValueError("need heartbeat_s > 0, liveness >= 1 and max_message_bytes >= 1024")
        self.handler = handler
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        self.curve = server_key is not None
        self._read_rig_keys = rig_keys if callable(rig_keys) else lambda keys=dict(rig_keys or {}): keys
        self._log_budget = PeerBudget(burst=20, per_s=1)  # log lines a peer may cause
        self._handshake_budget = PeerBudget(burst=1, per_s=1 / 60)  # failed-handshake lines per peer and reason
        self._hello_budget = PeerBudget(burst=100, per_s=5)  # handler calls (events rows) per peer
        self._suppressed = 0
        _unpredictable_routing_ids()
        if self.curve:
            self._ctx = zmq.asyncio.Context()
            self._zap = self._ctx.socket(zmq.REP)
            self._zap.setsockopt(zmq.LINGER, 0)
            self._zap.bind("inproc://zeromq.zap.01")
        else:
            self._ctx = zmq.asyncio.Context.shadow(context or zmq.Context.instance())
            self._zap = None
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Hard cap per frame: ZeroMQ drops the connection of a peer that sends a larger frame.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if server_key is not None:
            self._socket.setsockopt(zmq.CURVE_SERVER, 1)
            self._socket.setsockopt(zmq.CURVE_SECRETKEY, server_key[1])
            self._socket.setsockopt(zmq.ZAP_DOMAIN, b"actmax")
            self._socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP answer: no connection
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) if self.curve else None
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ServerError(f"cannot bind the rig transport to {endpoint}: {exc}; choose a free "
                              "port or stop the process that holds it") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._rigs: dict[str, _Rig] = {}
        self._names: dict[bytes, str] = {}
        self._inboxes: dict[bytes, _Inbox] = {}  # connections with messages in hand, each drained by one task
        self._draining: set[asyncio.Task] = set()
        # The heartbeat loop's clock (monotonic): when its current sleep began (inf while it does not sleep), and when
        # the last pause it noticed (the server did not run) ended. Messages read just after a pause were queued
        # during it (``_paused_lately``).
        self._slept, self._woke = float("inf"), float("-inf")
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    # --- public API ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve rigs until `close` is called; returns at once if `close` came first."""
        if self._closing.is_set():
            return
        if self._running:
            raise ServerError("Transport.run() is already running; call it once per Transport")
        self._running = True
        loops = [asyncio.create_task(self._receive_loop()),
                 asyncio.create_task(self._heartbeat_loop())]
        if self._zap is not None:
            loops += [asyncio.create_task(self._zap_loop()), asyncio.create_task(self._monitor_loop())]
        closing = asyncio.create_task(self._closing.wait())
        try:
            done, _ = await asyncio.wait([closing, *loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (closing, *loops, *self._draining):
                task.cancel()
            await asyncio.gather(closing, *loops, *self._draining, return_exceptions=True)
            self._close_sockets()
            self._stopped.set()
        for task in loops:
            if task in done and task.exception() is not None:
                raise ServerError(f"the rig transport stopped: {task.exception()!r}; restart the "
                                  "server") from task.exception()

    async def send(self, rig_name: str, msg: Message) -> bool:
        """Send ``msg`` to a connected rig; False if the rig is not connected (nothing was sent).

        Raises `ProtocolError` if ``msg`` is invalid or larger than ``max_message_bytes``.
        """
        frames = encode(msg, max_message_bytes=self.max_message_bytes)
        rig = self._rigs.get(rig_name)
        return rig is not None and await self._send_frames(rig.identity, frames)

    def connected(self, rig_name: str) -> bool:
        """Whether ``rig_name`` said HELLO and has not gone silent since."""
        return rig_name in self._rigs

    def rigs(self) -> list[str]:
        """Names of the connected rigs."""
        return list(self._rigs)

    def rig_status(self, rig_name: str) -> dict | None:
        """A connected rig's channel count and seconds since it was last heard; None when not connected."""
        rig = self._rigs.get(rig_name)
        if rig is None:
            return None
        return {"channels": rig.channels, "heard_s_ago": max(0.0, time.monotonic() - rig.heard)}

    async def close(self) -> None:
        """Stop `run` and close the socket (linger 0); outstanding sends are dropped."""
        self._closing.set()
        if self._running:
            await self._stopped.wait()
        else:
            self._close_sockets()

    # --- internals -----------------------------------------------------------------------------

    def _close_sockets(self) -> None:
        if self._socket.closed:  # closed already (`close` before and after `run`)
            return
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
        self._socket.close(linger=0)
        if self._zap is not None:
            self._zap.close(linger=0)
            self._ctx.term()

    async def _zap_loop(self) -> None:
        """Answer ZeroMQ's authentication requests (RFC 27): allowed keys, named by their rig."""
        while True:
            version, request_id, _domain, address, _identity, mechanism, *credentials = \
                await self._zap.recv_multipart()
            key = zmq.utils.z85.encode(credentials[0]) if mechanism == b"CURVE" and credentials else None
            allowed = self._allowed_keys() if key else {}
            name = allowed.get(key) if allowed is not None else None
            if allowed is None:  # the error says which file
                self._log_handshake(f"from {address.decode(errors='replace')}", "the rig keys cannot be read")
            elif name is None:
                self._log_handshake(f"from {address.decode(errors='replace')}", "unknown CURVE key" if key else
                                    "no CURVE key", f" {key.decode()} (not in `actmax keys list`; `actmax keys rig "
                                    "NAME --public-key FILE` registers it)" if key else "")
            if name is None:
                await self._zap.send_multipart([version, request_id, b"400", b"key not allowed",
                                                b"", b""])
            else:
                await self._zap.send_multipart([version, request_id, b"200", b"OK",
                                                name.encode(), b""])

    async def _monitor_loop(self) -> None:
        """Log the handshakes that failed before the ZAP handler was asked (`HANDSHAKE_FAILURES`)."""
        while True:
            event = await recv_monitor_message(self._monitor)
            reason = NO_CURVE if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL else \
                HANDSHAKE_FAILURES.get(event["value"], f"ZeroMQ protocol error {event['value']:#x}")
            self._log_handshake(f"on {event['endpoint'].decode()} (ZeroMQ names no peer address here)", reason)

    def _allowed_keys(self) -> Mapping[bytes, str] | None:
        """The rig keys, read anew; None while the key files cannot be read: then no key passes (one revoked meanwhile
        must not pass because another file is damaged). Connections open already stay."""
        try:
            return self._read_rig_keys()
        except ServerError as exc:
            if self._handshake_budget.allow(str(exc)):
                log.error("refusing every rig's new connection until the rig keys can be read: %s", exc)
            return None

    def _log_handshake(self, where: str, reason: str, detail: str = "") -> None:
        """One line a minute per peer and ``reason`` (a failing peer retries every 100 ms; the budget is not
        keyed by ``detail``, so a peer trying key after key gets no more lines)."""
        if self._handshake_budget.allow(f"{where}: {reason}"):
            log.warning("refused a CURVE handshake %s: %s%s", where, reason, detail)

    def _log(self, peer: str, level: int, fmt: str, *args: Any) -> None:
        """Log a line caused by ``peer``, unless that peer has used up its budget of lines (lines below the
        log's level use none)."""
        if not log.isEnabledFor(level):
            return
        if not self._log_budget.allow(peer):
            self._suppressed += 1
            return
        if self._suppressed:
            fmt += " (%d lines from noisy peers suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        log.log(level, fmt, *args)

    async def _send_frames(self, identity: bytes, frames: list[bytes], level: int = logging.WARNING) -> bool:
        """Send to ``identity``; False if ZeroMQ refused. Sends to a bound rig that keep failing (heartbeats,
        batches, until it expires) are logged once at ``level``, then at DEBUG until one succeeds."""
        name = self._names.get(identity)
        rig = self._rigs.get(name) if name is not None else None
        try:
            await self._socket.send_multipart([identity, *frames], flags=zmq.DONTWAIT, copy=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH (peer gone) or EAGAIN (peer not reading)
            if rig is None:
                self._log("failed sends", level, "could not send %s to identity %s: %s",
                          frames[1].decode(), identity.hex(), exc)  # one budget: peers that vanish
            else:
                self._log("failed sends", logging.DEBUG if rig.unreachable else level,
                          "could not send %s to rig %s (identity %s): %s; further failures to send to it are "
                          "logged at DEBUG", frames[1].decode(), name, identity.hex(), exc)
                rig.unreachable = True
            return False
        if rig is not None:
            rig.unreachable = False
        return True

    async def _reply(self, identity: bytes, msg: Message, level: int = logging.WARNING) -> None:
        await self._send_frames(identity, encode(msg, max_message_bytes=self.max_message_bytes), level)

    async def _reply_built(self, identity: bytes, msg: Message, in_reply_to: MessageType,
                           batch_id: str | None = None) -> bool:
        """Send a reply the handler built; if it is invalid, log it and reply ERROR internal."""
        try:
            frames = encode(msg, max_message_bytes=self.max_message_bytes)
        except ProtocolError as exc:
            log.error("handler built an invalid %s: %s", msg.type, exc)
            await self._reply(identity, error(
                ErrorCode.INTERNAL, f"the server built an invalid {msg.type}; it logged the "
                "cause", in_reply_to=in_reply_to, batch_id=batch_id))
            return False
        return await self._send_frames(identity, frames)

    async def _reply_error(self, identity: bytes, exc: ProtocolError) -> None:
        if exc.in_reply_to == MessageType.ERROR:
            return  # never answer an ERROR with an ERROR
        await self._reply(identity, exc.to_message())

    def _refresh(self, name: str) -> None:
        self._rigs[name].expires = time.monotonic() + self.heartbeat_s * self.liveness

    async def _receive_loop(self) -> None:
        while True:
            received = await self._socket.recv_multipart(copy=False)
            identity, peer = received[0].bytes, _Peer(received[-1], self.curve)
            frames = [f.bytes for f in received[1:]]
            name = self._names.get(identity)
            if name is not None:  # alive, even while an earlier message of it waits for the handler
                self._rigs[name].heard = peer.arrived
                self._refresh(name)
            inbox = self._inboxes.get(identity)
            if inbox is None:
                inbox = self._inboxes[identity] = _Inbox()
                task = asyncio.get_running_loop().create_task(self._drain(identity, inbox))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
            inbox.messages.append((frames, peer))
            inbox.size += sum(len(f) for f in frames)
            while inbox.full():  # it sends without waiting for replies: read nothing more until it has room
                inbox.room.clear()
                await inbox.room.wait()

    async def _drain(self, identity: bytes, inbox: _Inbox) -> None:
        """Handle a connection's messages in the order they came, until none is left."""
        while inbox.messages:
            frames, peer = inbox.messages[0]
            try:
                await self._dispatch(identity, frames, peer)
            except Exception:  # a bug here must not stop the server; the rig will retry
                log.exception("transport failed on a message from identity %s", identity.hex())
            inbox.messages.popleft()
            inbox.size -= sum(len(f) for f in frames)
            inbox.room.set()
        del self._inboxes[identity]

    async def _dispatch(self, identity: bytes, frames: list[bytes], peer: _Peer) -> None:
        name = self._names.get(identity)
        who = name or f"unregistered identity {identity.hex()} at {peer.address}"
        try:
            msg = decode(frames, max_message_bytes=self.max_message_bytes, receiver="server")
        except ProtocolError as exc:
            self._log(peer.address, logging.WARNING, "bad message from %s: %s", who, exc)
            if name is not None and exc.in_reply_to == MessageType.RESULTS and exc.batch_id:
                await self._record_refusal(name, exc.batch_id, RigInputError(exc.code, exc.message))
            await self._reply_error(identity, exc)
            return
        if msg.type == MessageType.HELLO:
            await self._hello(identity, msg.header, peer)
            return
        if name is None:
            if msg.type != MessageType.ERROR:
                self._log(peer.address, logging.INFO, "%s from %s before HELLO", msg.type, who)
                await self._reply(identity, error(
                    ErrorCode.NOT_REGISTERED, "send HELLO first (the server restarted or timed "
                    "this connection out)", in_reply_to=msg.type,
                    batch_id=_batch_id(msg.header)))
            return
        if msg.type == MessageType.HEARTBEAT:
            return
        if msg.type == MessageType.ERROR:
            # Quoted, as all rig text: a newline in it would forge a log line. Budgeted, as all a peer causes.
            self._log(peer.address, logging.WARNING, "rig %s reports error %r (in reply to %r): %r", name,
                      msg.header["code"], msg.header["in_reply_to"], msg.header["message"])
            return
        await self._results(identity, name, msg.header, peer)

    async def _results(self, identity: bytes, name: str, header: dict, peer: _Peer) -> None:
        rig = self._rigs[name]
        channels = rig.channels
        ignored: set[str] = set()
        for i, p in enumerate(header["presentations"]):
            if unknown := p.keys() - PRESENTATION_FIELDS:
                self._note_unknown_fields(rig, name, unknown, peer)
                ignored |= unknown
            if len(p["rates"]) != channels:
                refusal = RigInputError(ErrorCode.BAD_FIELD, f"RESULTS presentations[{i}] has {len(p['rates'])} "
                                        f"rates; this rig declared {channels} channels in HELLO")
                await self._record_refusal(name, header["batch_id"], refusal)
                await self._reply(identity, error(refusal.code, refusal.message, in_reply_to=MessageType.RESULTS,
                                                  batch_id=header["batch_id"]))
                return
        ack = await self._call(identity, peer, name, MessageType.RESULTS, header["batch_id"],
                               self.handler.on_results, header)
        if ack is not None:
            if ignored:  # the rig hears of them too (a misspelt trial fact leaves a flagged trial scored)
                ack = {**ack, "ignored_fields": sorted(ignored)[:MAX_UNKNOWN_FIELDS]}
            await self._reply_built(identity, Message(MessageType.ACK, ack), MessageType.RESULTS,
                                    header["batch_id"])

    def _note_unknown_fields(self, rig: _Rig, name: str, fields: set[str], peer: _Peer) -> None:
        """Warn once per connection of each presentation field the protocol does not define (ignored, §2): a
        misspelled trial fact would leave a flagged trial scored."""
        new = sorted(fields - rig.unknown_fields)[:MAX_UNKNOWN_FIELDS - len(rig.unknown_fields)]
        if new:
            rig.unknown_fields.update(new)
            self._log(peer.address, logging.WARNING, "rig %s sent presentation field(s) %s that the protocol does not "
                      "define (docs/protocol.md §4.4); they are ignored: check their spelling on the rig", name,
                      ", ".join(map(repr, new)))

    async def _record_refusal(self, name: str, batch_id: str, refusal: RigInputError) -> None:
        """Tell the handler (``on_refused``) of a RESULTS refused here, before the rig hears of it."""
        on_refused = getattr(self.handler, "on_refused", None)
        if on_refused is not None:
            try:
                await on_refused(name, batch_id, refusal)
            except Exception:
                log.exception("handler.on_refused(%r) failed", name)

    async def _hello(self, identity: bytes, header: dict, peer: _Peer) -> None:
        name = header["rig"]
        previous = self._names.get(identity)
        refusal = None
        if self.curve and peer.rig != name:
            refusal = RigInputError(ErrorCode.REFUSED, f"this connection's CURVE key belongs to rig {peer.rig!r}, "
                                    f"not {name!r}; use the key pair `actmax keys rig NAME` made for this rig")
        elif not self._hello_budget.allow(peer.address):
            refusal = RigInputError(ErrorCode.RATE_LIMITED, "too many HELLOs from this address; reconnect "
                                    "with backoff (docs/protocol.md §6.3)")
        if refusal is not None:
            self._log(peer.address, logging.WARNING, "HELLO as %r refused: %s", name, refusal.message)
            await self._reply(identity, error(refusal.code, refusal.message, in_reply_to=MessageType.HELLO))
            welcome = None
        else:
            welcome = await self._call(identity, peer, name, MessageType.HELLO, None,
                                       self.handler.on_hello, header)
        if welcome is None:  # refused; a binding this identity had is gone too
            if previous is not None:
                await self._unbind(previous, why=f"was let go: its connection's HELLO (as {name!r}) was refused")
            return
        if previous is not None and previous != name:
            await self._unbind(previous, why=f"was let go: its connection said HELLO as rig {name!r} instead")
        old = self._rigs.get(name)
        replaced = None  # seconds since a live connection it replaces was heard
        if old is not None and old.identity != identity:
            self._names.pop(old.identity, None)
            await self._reply(old.identity, error(  # a reconnect: the old connection is usually gone
                ErrorCode.REPLACED, f"another connection said HELLO as rig {name!r}; rig names "
                "must be unique (is the rig program running twice?)"), logging.DEBUG)
            heard = peer.arrived - old.heard
            if heard <= LIVE_HEARTBEATS * self.heartbeat_s and not self._paused_lately(peer.arrived):
                replaced = max(0.0, heard)
        self._rigs[name] = _Rig(identity, header["channels"], 0.0, peer.arrived)
        self._names[identity] = name
        self._refresh(name)
        welcome = {**welcome, "server": SERVER_NAME, "heartbeat_ms": round(self.heartbeat_s * 1000),
                   "liveness": self.liveness, "max_message_bytes": self.max_message_bytes}
        if not await self._reply_built(identity, Message(MessageType.WELCOME, welcome),
                                       MessageType.HELLO):
            await self._unbind(name, notify=False)
            return
        if replaced is None:
            log.info("rig %s connected (identity %s, %d channels)", name, identity.hex(), header["channels"])
        else:
            log.warning("rig %s connected (identity %s, %d channels), replacing identity %s, which was live (heard "
                        "%.1f s before this HELLO): is a second rig program running under this name?", name,
                        identity.hex(), header["channels"], old.identity.hex(), replaced)
            on_replaced = getattr(self.handler, "on_replaced", None)
            if on_replaced is not None:
                try:
                    await on_replaced(name, replaced)
                except Exception:
                    log.exception("handler.on_replaced(%r) failed", name)
        on_connected = getattr(self.handler, "on_connected", None)
        if on_connected is not None:
            try:
                await on_connected(name)
            except Exception:
                log.exception("handler.on_connected(%r) failed", name)

    async def _call(self, identity: bytes, peer: _Peer, name: str, mtype: MessageType, batch_id: str | None,
                    method: Any, header: dict) -> dict | None:
        """Run a handler method; on failure reply ERROR and return None."""
        try:
            reply = await method(name, header)
            if not isinstance(reply, dict):
                raise TypeError(f"{method.__qualname__} returned {type(reply).__name__}, "
                                "not a dict")
            return reply
        except (ProtocolError, RigInputError) as exc:  # the rig's input: answer ERROR with its code
            self._log(peer.address, logging.WARNING, "%s from rig %s refused: %s", mtype, name, exc)
            await self._reply_built(identity, error(exc.code, exc.message, in_reply_to=mtype,
                                                    batch_id=getattr(exc, "batch_id", None) or batch_id),
                                    mtype, batch_id)
        except Exception:
            log.exception("handler failed on %s from rig %s", mtype, name)
            await self._reply(identity, error(
                ErrorCode.INTERNAL, f"the server failed while handling {mtype}; it logged the "
                "cause; retry later", in_reply_to=mtype, batch_id=batch_id))
        return None

    async def _unbind(self, name: str, *, notify: bool = True, why: str = SILENT) -> None:
        rig = self._rigs.pop(name, None)
        if rig is None:
            return
        self._names.pop(rig.identity, None)
        if notify:
            try:
                await self.handler.on_disconnect(name, why)
            except Exception:
                log.exception("handler.on_disconnect(%r) failed", name)

    def _paused_lately(self, at: float) -> bool:
        """Whether the server did not run for a heartbeat or more within ``LIVE_HEARTBEATS`` heartbeats before ``at``
        (monotonic): a pause the heartbeat loop noticed, or one under way that it has yet to notice (its sleep is a
        heartbeat late). The messages a connection sent meanwhile are read only at the wake-up, so they do not show
        it was live: a rig whose old connection gave up on the server then says HELLO anew (not a second program)."""
        window = LIVE_HEARTBEATS * self.heartbeat_s
        return at - self._woke <= window or at - self._slept >= 2 * self.heartbeat_s

    async def _heartbeat_loop(self) -> None:
        """Heartbeat every rig, and mark disconnected those not heard for a liveness period (heartbeat x liveness).
        A sleep of this loop that ends a heartbeat or more late means the server did not run meanwhile (a suspended
        machine, a stopped process, an event loop held up): that time is not the rigs' silence, so it is added to
        their expiries (a rig that gave up on the server meanwhile reconnects, and its HELLO replaces it). It is
        logged, a warning when it lasted a liveness period or more (long enough to lose every rig)."""
        heartbeat = encode(Message(MessageType.HEARTBEAT))
        while True:
            self._slept = time.monotonic()
            await asyncio.sleep(self.heartbeat_s)
            now, asleep, self._slept = time.monotonic(), self._slept, float("inf")
            if (late := now - asleep - self.heartbeat_s) >= self.heartbeat_s:
                self._woke = now
                log.log(logging.WARNING if late >= self.heartbeat_s * self.liveness else logging.INFO,
                        "the server did not run for %.1f s (suspended or overloaded); that time does not count as its "
                        "rigs' silence (a rig that gave up on the server meanwhile reconnects by itself)", late)
                for rig in self._rigs.values():
                    rig.expires += late
            for name, rig in list(self._rigs.items()):
                if rig.expires <= now:
                    log.warning("rig %s silent for %.1f s; marked disconnected", name, now - rig.heard)
                    await self._unbind(name)
                else:
                    await self._send_frames(rig.identity, heartbeat)
