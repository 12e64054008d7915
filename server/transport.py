"""The server's side of wire protocol v1: one asyncio ZeroMQ ROUTER socket for all rigs.

`Transport` maps ZeroMQ identities to rig names (from HELLO), keeps an expiry per rig (Paranoid
Pirate), heartbeats every rig, and hands HELLO/RESULTS to an async handler. Nothing a rig sends can
stop the loop: bad input gets an ERROR reply and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import zmq
import zmq.asyncio

from rig_client.protocol import (
    MAX_MESSAGE_BYTES, ErrorCode, Message, MessageType, ProtocolError, decode, encode, error,
)
from server import RigInputError, ServerError

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What the transport calls; all methods are coroutines and should return quickly."""

    async def on_hello(self, rig_name: str, header: dict) -> dict:
        """WELCOME header fields (the transport adds heartbeat_ms, liveness, max_message_bytes).

        Raise `ProtocolError` or `server.RigInputError` to refuse the rig (it gets an ERROR reply).
        """

    async def on_results(self, rig_name: str, header: dict) -> dict:
        """The ACK header for valid RESULTS; raise `ProtocolError` or `RigInputError` to reply ERROR instead."""

    async def on_disconnect(self, rig_name: str) -> None:
        """The rig went silent for `liveness` heartbeats (or its HELLO was refused)."""

    async def on_connected(self, rig_name: str) -> None:
        """Optional: WELCOME was sent; (re)send the rig's outstanding batch here."""


@dataclass
class _Rig:
    identity: bytes
    channels: int
    expires: float


class Transport:
    """ROUTER socket bound to ``endpoint`` that serves rigs until `close`.

    Binds at construction (``tcp://127.0.0.1:*`` picks a free port; see `endpoint`).
    """

    def __init__(self, endpoint: str, handler: Handler, *, heartbeat_s: float = 2.0,
                 liveness: int = 5, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 context: zmq.Context | None = None):
        if heartbeat_s <= 0 or liveness < 1 or max_message_bytes < 1024:
            raise ValueError("need heartbeat_s > 0, liveness >= 1 and max_message_bytes >= 1024")
        self.handler = handler
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_message_bytes = max_message_bytes
        ctx = zmq.asyncio.Context.shadow(context or zmq.Context.instance())
        self._socket = ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Hard cap per frame: ZeroMQ drops the connection of a peer that sends a larger frame.
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise ServerError(f"cannot bind the rig transport to {endpoint}: {exc}; choose a free "
                              "port or stop the process that holds it") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._rigs: dict[str, _Rig] = {}
        self._names: dict[bytes, str] = {}
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
        closing = asyncio.create_task(self._closing.wait())
        try:
            done, _ = await asyncio.wait([closing, *loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (closing, *loops):
                task.cancel()
            await asyncio.gather(closing, *loops, return_exceptions=True)
            self._socket.close(linger=0)
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
        last_heard = rig.expires - self.liveness * self.heartbeat_s
        return {"channels": rig.channels, "heard_s_ago": max(0.0, time.monotonic() - last_heard)}

    async def close(self) -> None:
        """Stop `run` and close the socket (linger 0); outstanding sends are dropped."""
        self._closing.set()
        if self._running:
            await self._stopped.wait()
        else:
            self._socket.close(linger=0)

    # --- internals -----------------------------------------------------------------------------

    async def _send_frames(self, identity: bytes, frames: list[bytes]) -> bool:
        try:
            await self._socket.send_multipart([identity, *frames], flags=zmq.DONTWAIT, copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH (peer gone) or EAGAIN (peer not reading)
            log.warning("could not send %s to identity %s: %s", frames[1].decode(), identity.hex(),
                        exc)
            return False

    async def _reply(self, identity: bytes, msg: Message) -> None:
        await self._send_frames(identity, encode(msg, max_message_bytes=self.max_message_bytes))

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
            frames = await self._socket.recv_multipart()
            try:
                await self._dispatch(frames[0], frames[1:])
            except Exception:  # a bug here must not stop the server; the rig will retry
                log.exception("transport failed on a message from identity %s", frames[0].hex())

    async def _dispatch(self, identity: bytes, frames: list[bytes]) -> None:
        name = self._names.get(identity)
        who = name or f"unregistered identity {identity.hex()}"
        try:
            msg = decode(frames, max_message_bytes=self.max_message_bytes)
        except ProtocolError as exc:
            log.warning("bad message from %s: %s", who, exc)
            if name is not None:
                self._refresh(name)
            await self._reply_error(identity, exc)
            return
        if msg.type == MessageType.HELLO:
            await self._hello(identity, msg.header)
            return
        if name is None:
            if msg.type != MessageType.ERROR:
                log.info("%s from %s before HELLO", msg.type, who)
                await self._reply(identity, error(
                    ErrorCode.NOT_REGISTERED, "send HELLO first (the server restarted or timed "
                    "this connection out)", in_reply_to=msg.type,
                    batch_id=msg.header.get("batch_id")))
            return
        self._refresh(name)
        if msg.type == MessageType.HEARTBEAT:
            return
        if msg.type == MessageType.ERROR:
            log.warning("rig %s reports error %s (in reply to %s): %s", name, msg.header["code"],
                        msg.header["in_reply_to"], msg.header["message"])
            return
        if msg.type == MessageType.RESULTS:
            await self._results(identity, name, msg.header)
            return
        await self._reply(identity, error(ErrorCode.UNEXPECTED_TYPE, f"{msg.type} is sent by the "
                                          "server, never to it", in_reply_to=msg.type))

    async def _results(self, identity: bytes, name: str, header: dict) -> None:
        channels = self._rigs[name].channels
        for i, p in enumerate(header["presentations"]):
            if len(p["rates"]) != channels:
                await self._reply(identity, error(
                    ErrorCode.BAD_FIELD, f"RESULTS presentations[{i}] has {len(p['rates'])} rates; "
                    f"this rig declared {channels} channels in HELLO",
                    in_reply_to=MessageType.RESULTS, batch_id=header["batch_id"]))
                return
        ack = await self._call(identity, name, MessageType.RESULTS, header["batch_id"],
                               self.handler.on_results, header)
        if ack is not None:
            await self._reply_built(identity, Message(MessageType.ACK, ack), MessageType.RESULTS,
                                    header["batch_id"])

    async def _hello(self, identity: bytes, header: dict) -> None:
        name = header["rig"]
        previous = self._names.get(identity)
        welcome = await self._call(identity, name, MessageType.HELLO, None,
                                   self.handler.on_hello, header)
        if welcome is None:  # refused; a binding this identity had is gone too
            if previous is not None:
                await self._unbind(previous)
            return
        if previous is not None and previous != name:
            await self._unbind(previous)
        old = self._rigs.get(name)
        if old is not None and old.identity != identity:
            self._names.pop(old.identity, None)
            await self._reply(old.identity, error(
                ErrorCode.REPLACED, f"another connection said HELLO as rig {name!r}; rig names "
                "must be unique (is the rig program running twice?)"))
        self._rigs[name] = _Rig(identity, header["channels"], 0.0)
        self._names[identity] = name
        self._refresh(name)
        welcome = {"server": "actmax", **welcome, "heartbeat_ms": round(self.heartbeat_s * 1000),
                   "liveness": self.liveness, "max_message_bytes": self.max_message_bytes}
        if not await self._reply_built(identity, Message(MessageType.WELCOME, welcome),
                                       MessageType.HELLO):
            await self._unbind(name, notify=False)
            return
        log.info("rig %s connected (identity %s, %d channels)", name, identity.hex(),
                 header["channels"])
        on_connected = getattr(self.handler, "on_connected", None)
        if on_connected is not None:
            try:
                await on_connected(name)
            except Exception:
                log.exception("handler.on_connected(%r) failed", name)

    async def _call(self, identity: bytes, name: str, mtype: MessageType, batch_id: str | None,
                    method: Any, header: dict) -> dict | None:
        """Run a handler method; on failure reply ERROR and return None."""
        try:
            reply = await method(name, header)
            if not isinstance(reply, dict):
                raise TypeError(f"{method.__qualname__} returned {type(reply).__name__}, "
                                "not a dict")
            return reply
        except (ProtocolError, RigInputError) as exc:  # the rig's input: answer ERROR with its code
            log.warning("%s from rig %s refused: %s", mtype, name, exc)
            await self._reply_built(identity, error(exc.code, exc.message, in_reply_to=mtype,
                                                    batch_id=getattr(exc, "batch_id", None) or batch_id),
                                    mtype, batch_id)
        except Exception:
            log.exception("handler failed on %s from rig %s", mtype, name)
            await self._reply(identity, error(
                ErrorCode.INTERNAL, f"the server failed while handling {mtype}; it logged the "
                "cause; retry later", in_reply_to=mtype, batch_id=batch_id))
        return None

    async def _unbind(self, name: str, *, notify: bool = True) -> None:
        rig = self._rigs.pop(name, None)
        if rig is None:
            return
        self._names.pop(rig.identity, None)
        if notify:
            try:
                await self.handler.on_disconnect(name)
            except Exception:
                log.exception("handler.on_disconnect(%r) failed", name)

    async def _heartbeat_loop(self) -> None:
        heartbeat = encode(Message(MessageType.HEARTBEAT))
        while True:
            await asyncio.sleep(self.heartbeat_s)
            now = time.monotonic()
            for name, rig in list(self._rigs.items()):
                if rig.expires <= now:
                    log.warning("rig %s silent for %.1f s; marked disconnected", name,
                                self.heartbeat_s * self.liveness)
                    await self._unbind(name)
                else:
                    await self._send_frames(rig.identity, heartbeat)
