"""Wire protocol v1.2 between the actmax server (ZeroMQ ROUTER) and a rig (DEALER).

A message is a list of frames: ``[VERSION, TYPE, header-JSON, *binary frames]``. `decode` validates
everything a peer can get wrong and raises `ProtocolError` with a stable ``code``; `encode` runs the
same validation on what we are about to send. ``docs/protocol.md`` is the normative text.
"""

from __future__ import annotations

import enum
import io
import json
import math
import os
import re
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from isal import isal_zlib

VERSION = b"AMX1"
PROTOCOL = 1  # major version: HELLO's `protocol`; a change here breaks old peers
PROTOCOL_MINOR = 2  # minor version: HELLO's and WELCOME's optional `minor`; only adds optional fields

MAX_MESSAGE_BYTES = 64 * 2**20  # default limit on the sum of all frames of one message
MAX_HEADER_BYTES = 2**20
MAX_ID_LENGTH = 128
MAX_CHANNELS = 4096
MAX_STIMULI = 10_000  # per BATCH
MAX_PRESENTATIONS = 10_000  # per RESULTS
MAX_CACHED_REFERENCES = 100_000
MAX_WINDOW_MS = 60_000
MAX_IMAGE_SIDE = 4096
MAX_ERROR_MESSAGE = 4096
MAX_LABEL_LENGTH = 64
MAX_SETUP_BYTES = 4096  # HELLO's `setup` as compact JSON
MAX_SETUP_DEPTH = 16  # its objects and arrays nested
MAX_DROPPED_FRAMES = 1_000_000
MAX_ONSET = 1e11  # seconds; any unix time this century
MAX_RATE = 1e9  # spikes/s, either sign: far above any neuron, far below where a mean of them overflows
# WELCOME's connection settings, (least, most): a server's own settings are held to them
WELCOME_HEARTBEAT_MS = (10, 600_000)
WELCOME_LIVENESS = (1, 1000)
WELCOME_MAX_MESSAGE_BYTES = (1024, 2**40)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_RIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_rig_name(name: str) -> bool:
    """Whether a rig may call itself ``name`` in HELLO."""
    return _RIG_NAME.fullmatch(name) is not None


class MessageType(enum.StrEnum):
    """The seven message types; the wire carries the name in ASCII."""

    HELLO = "HELLO"
    WELCOME = "WELCOME"
    BATCH = "BATCH"
    RESULTS = "RESULTS"
    ACK = "ACK"
    HEARTBEAT = "HEARTBEAT"
    ERROR = "ERROR"


# The types each side receives (docs/protocol.md §5); another gets ERROR unexpected_type.
RECEIVED_BY = {
    "server": (MessageType.HELLO, MessageType.RESULTS, MessageType.HEARTBEAT, MessageType.ERROR),
    "rig": (MessageType.WELCOME, MessageType.BATCH, MessageType.ACK, MessageType.HEARTBEAT, MessageType.ERROR),
}


class ErrorCode(enum.StrEnum):
    """Stable ERROR codes (docs/protocol.md says what each side does on each)."""

    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_TYPE = "unexpected_type"
    BAD_FRAMES = "bad_frames"
    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    BAD_IMAGE = "bad_image"
    TOO_LARGE = "too_large"
    NOT_REGISTERED = "not_registered"
    REPLACED = "replaced"
    REFUSED = "refused"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_BATCH = "unknown_batch"
    BATCH_CLOSED = "batch_closed"
    UNKNOWN_REFERENCE = "unknown_reference"
    INTERNAL = "internal"


# ERROR codes that answer a RESULTS without judging it: the server stored none of it and the rig sends it
# again, unchanged, until it is stored (docs/protocol.md §8).
RETRYABLE = frozenset({ErrorCode.INTERNAL})
# ERROR codes that answer a HELLO for now only: the rig reconnects with backoff (docs/protocol.md §6.3).
RETRY_HELLO = frozenset({ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED})


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is one of `ErrorCode` (or a handler's own code).

    ``in_reply_to`` and ``batch_id`` name the offending message when they could be read, so the
    ERROR reply can say which message it answers.
    """

    def __init__(self, code: str, message: str, *, in_reply_to: str | None = None,
                 batch_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message
        self.in_reply_to = in_reply_to
        self.batch_id = batch_id

    def to_message(self) -> Message:
        """The ERROR message that reports this error to the peer."""
        return error(self.code, self.message, in_reply_to=self.in_reply_to, batch_id=self.batch_id)


@dataclass
class Message:
    """One protocol message: its type, JSON header and binary frames (PNG images: bytes, or read-only
    views of the frames a socket received, see `decode`)."""

    type: MessageType
    header: dict[str, Any] = field(default_factory=dict)
    frames: list[bytes | memoryview] = field(default_factory=list)


def encode(msg: Message, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """Frames for ``msg``, validated exactly as the receiver's `decode` will check them.

    numpy scalars and arrays in the header are converted to JSON numbers and lists.
    """
    try:
        header = json_bytes(msg.header)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{msg.type} header is not JSON-serialisable "
                            f"(NaN and infinity are not allowed): {exc}") from None
    frames = [VERSION, MessageType(msg.type).encode(), header, *(bytes(f) for f in msg.frames)]
    decode(frames, max_message_bytes=max_message_bytes)
    return frames


def json_bytes(value: Any) -> bytes:
    """``value`` as a header writes it: compact UTF-8 JSON, numpy values as numbers; `ValueError` for NaN and
    infinity, `TypeError` for what JSON cannot hold."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_json_default).encode()


def decode(frames: Sequence[bytes], *, max_message_bytes: int = MAX_MESSAGE_BYTES,
           receiver: str | None = None) -> Message:
    """Parse and validate received frames (without the ROUTER identity frame).

    ``receiver`` (``"server"`` or ``"rig"``) refuses, before its fields are checked, a type that only this side
    sends (``unexpected_type``, §5). Every error names the message's type and ``batch_id`` once they could be
    read: a header over `MAX_HEADER_BYTES` or not JSON names no ``batch_id``.

    The image frames are kept as they came when they are bytes, else as read-only views of them
    (``recv_multipart(copy=False)``'s frames), so a BATCH's images are never copied here."""
    frames = [f if isinstance(f, bytes) else bytes(f) for f in frames[:3]] + \
        [f if isinstance(f, bytes) else memoryview(f).toreadonly() for f in frames[3:]]
    if not frames or frames[0] != VERSION:
        got = frames[0][:16] if frames else "no frames"
        raise ProtocolError(ErrorCode.BAD_VERSION, f"first frame must be {VERSION!r}, got {got!r}; "
                            "this server speaks protocol v1 (docs/protocol.md)")
    try:
        mtype = MessageType(frames[1].decode("ascii")) if len(frames) > 1 else None
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {frames[1][:32]!r}; "
                            f"expected one of {', '.join(MessageType)}") from None
    if len(frames) < 3:
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"a message has at least 3 frames "
                            f"(version, type, header JSON); got {len(frames)}", in_reply_to=mtype)
    if len(frames[2]) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{mtype} header is {len(frames[2])} bytes, over "
                            f"the limit of {MAX_HEADER_BYTES}{_too_large_fix(mtype)}", in_reply_to=mtype)
    try:
        header = json.loads(frames[2].decode("utf-8"), parse_constant=_reject_constant,
                            parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: too deep
        raise ProtocolError(ErrorCode.BAD_JSON, f"{mtype} header is not UTF-8 JSON: {exc}",
                            in_reply_to=mtype) from None
    if _SURROGATE_ESCAPE.search(frames[2]) and _lone_surrogate(header):
        raise ProtocolError(ErrorCode.BAD_JSON, f"{mtype} header holds a lone UTF-16 surrogate (an escape such as "
                            "\\ud800 that is half a character): every string and key must be text; escape "
                            "characters beyond U+FFFF as a pair, or send them as UTF-8", in_reply_to=mtype)
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"{mtype} header must be a JSON object, got "
                            f"{type(header).__name__}", in_reply_to=mtype)
    batch_id = header.get("batch_id")
    batch_id = batch_id if is_id(batch_id) else None
    if receiver is not None and mtype not in RECEIVED_BY[receiver]:
        raise ProtocolError(ErrorCode.UNEXPECTED_TYPE, f"{mtype} is never sent to the {receiver}: it "
                            f"receives {', '.join(RECEIVED_BY[receiver])} (docs/protocol.md §5)",
                            in_reply_to=mtype, batch_id=batch_id)
    total = sum(len(f) for f in frames)
    if total > max_message_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{mtype} is {total} bytes, over the limit of "
                            f"{max_message_bytes}{_too_large_fix(mtype)}", in_reply_to=mtype, batch_id=batch_id)
    msg = Message(mtype, header, frames[3:])
    try:
        _VALIDATORS[mtype](_Fields(header, f"{mtype} "), msg.frames)
    except ProtocolError as exc:
        exc.in_reply_to, exc.batch_id = mtype, batch_id
        raise
    return msg


#: A JSON escape of a UTF-16 surrogate: only then can a parsed header hold one (a lone one is not text, and fails
#: wherever it is written: the database, the REST API's JSON, an ACK's ``ignored_fields``).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(header: Any) -> bool:
    """Whether a string or key anywhere in ``header`` holds a lone surrogate."""
    try:
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_large_fix(mtype: MessageType) -> str:
    """What the sender of a message over a size limit does about it."""
    if mtype == MessageType.RESULTS:
        return "; split its presentations into several RESULTS (done: false on all but the last)"
    if mtype == MessageType.HELLO:
        return "; list fewer cached_references (the ids of the references you keep; the server sends any other again)"
    if mtype == MessageType.BATCH:
        return ("; raise the server's ACTMAX_MAX_MESSAGE_BYTES, or give the thread fewer or smaller images "
                "per generation")
    return "; split it into several messages"


def error(code: str, message: str, *, in_reply_to: str | None = None,
          batch_id: str | None = None) -> Message:
    """An ERROR message; long texts are cut to `MAX_ERROR_MESSAGE` characters."""
    header = {"code": str(code), "message": message[:MAX_ERROR_MESSAGE],
              "in_reply_to": None if in_reply_to is None else str(in_reply_to)}
    if batch_id is not None:
        header["batch_id"] = batch_id
    return Message(MessageType.ERROR, header)


def time_ordered_uuid() -> uuid.UUID:
    """A random UUID that sorts by its creation time in milliseconds (version 7, RFC 9562: 48 bits of
    unix milliseconds, then 74 random bits). Ids made one after another land side by side in a
    database index, where random ones (version 4) land on a page each, which a commit writes and
    fsyncs."""
    value = (time.time_ns() // 1_000_000 % 2**48) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    return uuid.UUID(int=value & ~(0x3 << 62) | 0x2 << 62)  # the RFC's variant


def batch_message(*, batch_id: str, session_id: str, thread_id: str, generation: int,
                  response_window_ms: Sequence[float],
                  stimuli: Iterable[tuple[str, str, bytes | None]]) -> Message:
    """A BATCH from ``(stimulus_id, kind, png or None)`` triples; None names a cached reference."""
    entries, frames = [], []
    for stimulus_id, kind, png in stimuli:
        entries.append({"stimulus_id": stimulus_id, "kind": kind,
                        "frame": None if png is None else len(frames)})
        if png is not None:
            frames.append(png)
    header = {"batch_id": batch_id, "session_id": session_id, "thread_id": thread_id,
              "generation": generation, "response_window_ms": list(response_window_ms),
              "stimuli": entries}
    return Message(MessageType.BATCH, header, frames)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit RGB PNG bytes of an ``(H, W, 3)`` uint8 array (lossless: any PNG decoder gives it back exactly).

    Written here, not by Pillow: every row takes PNG's Up filter (each byte minus the byte above it)
    and ISA-L's deflate (``isal``, level 1) compresses them into the zlib stream PNG holds. GAN images
    of 256 px then compress 4x faster than with zlib's level 1, into files a few per cent smaller.
    The GIL is released while it compresses.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}; "
                         "convert with (np.clip(x, 0, 1) * 255).round().astype(np.uint8)")
    height, width = image.shape[:2]
    rows = image.reshape(height, 3 * width)
    filtered = np.empty((height, 1 + 3 * width), np.uint8)
    filtered[:, 0] = 2  # filter type Up; the first row's "above" is zeros
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
                     _png_chunk(b"IDAT", isal_zlib.compress(filtered, 1)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def decode_png(data: bytes | memoryview) -> np.ndarray:
    """``(H, W, 3)`` uint8 array of an 8-bit RGB PNG; `ProtocolError` ``bad_image`` otherwise."""
    from PIL import Image

    _check_png(data, "image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"image is not a readable PNG: {exc}") from None


# --- validation ------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send finite numbers")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:32]} overflows a 64-bit float; send finite numbers")
    return value


_NUMBER = (float, int)  # the types of JSON numbers once parsed (a bool is not one)


def _numbers(values: list) -> bool:
    """Whether every item of a parsed JSON array is a number."""
    return all(type(v) in _NUMBER for v in values)


def _rates(values: list) -> bool:
    """Whether every item of a parsed JSON array is a rate: a number within ±MAX_RATE."""
    return all(type(v) in _NUMBER and -MAX_RATE <= v <= MAX_RATE for v in values)


def is_id(value: Any, max_len: int = MAX_ID_LENGTH) -> bool:
    """Whether ``value`` is a protocol *id*: 1..max_len characters, encodable as UTF-8."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800")
        return False
    return True


def _check_png(data: bytes | memoryview, where: str) -> None:
    """Signature and IHDR: an 8-bit RGB PNG no larger than MAX_IMAGE_SIDE on a side."""
    head = bytes(data[:26])
    if len(data) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{where} is not a PNG file")
    width, height, depth, color = struct.unpack(">IIBB", head[16:26])
    if depth != 8 or color != 2:
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{where} must be 8-bit RGB PNG (bit depth 8, "
                            f"colour type 2); got bit depth {depth}, colour type {color}")
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{where} is {width}x{height}; each side must be "
                            f"1..{MAX_IMAGE_SIDE} pixels")


class _Fields:
    """Typed access to one JSON object's fields; failures name the field path."""

    def __init__(self, obj: dict, where: str):
        self.obj, self.where = obj, where

    def _get(self, key: str) -> Any:
        if key not in self.obj:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{self.where}field '{key}' is required")
        return self.obj[key]

    def _bad(self, key: str, expected: str) -> ProtocolError:
        got = json.dumps(self.obj[key], default=str)
        got = got if len(got) <= 80 else got[:77] + "..."
        return ProtocolError(ErrorCode.BAD_FIELD, f"{self.where}field '{key}' must be {expected}; "
                             f"got {got}")

    def string(self, key: str, *, nullable: bool = False, max_len: int = MAX_ID_LENGTH,
               pattern: re.Pattern | None = None, choices: Sequence[str] = ()) -> str | None:
        value = self._get(key)
        if value is None and nullable:
            return None
        ok = is_id(value, max_len)
        if ok and pattern is not None:
            ok = pattern.fullmatch(value) is not None
        if ok and choices:
            ok = value in choices
        if not ok:
            what = (f"one of {list(choices)}" if choices else
                    f"a string matching {pattern.pattern}" if pattern else
                    f"a non-empty string of at most {max_len} characters")
            raise self._bad(key, what + (" or null" if nullable else ""))
        return value

    def integer(self, key: str, lo: int, hi: int, *, nullable: bool = False) -> int | None:
        value = self._get(key)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._bad(key, f"an integer in {lo}..{hi}" + (" or null" if nullable else ""))
        return value

    def number(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        value = self._get(key)
        if type(value) not in _NUMBER or not lo <= value <= hi:
            raise self._bad(key, "a number" + (f" in {lo}..{hi}" if math.isfinite(hi) else ""))
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def array(self, key: str, lo: int, hi: int) -> list:
        value = self._get(key)
        if not isinstance(value, list) or not lo <= len(value) <= hi:
            raise self._bad(key, f"an array of {lo}..{hi} items")
        return value

    def objects(self, key: str, lo: int, hi: int) -> list[_Fields]:
        items = self.array(key, lo, hi)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ProtocolError(ErrorCode.BAD_FIELD,
                                    f"{self.where}field '{key}[{i}]' must be a JSON object")
            out.append(_Fields(item, f"{self.where}'{key}[{i}]' "))
        return out

    def window(self, key: str, *, before_onset: bool = False) -> tuple[float, float]:
        """``[start, end]`` ms after onset, or at or before it (negative) with ``before_onset``."""
        lo, hi = (-MAX_WINDOW_MS, 0) if before_onset else (0, MAX_WINDOW_MS)
        value = self._get(key)
        ok = (isinstance(value, list) and len(value) == 2
              and _numbers(value)
              and lo <= value[0] < value[1] <= hi)
        if not ok:
            raise self._bad(key, f"[start, end] in ms relative to onset with {lo} <= start < "
                            f"end <= {hi}")
        return float(value[0]), float(value[1])



def _no_frames(h: _Fields, frames: list[bytes]) -> None:
    if frames:
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"{h.where.strip()} carries no binary frames; "
                            f"got {len(frames)}")


def _hello(h: _Fields, frames: list[bytes]) -> None:
    h.string("rig", max_len=64, pattern=_RIG_NAME)
    if type(h._get("protocol")) is not int or h.obj["protocol"] != PROTOCOL:  # not 1.0 or true
        raise ProtocolError(ErrorCode.BAD_VERSION, f"HELLO field 'protocol' must be {PROTOCOL}; "
                            f"got {h.obj['protocol']!r}; upgrade the rig client or the server")
    channels = h.integer("channels", 1, MAX_CHANNELS)
    refs = h.array("cached_references", 0, MAX_CACHED_REFERENCES)
    if not all(is_id(r) for r in refs):
        raise h._bad("cached_references", "an array of stimulus id strings")
    _minor(h)
    if "channel_labels" in h.obj:  # 1.1
        labels = h.array("channel_labels", 0, MAX_CHANNELS)
        if len(labels) != channels or not all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_LENGTH for x in labels):
            raise h._bad("channel_labels", f"an array of {channels} label strings of 1.."
                         f"{MAX_LABEL_LENGTH} characters, one per channel")
        if len(set(labels)) != len(labels):
            raise h._bad("channel_labels", "unique labels (e.g. 'elec12-unit1')")
    if "setup" in h.obj and (problem := setup_problem(h.obj["setup"])) is not None:  # 1.2
        raise h._bad("setup", f"a JSON object of at most {MAX_SETUP_BYTES} bytes as compact JSON, nested at most "
                     f"{MAX_SETUP_DEPTH} deep (what the rig program is and how it is set: e.g. its viewing distance, "
                     f"or a simulation's noise); {problem}")
    _no_frames(h, frames)


def setup_problem(setup: Any) -> str | None:
    """Why ``setup`` cannot be HELLO's ``setup`` (protocol 1.2), or None when it can: a JSON object (parsed, or a
    Python dict of JSON's types) of at most `MAX_SETUP_BYTES` as compact JSON, nested at most `MAX_SETUP_DEPTH`."""
    if not isinstance(setup, dict):
        return f"it is a {type(setup).__name__}"
    try:
        size = len(json_bytes(setup))
    except RecursionError:
        return f"it is nested over {MAX_SETUP_DEPTH} deep"
    except (TypeError, ValueError) as exc:  # NaN, a lone surrogate, a type JSON has not
        return f"it is not JSON: {exc}"
    if size > MAX_SETUP_BYTES:
        return f"it is {size} bytes"
    level, depth = [setup], 1
    while level := [child for value in level for child in (value.values() if isinstance(value, dict) else value)
                    if isinstance(child, dict | list)]:  # breadth first, over at most 4096 bytes of it
        depth += 1
        if depth > MAX_SETUP_DEPTH:
            return f"it is nested over {MAX_SETUP_DEPTH} deep"
    return None


def _minor(h: _Fields) -> None:
    """The optional `minor` version of HELLO and WELCOME (absent means 0)."""
    if "minor" in h.obj:
        h.integer("minor", 0, 1000)


def _welcome(h: _Fields, frames: list[bytes]) -> None:
    h.string("server", max_len=256)
    h.integer("heartbeat_ms", *WELCOME_HEARTBEAT_MS)
    h.integer("liveness", *WELCOME_LIVENESS)
    h.integer("max_message_bytes", *WELCOME_MAX_MESSAGE_BYTES)
    _minor(h)
    _no_frames(h, frames)


def _batch(h: _Fields, frames: list[bytes]) -> None:
    for key in ("batch_id", "session_id", "thread_id"):
        h.string(key)
    h.integer("generation", 0, 2**31 - 1)
    h.window("response_window_ms")
    used: set[int] = set()
    seen: set[str] = set()
    for s in h.objects("stimuli", 1, MAX_STIMULI):
        stimulus_id = s.string("stimulus_id")
        if stimulus_id in seen:
            raise ProtocolError(ErrorCode.BAD_FIELD,
                                f"{s.where}stimulus_id {stimulus_id!r} appears twice in the batch")
        seen.add(stimulus_id)
        kind = s.string("kind", choices=("synthetic", "reference"))
        frame = s.integer("frame", 0, MAX_STIMULI, nullable=kind == "reference")
        if frame is None:
            continue
        if frame >= len(frames):
            raise ProtocolError(ErrorCode.BAD_FRAMES, f"{s.where}frame {frame} does not exist; "
                                f"the message has {len(frames)} binary frames")
        if frame in used:
            raise ProtocolError(ErrorCode.BAD_FRAMES, f"{s.where}frame {frame} is used twice")
        used.add(frame)
    if len(used) != len(frames):
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"BATCH has {len(frames)} binary frames but its "
                            f"stimuli use {len(used)}; every frame must belong to one stimulus")
    for i, frame in enumerate(frames):
        _check_png(frame, f"BATCH frame {i}")


def _results(h: _Fields, frames: list[bytes]) -> None:
    h.string("batch_id")
    for p in h.objects("presentations", 0, MAX_PRESENTATIONS):
        if _CANONICAL_UUID.fullmatch(p.string("presentation_id", max_len=36)) is None:
            raise p._bad("presentation_id", "a lowercase hyphenated UUID string "
                         "(e.g. 3f2b8c1e-9d4a-4c2e-8f1a-2b3c4d5e6f70)")
        p.string("stimulus_id")
        p.number("onset", 0.0, MAX_ONSET)
        rates = p.array("rates", 1, MAX_CHANNELS)
        if not _rates(rates):
            raise p._bad("rates", f"an array of numbers within ±{MAX_RATE:g} spikes/s, one per channel")
        p.window("window_ms")
        _trial_facts(p, len(rates))
    h.boolean("done")
    _no_frames(h, frames)


# The optional 1.1 fields of a presentation (§4.4), as the server stores them.
TRIAL_FACTS = ("fixation_broken", "dropped_frames", "photodiode_onset", "baseline_rates", "baseline_window_ms")
# Every field a presentation may carry; the receiver ignores others (§2), the server logs their names.
PRESENTATION_FIELDS = frozenset({"presentation_id", "stimulus_id", "onset", "rates", "window_ms", *TRIAL_FACTS})


def _trial_facts(p: _Fields, channels: int) -> None:
    """The optional 1.1 fields of a presentation: how the trial went."""
    if "fixation_broken" in p.obj:
        p.boolean("fixation_broken")
    if "dropped_frames" in p.obj:
        p.integer("dropped_frames", 0, MAX_DROPPED_FRAMES)
    if "photodiode_onset" in p.obj:
        p.number("photodiode_onset", 0.0, MAX_ONSET)
    if ("baseline_rates" in p.obj) != ("baseline_window_ms" in p.obj):
        missing = "baseline_window_ms" if "baseline_rates" in p.obj else "baseline_rates"
        raise ProtocolError(ErrorCode.MISSING_FIELD, f"{p.where}field '{missing}' is required "
                            "with 'baseline_rates' and 'baseline_window_ms' (send both or neither)")
    if "baseline_rates" in p.obj:
        baseline = p.array("baseline_rates", 0, MAX_CHANNELS)
        if len(baseline) != channels or not _rates(baseline):
            raise p._bad("baseline_rates", f"an array of {channels} numbers within ±{MAX_RATE:g} spikes/s, "
                         "like 'rates'")
        p.window("baseline_window_ms", before_onset=True)


def is_flagged(presentation: dict[str, Any]) -> bool:
    """True when a (valid) presentation reports a broken fixation or dropped frames.

    By default the server does not score a flagged presentation and shows its stimulus again.
    """
    return bool(presentation.get("fixation_broken")) or presentation.get("dropped_frames", 0) > 0


def _ack(h: _Fields, frames: list[bytes]) -> None:
    h.string("batch_id")
    h.integer("accepted", 0, MAX_PRESENTATIONS)
    h.integer("duplicates", 0, MAX_PRESENTATIONS)
    _no_frames(h, frames)


def _heartbeat(h: _Fields, frames: list[bytes]) -> None:
    _no_frames(h, frames)


def _error(h: _Fields, frames: list[bytes]) -> None:
    h.string("code", max_len=64, pattern=_ERROR_CODE)
    h.string("message", max_len=MAX_ERROR_MESSAGE)
    h.string("in_reply_to", nullable=True, choices=tuple(MessageType))
    if "batch_id" in h.obj:
        h.string("batch_id", nullable=True)
    _no_frames(h, frames)


_VALIDATORS = {
    MessageType.HELLO: _hello,
    MessageType.WELCOME: _welcome,
    MessageType.BATCH: _batch,
    MessageType.RESULTS: _results,
    MessageType.ACK: _ack,
    MessageType.HEARTBEAT: _heartbeat,
    MessageType.ERROR: _error,
}
