"""`RigClient`: the library a rig's stimulus program imports to talk to the actmax server.

The rig's own loop stays synchronous (PsychoPy, MonkeyLogic-style)::

    with RigClient("tcp://server:5555", "rig-a", channels=64, labels=unit_names) as rig:
        while (batch := rig.next_batch()) is not None:
            presentations = [show_and_record(s.image()) for s in batch.stimuli]
            rig.send_results(batch.batch_id, presentations)

A background thread owns the ZeroMQ DEALER socket (sockets are not thread-safe): it says HELLO,
heartbeats, reconnects with exponential backoff, caches reference images and resends RESULTS the
server has not acknowledged, or answered ERROR ``internal`` (it stored none of them). An upload too large
for one RESULTS goes as several, one after another. See docs/protocol.md.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from rig_client import RigError
from rig_client.connection import check_endpoint
from rig_client.protocol import (
    MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, MAX_PRESENTATIONS, PROTOCOL, PROTOCOL_MINOR, RETRY_HELLO, RETRYABLE,
    VERSION, ErrorCode, Message, MessageType, ProtocolError, decode, decode_png, encode, error, json_bytes,
    time_ordered_uuid,
)

log = logging.getLogger(__name__)

_CLOSED = object()  # sentinel in the batch queue: no more batches will come
# Why a server may stay silent before it ever welcomed this rig (in this run), by whether the rig uses CURVE.
SILENT_HINT = {
    False: "; if the server has CURVE keys, this rig needs them: --server-key and --rig-key (curve_keys() in Python)",
    True: "; a server that refuses this rig's key (not registered, revoked, or another server's key file) stays "
          "silent, and so does one without CURVE (no `actmax keys init`, or not restarted since): check "
          "`actmax keys list` on the server, and that its start line says CURVE",
}


def backoff_s(attempt: int, cap_s: float) -> float:
    """The wait before retry ``attempt`` (0: the first): 1 s, doubled each time, at most ``cap_s``."""
    return min(2.0 ** attempt, cap_s)


@dataclasses.dataclass(eq=False)
class _Upload:
    """A RESULTS the server has not stored yet: the message, its frames (encoded once) and the ACK's future.

    ``sent`` orders it on the current connection's wire while it awaits its reply (None: not sent, or
    answered ERROR ``internal``); ``retry_at`` (monotonic) is when it may be sent again after such an ERROR.
    ``after`` is the RESULTS before it of one upload split in several: this one is sent once the server
    stored that one, and is refused with it.
    """

    msg: Message
    frames: list[bytes]
    future: concurrent.futures.Future
    after: _Upload | None = None
    sent: int | None = None
    retry_at: float = 0.0
    failures: int = 0

    @property
    def batch_id(self) -> str:
        return self.msg.header["batch_id"]


@dataclasses.dataclass(frozen=True)
class Stimulus:
    """One image to show: ``data`` is its 8-bit RGB PNG file, a read-only view of the message it came in.

    Nothing copies the images of a batch before `RigClient.next_batch` returns it: `image` decodes from
    the view, and ``png`` makes a bytes copy only when first read.
    """

    stimulus_id: str
    kind: str  # "synthetic" or "reference"
    data: bytes | memoryview = dataclasses.field(repr=False)

    @functools.cached_property
    def png(self) -> bytes:
        """The PNG file as bytes."""
        return bytes(self.data)

    def image(self) -> np.ndarray:
        """The image as an ``(H, W, 3)`` uint8 array."""
        return decode_png(self.data)

    def __reduce__(self):
        """Pickles with the PNG as bytes (a view cannot be pickled), e.g. to hand it to another process."""
        return Stimulus, (self.stimulus_id, self.kind, bytes(self.data))


@dataclasses.dataclass(frozen=True)
class Batch:
    """The stimuli of one generation of one thread, as sent by the server."""

    batch_id: str
    session_id: str
    thread_id: str
    generation: int
    response_window_ms: tuple[float, float]
    stimuli: list[Stimulus]


@dataclasses.dataclass(frozen=True)
class Presentation:
    """One showing of a stimulus and the rates it evoked (spikes/s, one per channel).

    ``onset`` is unix time in seconds; ``window_ms`` the counting window after onset. The
    ``presentation_id`` makes uploads idempotent: resending the same object is always safe.
    """

    stimulus_id: str
    rates: Sequence[float]
    onset: float
    window_ms: tuple[float, float]
    presentation_id: str = dataclasses.field(default_factory=lambda: str(time_ordered_uuid()))

    def to_json(self) -> dict[str, Any]:
        return {"presentation_id": self.presentation_id, "stimulus_id": self.stimulus_id,
                "onset": float(self.onset), "rates": [float(r) for r in self.rates],
                "window_ms": [float(w) for w in self.window_ms]}


def is_z85_key(key: bytes | None) -> bool:
    """Whether ``key`` is a CURVE key as ZeroMQ takes it (protocol.md §1): 40 Z85 characters (32 bytes)."""
    import zmq.utils.z85

    return key is not None and len(key) == 40 and set(key) <= set(zmq.utils.z85.Z85CHARS)


def curve_keys(server_key_file: str | Path, rig_key_file: str | Path) -> dict[str, bytes]:
    """`RigClient` CURVE arguments from the server's public ``server.key`` file and this rig's
    ``NAME.key_secret`` file (both made by ``actmax keys`` on the server)."""
    import zmq.auth

    try:
        server_public, server_secret = zmq.auth.load_certificate(server_key_file)
        public, secret = zmq.auth.load_certificate(rig_key_file)
    except (OSError, ValueError) as exc:
        raise RigError(f"cannot read a CURVE key file: {exc}; copy server.key and this rig's "
                       ".key_secret from the server's keys folder (actmax keys)") from None
    if server_secret is not None:
        raise RigError(f"{server_key_file} holds the server's secret key: pass server.key (the public one), and delete "
                       "this copy from the rig (whoever holds it can pose as the server to every rig)")
    if secret is None:
        raise RigError(f"{rig_key_file} holds no secret key; pass the rig's .key_secret file")
    for path, key in ((server_key_file, server_public), (rig_key_file, public), (rig_key_file, secret)):
        if not is_z85_key(key):
            raise RigError(f"{path} holds {key[:50]!r}, not a CURVE key (40 Z85 characters): copy the file again "
                           "from the server's keys folder, whole")
    return {"server_public_key": server_public, "public_key": public, "secret_key": secret}



class RigClient:
    """Connection of one rig to the server; starts connecting at construction.

    ``heartbeat_s`` and ``liveness`` bound the wait for WELCOME; after it the server's values
    apply. Reconnects wait 1 s, doubling up to ``reconnect_max_s``, as do the resends of RESULTS the
    server answered ERROR ``internal``. ``context`` defaults to a
    private ZeroMQ context that `close` terminates. For a server with CURVE keys pass its
    ``server_public_key`` and this rig's ``public_key`` and ``secret_key`` (Z85; see
    `curve_keys` and ``actmax keys``). ``setup`` (protocol 1.2) tells the server, for the session's record, what the
    rig program is and how it is set: any JSON object of up to 4096 bytes, e.g. ``{"program": "my-rig 2.0",
    "viewing_distance_cm": 57, "image_size_deg": 4}``. ``welcomed_before``: this rig was welcomed by this server
    before (a rig program that left and comes back), so a server silent now is down, not refusing its keys, and
    the log does not suggest checking them.
    """

    def __init__(self, endpoint: str, rig_name: str, *, channels: int,
                 labels: Sequence[str] | None = None, heartbeat_s: float = 2.0,
                 liveness: int = 5, reconnect_max_s: float = 16.0,
                 context: zmq.Context | None = None, server_public_key: bytes | None = None,
                 public_key: bytes | None = None, secret_key: bytes | None = None,
                 setup: dict[str, Any] | None = None, welcomed_before: bool = False):
        check_endpoint(endpoint)
        if heartbeat_s <= 0 or liveness < 1 or reconnect_max_s <= 0:
            raise ValueError("need heartbeat_s > 0, liveness >= 1 and reconnect_max_s > 0")
        curve = (server_public_key, public_key, secret_key)
        if any(k is not None for k in curve) and not all(k is not None for k in curve):
            raise ValueError("CURVE needs server_public_key, public_key and secret_key together")
        self.endpoint = endpoint
        self.rig_name = rig_name
        self.channels = channels
        self._hello_header: dict[str, Any] = {"rig": rig_name, "protocol": PROTOCOL,
                                              "minor": PROTOCOL_MINOR, "channels": channels,
                                              "cached_references": []}
        if labels is not None:
            self._hello_header["channel_labels"] = list(labels)
        if setup is not None:
            self._hello_header["setup"] = setup
        encode(Message(MessageType.HELLO, self._hello_header))  # bad name/channels/labels/setup: fail here
        if setup is not None:  # a copy, as sent: a later change to the caller's dict does not reach the next HELLO
            self._hello_header["setup"] = json.loads(json_bytes(setup))
        self._minor: int | None = None
        self._max_message_bytes = MAX_MESSAGE_BYTES
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context

        # Shared with the rig's threads (under the lock where noted).
        self._lock = threading.Lock()
        self._commands: queue.SimpleQueue[_Upload] = queue.SimpleQueue()  # RESULTS to upload
        self._batches: queue.Queue[Any] = queue.Queue()
        self._errors: collections.deque[dict] = collections.deque(maxlen=100)
        self._unacked: set[concurrent.futures.Future] = set()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._fatal: RigError | None = None
        self._closed = False
        # The I/O thread's own: kept across reconnects.
        self._cache: dict[str, bytes | memoryview] = {}  # reference stimulus_id -> PNG
        self._pending: list[_Upload] = []  # RESULTS not stored, oldest first
        self._sends = itertools.count()  # numbers the RESULTS sent, for `_Upload.sent`
        self._delivered: set[str] = set()

        wake = f"inproc://rig-client-wake-{uuid.uuid4().hex}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(wake)
        for s in (self._wake_rx, self._wake_tx):
            s.setsockopt(zmq.LINGER, 0)
        self._link = _Link(self, heartbeat_s=heartbeat_s, liveness=liveness,
                           reconnect_max_s=reconnect_max_s,
                           curve=None if server_public_key is None else curve, welcomed_before=welcomed_before)
        self._thread = threading.Thread(target=self._io_main, name=f"rig-client-{rig_name}",
                                        daemon=True)
        self._thread.start()

    # --- rig-facing API ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between WELCOME and the loss of the connection."""
        return self._connected.is_set()

    @property
    def minor(self) -> int | None:
        """The protocol minor version of the last WELCOME (0: a 1.0 server); None before the first.

        Below 1 the server would score flagged presentations: leave them out (docs/protocol.md §4.4.1).
        """
        return self._minor

    @property
    def ever_welcomed(self) -> bool:
        """The server welcomed this client at least once (or the rig before it: ``welcomed_before``)."""
        return self._link.ever_welcomed

    @property
    def heartbeat_s(self) -> float:
        """The heartbeat interval of the connection: the server's after its WELCOME, the rig's own before it."""
        return self._link.beat_s

    @property
    def errors(self) -> list[dict]:
        """Headers of the last 100 ERROR messages the server sent (each is also logged)."""
        return list(self._errors)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until WELCOME (True) or ``timeout`` (False); `RigError` if the server refused."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._connected.wait(0.05):
            self._raise_if_unusable()
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def next_batch(self, timeout: float | None = None) -> Batch | None:
        """The next batch to show, or None after ``timeout`` seconds (None: wait for ever).

        Raises `RigError` once the client is closed or the server refused it.
        """
        try:
            item = self._batches.get(timeout=timeout)
        except queue.Empty:
            self._raise_if_unusable()
            return None
        if item is _CLOSED:
            self._batches.put(_CLOSED)  # wake every other waiter too
            self._raise_if_unusable()
        return item

    def send_results(self, batch_id: str, presentations: Iterable[Presentation], *,
                     done: bool = True) -> concurrent.futures.Future:
        """Upload presentations of ``batch_id``; ``done=False`` if more will follow for it.

        Returns a future for the server's ACK header (``accepted``, ``duplicates``); it fails with
        `ProtocolError` if the server refuses the upload. Uploads are kept until acknowledged: resent
        after a reconnect, and after a backoff when the server failed to store them (ERROR
        ``internal``). An upload too large for one RESULTS (1 MiB of header, or the ``max_message_bytes`` of
        the last WELCOME if lower) goes as several (`results_messages`), each sent once the server stored the
        one before; the future then gets their ACKs' counts summed, or the first refusal. Raises
        `ProtocolError` at once for invalid presentations, and for one too large for a RESULTS of its own.
        """
        self._raise_if_unusable()
        items = [p.to_json() for p in presentations]
        for p in items:
            if len(p["rates"]) != self.channels:
                raise ProtocolError(ErrorCode.BAD_FIELD, f"presentation of {p['stimulus_id']!r} "
                                    f"has {len(p['rates'])} rates; this rig has {self.channels} "
                                    "channels")
        uploads: list[_Upload] = []
        for msg, frames in results_messages(batch_id, items, bool(done), self._max_message_bytes):
            uploads.append(_Upload(msg, frames, concurrent.futures.Future(), after=uploads[-1] if uploads else None))
        future = _all_acks([u.future for u in uploads])
        with self._lock:
            self._raise_if_unusable()
            self._unacked.add(future)
            future.add_done_callback(self._unacked.discard)
            for upload in uploads:
                self._commands.put(upload)
            self._wake()
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` s for unacknowledged RESULTS, then disconnect (linger 0)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        pending = list(self._unacked)
        if pending and self._fatal is None:
            concurrent.futures.wait(pending, timeout=timeout)
        with self._lock:
            self._stop.set()
            self._wake()
        self._thread.join()
        self._wake_tx.close(linger=0)
        if self._unacked and self._fatal is None:
            log.warning("closed with %d uploads the server has not stored (batches %s); their presentations "
                        "are lost unless the rig sends them again", len(self._unacked),
                        ", ".join(sorted({u.batch_id for u in self._pending if not u.future.done()})))
        for future in list(self._unacked):
            future.set_exception(RigError("the client was closed before the server "
                                          "acknowledged these results"))
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> RigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        """Nudge the I/O thread (call with the lock held); a finished thread needs no nudge."""
        try:
            self._wake_tx.send(b"", zmq.DONTWAIT)
        except zmq.Again:
            pass

    def _raise_if_unusable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise RigError("the RigClient is closed; create a new one to reconnect")

    # --- I/O thread: protocol state; the connection itself is `_Link` ----------------------

    def _io_main(self) -> None:
        try:
            self._link.run()
        except RigError as exc:
            log.error("%s", exc)
            self._fatal = exc
        except Exception as exc:
            log.exception("rig client I/O thread failed")
            self._fatal = RigError(f"rig client I/O thread failed: {exc!r}; see the log and "
                                   "create a new RigClient")
        finally:
            self._connected.clear()
            self._wake_rx.close(linger=0)
            self._batches.put(_CLOSED)
            for upload in self._pending:
                if self._fatal is not None and not upload.future.done():
                    upload.future.set_exception(self._fatal)

    def _drain_wake(self) -> None:
        while True:
            try:
                self._wake_rx.recv(zmq.DONTWAIT)
            except zmq.Again:
                return

    def _send(self, msg: Message, frames: list[bytes] | None = None) -> None:
        self._link.send(msg, frames)

    def _say_hello(self) -> None:
        self._connected.clear()
        self._send(Message(MessageType.HELLO, {**self._hello_header,
                                               "cached_references": sorted(self._cache)}))

    def _take_commands(self) -> float:
        """Send the new uploads and those whose retry is due, oldest first, once connected. One waiting for
        its retry, or for the ACK of the RESULTS before it (``_Upload.after``), holds back the later ones of its
        batch, so that a ``done: true`` does not overtake it.

        Returns when the next retry is due (monotonic; infinity: none, or not connected).
        """
        while True:
            try:
                self._pending.append(self._commands.get_nowait())
            except queue.Empty:
                break
        if not self._connected.is_set():
            return float("inf")
        now, waiting, due = time.monotonic(), set(), float("inf")
        for upload in self._pending:
            if upload.sent is not None or upload.batch_id in waiting:
                continue
            if upload.after is not None and not upload.after.future.done():  # the server stores that one first
                waiting.add(upload.batch_id)
                continue
            if upload.retry_at > now:
                waiting.add(upload.batch_id)
                due = min(due, upload.retry_at)
                continue
            upload.sent = next(self._sends)
            self._send(upload.msg, upload.frames)
        return due

    def _handle(self, frames: list[zmq.Frame]) -> None:
        try:
            msg = decode(frames, max_message_bytes=self._max_message_bytes, receiver="rig")
        except ProtocolError as exc:
            log.warning("bad message from the server: %s", exc)
            if exc.in_reply_to != MessageType.ERROR:
                self._send(exc.to_message())
            return
        if msg.type == MessageType.WELCOME:
            h = msg.header
            self._link.welcomed(h["heartbeat_ms"] / 1000, h["liveness"])
            self._max_message_bytes = h["max_message_bytes"]
            self._minor = h.get("minor", 0)
            for upload in self._pending:  # every RESULTS not stored, again, in order (protocol.md §8)
                upload.sent, upload.retry_at = None, 0.0
            self._connected.set()
            log.info("connected to %s (%s) as rig %s", self.endpoint, h["server"], self.rig_name)
            self._take_commands()  # with those queued while disconnected
        elif msg.type == MessageType.BATCH:
            self._on_batch(msg)
        elif msg.type == MessageType.ACK:
            self._settle(msg.header["batch_id"], msg.header, None)
        elif msg.type == MessageType.ERROR:
            self._on_error(msg.header)

    def _on_batch(self, msg: Message) -> None:
        h = msg.header
        stimuli = []
        for s in h["stimuli"]:
            if s["frame"] is not None:
                png = msg.frames[s["frame"]]
                if s["kind"] == "reference":
                    self._cache[s["stimulus_id"]] = png
            elif s["stimulus_id"] in self._cache:
                png = self._cache[s["stimulus_id"]]
            else:
                log.warning("batch %s names reference %s that this rig never received; "
                            "resynchronising with HELLO", h["batch_id"], s["stimulus_id"])
                self._send(error(ErrorCode.UNKNOWN_REFERENCE, f"reference {s['stimulus_id']!r} "
                                 "is not cached on this rig", in_reply_to=MessageType.BATCH,
                                 batch_id=h["batch_id"]))
                self._say_hello()
                return
            stimuli.append(Stimulus(s["stimulus_id"], s["kind"], png))
        if h["batch_id"] in self._delivered:
            log.info("batch %s was resent; already handed to the rig, so not shown again: its %d RESULTS not yet "
                     "stored answer it (sent again after the WELCOME)", h["batch_id"],
                     sum(u.batch_id == h["batch_id"] for u in self._pending))
            return
        self._delivered.add(h["batch_id"])
        self._batches.put(Batch(h["batch_id"], h["session_id"], h["thread_id"], h["generation"],
                                tuple(h["response_window_ms"]), stimuli))

    def _on_error(self, h: dict) -> None:
        self._errors.append(h)
        code, in_reply_to = h["code"], h["in_reply_to"]
        # Retryable answers to RESULTS: `_settle` logs them. not_registered: one line per episode (the
        # replies to what the rig sent before its HELLO say the same).
        if not (in_reply_to == MessageType.RESULTS and code in RETRYABLE):
            level = logging.DEBUG if code == ErrorCode.NOT_REGISTERED and not self._connected.is_set() \
                else logging.WARNING
            log.log(level, "server error %s (in reply to %s): %s", code, in_reply_to, h["message"])
        if code == ErrorCode.NOT_REGISTERED:
            if self._connected.is_set():
                self._say_hello()
        elif code == ErrorCode.REPLACED:
            raise RigError(f"another rig program connected as {self.rig_name!r} and replaced "
                           "this one; run one program per rig name")
        elif in_reply_to == MessageType.HELLO:
            if code not in RETRY_HELLO:
                raise RigError(f"the server refused rig {self.rig_name!r}: {code}: "
                               f"{h['message']}")
            self._link.usable = False  # transient (a server failure, too many HELLOs): reconnect with backoff
        elif in_reply_to == MessageType.RESULTS:
            self._settle(h.get("batch_id"), None, ProtocolError(code, h["message"], in_reply_to=in_reply_to,
                                                                batch_id=h.get("batch_id")))

    def _settle(self, batch_id: str | None, ack: dict | None, exc: ProtocolError | None) -> None:
        """Resolve the oldest RESULTS awaiting a reply (of ``batch_id``, when the reply names one: the server
        answers in order, so that is the same one) with an ACK or an ERROR; after a retryable ERROR, keep it
        to send again after a backoff."""
        upload = min((u for u in self._pending if u.sent is not None and batch_id in (None, u.batch_id)),
                     key=lambda u: u.sent, default=None)
        if upload is None:
            log.info("reply %s for batch %s matches no pending RESULTS (already settled)",
                     "ACK" if exc is None else exc.code, batch_id)
            return
        if exc is not None and exc.code in RETRYABLE:
            delay = backoff_s(upload.failures, self._link.reconnect_max_s)
            upload.sent, upload.retry_at = None, time.monotonic() + delay
            upload.failures += 1
            log.log(logging.WARNING if upload.failures == 1 else logging.INFO,
                    "server error %s (in reply to RESULTS): %s; its %d presentations of batch %s are kept "
                    "and sent again in %.1f s (failed %d time(s))", exc.code, exc.message,
                    len(upload.msg.header["presentations"]), upload.batch_id, delay, upload.failures)
            return
        self._pending.remove(upload)
        if not upload.future.done():
            upload.future.set_exception(exc) if exc is not None else upload.future.set_result(ack)
        if exc is not None and exc.code != ErrorCode.BATCH_CLOSED:
            # Refused, stored none of it: the RESULTS after it of its upload are not sent. (batch_closed stored
            # them, unscored: the rest goes too, so that no trial is lost.)
            refused = {upload}
            for later in list(self._pending):
                if later.after in refused:
                    refused.add(later)
                    self._pending.remove(later)
                    later.future.set_exception(exc)


def results_messages(batch_id: str, items: list[dict], done: bool,
                     max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[Message, list[bytes]]]:
    """The RESULTS (message and frames) that carry the presentations ``items`` (their JSON): one when they
    fit, else as few as the limits allow (the 1 MiB header, ``max_message_bytes``, `MAX_PRESENTATIONS`),
    ``done`` on the last only, every presentation of one stimulus in the same one where they fit.

    That keeps a batch's round open until the last: every stimulus answered in an earlier RESULTS would
    close it, and the showings of a stimulus after that would come too late to be scored (docs/protocol.md
    §6.5). `ProtocolError` for invalid presentations, and one that alone does not fit (nothing to split).
    """
    def message(part: list[dict], last: bool) -> tuple[Message, list[bytes]]:
        msg = Message(MessageType.RESULTS, {"batch_id": batch_id, "presentations": part, "done": done and last})
        return msg, encode(msg, max_message_bytes=max_message_bytes)

    try:
        return [message(items, True)]
    except ProtocolError as exc:
        if exc.code != ErrorCode.TOO_LARGE:
            raise
    overhead = len(VERSION) + len(MessageType.RESULTS)  # frames 0 and 1; a RESULTS has no binary frames
    budget = min(MAX_HEADER_BYTES, max_message_bytes - overhead)  # bytes of one header
    room = budget - len(json_bytes({"batch_id": batch_id, "presentations": [], "done": False})) + 1
    sizes = [len(json_bytes(p)) + 1 for p in items]  # each with its comma (the room counts one more)
    for p, size in zip(items, sizes):
        if size > room:
            why, fix = ((f"the server's max_message_bytes is {max_message_bytes}",
                         "raise the server's ACTMAX_MAX_MESSAGE_BYTES") if budget < MAX_HEADER_BYTES else
                        ("1 MiB, docs/protocol.md §3", "send fewer channels or fields"))
            raise ProtocolError(ErrorCode.TOO_LARGE, f"presentation {p['presentation_id']} of stimulus "
                                f"{p['stimulus_id']!r} alone makes a RESULTS header of {budget - room + size} "
                                f"bytes, over the {budget} one may hold ({why}), so it cannot be split off; "
                                f"nothing of this upload was sent: {fix}",
                                in_reply_to=MessageType.RESULTS, batch_id=batch_id)
    groups: dict[str, list[int]] = {}  # stimulus -> its presentations, by first showing
    for i, p in enumerate(items):
        groups.setdefault(p["stimulus_id"], []).append(i)

    def cost(group: list[int]) -> int:
        return sum(sizes[i] for i in group)

    def fits(group: list[int]) -> bool:
        return cost(group) <= room and len(group) <= MAX_PRESENTATIONS

    parts: list[list[int]] = [[]]
    used = 0
    # A stimulus shown too often for one RESULTS goes first: its later showings then come while others are owed.
    for group in sorted(groups.values(), key=fits):
        if fits(group) and (used + cost(group) > room or len(parts[-1]) + len(group) > MAX_PRESENTATIONS):
            parts.append([])
            used = 0
        for i in group:
            if used + sizes[i] > room or len(parts[-1]) == MAX_PRESENTATIONS:
                parts.append([])
                used = 0
            parts[-1].append(i)
            used += sizes[i]
    return [message([items[i] for i in part], k == len(parts) - 1) for k, part in enumerate(parts)]


def _all_acks(futures: list[concurrent.futures.Future]) -> concurrent.futures.Future:
    """One future for the ACKs of the RESULTS an upload went as: their ``accepted`` and ``duplicates`` summed
    (and ``ignored_fields`` joined), or the first refusal."""
    if len(futures) == 1:
        return futures[0]
    future: concurrent.futures.Future = concurrent.futures.Future()

    def settle(part: concurrent.futures.Future) -> None:  # in the I/O thread, one part at a time
        if future.done():
            return
        if part.exception() is not None:
            future.set_exception(part.exception())
        elif all(f.done() for f in futures):
            acks = [f.result() for f in futures]
            ack = {**acks[-1], "accepted": sum(a["accepted"] for a in acks),
                   "duplicates": sum(a["duplicates"] for a in acks)}
            if ignored := sorted({name for a in acks for name in a.get("ignored_fields", ())}):
                ack["ignored_fields"] = ignored
            future.set_result(ack)

    for part in futures:
        part.add_done_callback(settle)
    return future


class _Link:
    """The I/O thread's connection to the server: one DEALER socket per attempt (CURVE when
    keyed), heartbeats and liveness, reconnects with exponential backoff. Messages go to the
    client's `RigClient._handle`; queued uploads to `RigClient._take_commands`."""

    def __init__(self, client: RigClient, *, heartbeat_s: float, liveness: int,
                 reconnect_max_s: float, curve: tuple[bytes, bytes, bytes] | None, welcomed_before: bool):
        self.client = client
        self.heartbeat_s, self.liveness = heartbeat_s, liveness
        self.reconnect_max_s = reconnect_max_s
        self.curve = curve
        self.socket: zmq.Socket | None = None
        self.beat_s, self.beats = heartbeat_s, liveness  # the server's after WELCOME
        self.is_welcomed = False  # this socket
        self.ever_welcomed = welcomed_before  # any socket of this client, or the rig before: keys are not the suspect
        self.usable = True  # False: drop this socket and reconnect

    def run(self) -> None:
        """Connect and reconnect until the client stops; `RigError` when the server refuses."""
        attempt = 0
        while not self.client._stop.is_set():
            if self._connection():
                attempt = 0
            if self.client._stop.is_set():
                return
            backoff = backoff_s(attempt, self.reconnect_max_s)
            log.info("reconnecting to %s in %.1f s", self.client.endpoint, backoff)
            if self.client._wake_rx.poll(backoff * 1000):  # wake early to stop; queued
                self.client._drain_wake()  # commands wait for the connection
            attempt += 1

    def welcomed(self, beat_s: float, beats: int) -> None:
        self.beat_s, self.beats = beat_s, beats
        self.is_welcomed = self.ever_welcomed = True

    def send(self, msg: Message, frames: list[bytes] | None = None) -> None:
        """Send ``msg`` (``frames``: its encoding, when already made). No size check here: the server
        answers too_large, which fails that upload's future."""
        self.socket.send_multipart(frames or encode(msg, max_message_bytes=2**62), copy=False)

    def _open(self) -> zmq.Socket:
        socket = self.client._ctx.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            server_public, public, secret = self.curve
            socket.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
            socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
        socket.connect(self.client.endpoint)
        return socket

    def _connection(self) -> bool:
        """One socket's lifetime: HELLO, serve until silence or stop. True if welcomed."""
        client = self.client
        self.socket = self._open()
        self.is_welcomed, self.usable = False, True
        self.beat_s, self.beats = self.heartbeat_s, self.liveness
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(client._wake_rx, zmq.POLLIN)
        try:
            client._say_hello()
            now = time.monotonic()
            expires, next_beat = now + self.beat_s * self.beats, now + self.beat_s
            while not client._stop.is_set():
                retry = client._take_commands()
                timeout = max(0.0, min(expires, next_beat, retry) - time.monotonic())
                events = dict(poller.poll(timeout * 1000))
                if client._wake_rx in events:
                    client._drain_wake()
                if self.socket in events:
                    while (frames := self._recv()) is not None:
                        client._handle(frames)
                        if not self.usable:
                            return self.is_welcomed
                        expires = time.monotonic() + self.beat_s * self.beats
                now = time.monotonic()
                if now >= expires:
                    log.warning("server silent for %.1f s; reconnecting%s", self.beat_s * self.beats,
                                "" if self.ever_welcomed else SILENT_HINT[bool(self.curve)])
                    return self.is_welcomed
                if now >= next_beat:
                    if client._connected.is_set():
                        self.send(Message(MessageType.HEARTBEAT))
                    next_beat = now + self.beat_s
            return self.is_welcomed
        finally:
            client._connected.clear()
            self.socket.close(linger=0)

    def _recv(self) -> list[zmq.Frame] | None:
        try:
            return self.socket.recv_multipart(zmq.DONTWAIT, copy=False)  # a BATCH's images stay where ZeroMQ put them
        except zmq.Again:
            return None
