"""Wire protocol v1.1: round trips and every validation error code."""

from __future__ import annotations

import copy
import io
import json
import struct
import uuid
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rig_client.protocol import (
    MAX_HEADER_BYTES, VERSION, ErrorCode, Message, MessageType, ProtocolError, batch_message,
    decode, decode_png, encode, encode_png, error, is_flagged,
)

PID = "3f2b8c1e-9d4a-4c2e-8f1a-2b3c4d5e6f70"
PNG = encode_png(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3))


def png_header(depth=8, color=2, width=5, height=4) -> bytes:
    """A PNG signature + IHDR chunk with the given fields (enough for the IHDR check)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


EXAMPLES = {
    MessageType.HELLO: Message(MessageType.HELLO, {
        "rig": "rig-a", "protocol": 1, "channels": 64, "cached_references": ["ref-1"]}),
    MessageType.WELCOME: Message(MessageType.WELCOME, {
        "server": "actmax 0.1.0", "heartbeat_ms": 2000, "liveness": 5,
        "max_message_bytes": 64 * 2**20}),
    MessageType.BATCH: batch_message(
        batch_id="b-1", session_id="s-1", thread_id="t-1", generation=0,
        response_window_ms=[50, 200],
        stimuli=[("g0", "synthetic", PNG), ("ref-1", "reference", None),
                 ("ref-2", "reference", PNG)]),
    MessageType.RESULTS: Message(MessageType.RESULTS, {
        "batch_id": "b-1", "done": True, "presentations": [{
            "presentation_id": PID, "stimulus_id": "g0", "onset": 1764250000.25,
            "rates": [12.5, 0, -3.0], "window_ms": [50, 200]}]}),
    MessageType.ACK: Message(MessageType.ACK, {"batch_id": "b-1", "accepted": 3, "duplicates": 1}),
    MessageType.HEARTBEAT: Message(MessageType.HEARTBEAT),
    MessageType.ERROR: error("unknown_batch", "no such batch", in_reply_to="RESULTS",
                             batch_id="b-1"),
}


@pytest.mark.parametrize("mtype", list(MessageType))
def test_round_trip(mtype):
    msg = EXAMPLES[mtype]
    frames = encode(msg)
    assert frames[:2] == [VERSION, mtype.encode()]
    assert decode(frames) == msg


def test_examples_cover_every_type_and_frame_layout():
    assert set(EXAMPLES) == set(MessageType)
    frames = encode(EXAMPLES[MessageType.BATCH])
    assert len(frames) == 5 and frames[3:] == [PNG, PNG]
    assert [s["frame"] for s in json.loads(frames[2])["stimuli"]] == [0, None, 1]


def test_encode_converts_numpy_and_rejects_nan():
    msg = copy.deepcopy(EXAMPLES[MessageType.RESULTS])
    msg.header["presentations"][0]["rates"] = np.array([1.5, 2.0], dtype=np.float32)
    msg.header["presentations"][0]["onset"] = np.float64(1.7e9)
    assert decode(encode(msg)).header["presentations"][0]["rates"] == [1.5, 2.0]
    msg.header["presentations"][0]["rates"] = [float("nan")]
    with pytest.raises(ProtocolError) as err:
        encode(msg)
    assert err.value.code == "bad_field"


def test_png_helpers():
    image = np.random.default_rng(0).integers(0, 256, (7, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_png(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ProtocolError) as err:
        decode_png(png_header() + b"garbage")
    assert err.value.code == "bad_image"


def test_error_to_message_and_codes_are_stable():
    exc = ProtocolError("bad_field", "x", in_reply_to="RESULTS", batch_id="b")
    assert isinstance(exc, ValueError) and str(exc) == "bad_field: x"
    assert exc.to_message() == error("bad_field", "x", in_reply_to="RESULTS", batch_id="b")
    assert {c.value for c in ErrorCode} >= {
        "bad_version", "unknown_type", "bad_json", "missing_field", "bad_field", "too_large",
        "unknown_batch", "not_registered", "internal"}


def raw(mtype: str, header, *frames: bytes) -> list[bytes]:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return [VERSION, mtype.encode(), body, *frames]


def mutated(mtype: MessageType, change) -> list[bytes]:
    """Frames of the example ``mtype`` after ``change(header)`` (which may return new frames)."""
    msg = copy.deepcopy(EXAMPLES[mtype])
    frames = change(msg.header)
    return raw(mtype, msg.header, *(msg.frames if frames is None else frames))


def drop(key, index=None, field=None):
    def change(h):
        del (h if index is None else h[key][index])[key if index is None else field]
    return change


def put(key, value):
    return lambda h: h.__setitem__(key, value)


def put_in(key, index, field, value):
    return lambda h: h[key][index].__setitem__(field, value)


CASES = [
    # framing
    ([], "bad_version"),
    ([b"AMX2", b"HELLO", b"{}"], "bad_version"),
    ([b"HELLO", b"{}"], "bad_version"),
    ([VERSION, b"HELLO"], "bad_frames"),
    ([VERSION, b"BYE", b"{}"], "unknown_type"),
    ([VERSION, b"hello", b"{}"], "unknown_type"),
    ([VERSION, b"\xff", b"{}"], "unknown_type"),
    (raw("HEARTBEAT", b"{\"a\":"), "bad_json"),
    (raw("HEARTBEAT", b"\xff\xfe"), "bad_json"),
    (raw("HEARTBEAT", b"[]"), "bad_json"),
    (raw("HEARTBEAT", b"{\"x\": NaN}"), "bad_json"),
    (raw("HEARTBEAT", b"{}", b"extra"), "bad_frames"),
    (raw("HEARTBEAT", b" " * (MAX_HEADER_BYTES + 1)), "too_large"),
    # HELLO
    (mutated(MessageType.HELLO, drop("rig")), "missing_field"),
    (mutated(MessageType.HELLO, drop("cached_references")), "missing_field"),
    (mutated(MessageType.HELLO, put("rig", "rig a")), "bad_field"),
    (mutated(MessageType.HELLO, put("rig", "")), "bad_field"),
    (mutated(MessageType.HELLO, put("protocol", 2)), "bad_version"),
    (mutated(MessageType.HELLO, put("protocol", True)), "bad_version"),
    (mutated(MessageType.HELLO, put("channels", 0)), "bad_field"),
    (mutated(MessageType.HELLO, put("channels", 2.0)), "bad_field"),
    (mutated(MessageType.HELLO, put("channels", True)), "bad_field"),
    (mutated(MessageType.HELLO, put("cached_references", [1])), "bad_field"),
    (mutated(MessageType.HELLO, put("cached_references", "ref-1")), "bad_field"),
    (mutated(MessageType.HELLO, lambda h: [PNG]), "bad_frames"),
    # WELCOME
    (mutated(MessageType.WELCOME, drop("heartbeat_ms")), "missing_field"),
    (mutated(MessageType.WELCOME, put("liveness", 0)), "bad_field"),
    (mutated(MessageType.WELCOME, put("max_message_bytes", "64M")), "bad_field"),
    # BATCH
    (mutated(MessageType.BATCH, drop("session_id")), "missing_field"),
    (mutated(MessageType.BATCH, put("batch_id", 7)), "bad_field"),
    (mutated(MessageType.BATCH, put("batch_id", "x" * 129)), "bad_field"),
    (mutated(MessageType.BATCH, put("generation", -1)), "bad_field"),
    (mutated(MessageType.BATCH, put("response_window_ms", [200, 50])), "bad_field"),
    (mutated(MessageType.BATCH, put("response_window_ms", [50])), "bad_field"),
    (mutated(MessageType.BATCH, put("response_window_ms", [-5, 50])), "bad_field"),
    (mutated(MessageType.BATCH, put("stimuli", [])), "bad_field"),
    (mutated(MessageType.BATCH, put("stimuli", ["g0"])), "bad_field"),
    (mutated(MessageType.BATCH, put_in("stimuli", 0, "kind", "natural")), "bad_field"),
    (mutated(MessageType.BATCH, put_in("stimuli", 0, "frame", None)), "bad_field"),
    (mutated(MessageType.BATCH, put_in("stimuli", 0, "frame", "0")), "bad_field"),
    (mutated(MessageType.BATCH, drop("stimuli", 0, "kind")), "missing_field"),
    (mutated(MessageType.BATCH, put_in("stimuli", 1, "stimulus_id", "g0")), "bad_field"),
    (mutated(MessageType.BATCH, put_in("stimuli", 0, "frame", 5)), "bad_frames"),
    (mutated(MessageType.BATCH, put_in("stimuli", 2, "frame", 0)), "bad_frames"),
    (mutated(MessageType.BATCH, lambda h: [PNG, PNG, PNG]), "bad_frames"),
    (mutated(MessageType.BATCH, lambda h: [PNG, b"GIF89a" + b"\0" * 40]), "bad_image"),
    (mutated(MessageType.BATCH, lambda h: [PNG, png_header(depth=16)]), "bad_image"),
    (mutated(MessageType.BATCH, lambda h: [PNG, png_header(color=6)]), "bad_image"),
    (mutated(MessageType.BATCH, lambda h: [PNG, png_header(width=0)]), "bad_image"),
    # RESULTS
    (mutated(MessageType.RESULTS, drop("done")), "missing_field"),
    (mutated(MessageType.RESULTS, put("done", 1)), "bad_field"),
    (mutated(MessageType.RESULTS, put("presentations", {})), "bad_field"),
    (mutated(MessageType.RESULTS, put_in("presentations", 0, "presentation_id", "p1")),
     "bad_field"),
    (mutated(MessageType.RESULTS, put_in("presentations", 0, "presentation_id", PID.upper())),
     "bad_field"),
    (mutated(MessageType.RESULTS, drop("presentations", 0, "onset")),
     "missing_field"),
    (mutated(MessageType.RESULTS, put_in("presentations", 0, "onset", "now")), "bad_field"),
    (mutated(MessageType.RESULTS, put_in("presentations", 0, "rates", [])), "bad_field"),
    (mutated(MessageType.RESULTS, put_in("presentations", 0, "rates", [1, None])), "bad_field"),
    (mutated(MessageType.RESULTS, put_in("presentations", 0, "window_ms", [0, 0])), "bad_field"),
    (mutated(MessageType.RESULTS, lambda h: [PNG]), "bad_frames"),
    # ACK, ERROR
    (mutated(MessageType.ACK, put("accepted", -1)), "bad_field"),
    (mutated(MessageType.ACK, drop("duplicates")), "missing_field"),
    (mutated(MessageType.ERROR, put("code", "Bad Code")), "bad_field"),
    (mutated(MessageType.ERROR, put("in_reply_to", "PING")), "bad_field"),
    (mutated(MessageType.ERROR, drop("in_reply_to")), "missing_field"),
    (mutated(MessageType.ERROR, put("message", "")), "bad_field"),
]


@pytest.mark.parametrize("frames, code", CASES)
def test_decode_rejects_with_stable_code(frames, code):
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == code, err.value
    assert err.value.message  # says what is wrong


def test_received_buffers_decode_alike_and_the_images_stay_views_of_them():
    """Frames as ``recv_multipart(copy=False)`` gives them (writable buffers) decode to the same message, its
    images read-only views of the buffers (never copied), and bad images in them are refused alike."""
    frames = encode(EXAMPLES[MessageType.BATCH])
    received = [bytearray(f) for f in frames]
    msg = decode([memoryview(b) for b in received])
    assert msg == decode(frames)
    assert all(isinstance(f, memoryview) and f.readonly for f in msg.frames)
    received[3][-1] ^= 0xFF
    assert msg.frames[0][-1] == received[3][-1]  # the view sees the received frame itself
    for bad, code in CASES:
        if code == "bad_image":
            with pytest.raises(ProtocolError) as err:
                decode([memoryview(bytearray(f)) for f in bad])
            assert err.value.code == code


@given(st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{%s}" % u),
    st.uuids().map(lambda u: str(u)[:-1] + "g"),
    st.text(alphabet="0123456789abcdefABCDEF-{}", min_size=30, max_size=38),
    st.text(max_size=40),
))
def test_a_presentation_id_is_exactly_a_canonical_uuid(pid):
    """Accepted iff it is the lowercase hyphenated form the uuid module writes (e.g. str(uuid.uuid4()))."""
    try:
        canonical = str(uuid.UUID(pid)) == pid
    except ValueError:
        canonical = False
    frames = mutated(MessageType.RESULTS, put_in("presentations", 0, "presentation_id", pid))
    try:
        decode(frames)
        accepted = True
    except ProtocolError as exc:
        assert exc.code == "bad_field" and "presentation_id" in exc.message
        accepted = False
    assert accepted == canonical


@pytest.mark.parametrize("field, value", [("rates", [1.0, True]), ("window_ms", [False, 200]), ("onset", True)])
def test_a_boolean_is_not_a_number(field, value):
    with pytest.raises(ProtocolError) as err:
        decode(mutated(MessageType.RESULTS, put_in("presentations", 0, field, value)))
    assert err.value.code == "bad_field" and field in err.value.message

def test_too_large_counts_all_frames():
    frames = encode(EXAMPLES[MessageType.BATCH])
    limit = sum(map(len, frames)) - 1
    with pytest.raises(ProtocolError) as err:
        decode(frames, max_message_bytes=limit)
    assert err.value.code == "too_large" and err.value.in_reply_to == "BATCH"
    assert decode(frames, max_message_bytes=limit + 1).type == MessageType.BATCH


def test_a_hello_over_the_header_limit_is_told_to_list_fewer_cached_references():
    """A HELLO is one message: "split it into several" does not apply. 100000 ids of the server's form fit the
    count limit but not the header's."""
    refs = [f"ref-12-{i:012x}" for i in range(100_000)]
    with pytest.raises(ProtocolError) as err:
        decode(encode(Message(MessageType.HELLO, {**HELLO_11, "cached_references": refs}), max_message_bytes=2**23))
    assert err.value.code == "too_large" and "list fewer cached_references" in err.value.message
    assert "several" not in err.value.message


def test_error_names_message_and_batch():
    frames = mutated(MessageType.RESULTS, put("done", None))
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert (err.value.in_reply_to, err.value.batch_id) == ("RESULTS", "b-1")
    assert "'done'" in err.value.message and "true or false" in err.value.message


def test_unknown_fields_are_ignored():
    frames = mutated(MessageType.HEARTBEAT, put("note", "future field"))
    assert decode(frames).header == {"note": "future field"}


# --- protocol 1.1: channel labels, negotiated minor version, trial facts ------------------------

HELLO_11 = {"rig": "rig-a", "protocol": 1, "minor": 1, "channels": 2, "cached_references": [],
            "channel_labels": ["elec1-unit1", "elec1-mua"]}
TRIAL = {"presentation_id": PID, "stimulus_id": "g0", "onset": 1764250000.25, "rates": [1.0, 2],
         "window_ms": [50, 200], "fixation_broken": False, "dropped_frames": 0,
         "photodiode_onset": 1764250000.262, "baseline_rates": [0.5, 0],
         "baseline_window_ms": [-100, 0]}


def results_11(**change) -> Message:
    return Message(MessageType.RESULTS, {"batch_id": "b-1", "done": True,
                                         "presentations": [{**TRIAL, **change}]})


def test_protocol_11_round_trips_and_1_0_messages_stay_valid():
    for msg in (Message(MessageType.HELLO, HELLO_11), results_11(),
                Message(MessageType.WELCOME, {**EXAMPLES[MessageType.WELCOME].header, "minor": 1})):
        assert decode(encode(msg)) == msg
    assert decode(encode(EXAMPLES[MessageType.HELLO])).header.get("minor") is None  # 1.0 rig


def without(key):
    return {k: v for k, v in TRIAL.items() if k != key}


CASES_11 = [
    (Message(MessageType.HELLO, {**HELLO_11, "minor": -1}), "bad_field", "'minor'"),
    (Message(MessageType.HELLO, {**HELLO_11, "minor": "1.1"}), "bad_field", "'minor'"),
    (Message(MessageType.HELLO, {**HELLO_11, "channel_labels": ["a"]}), "bad_field", "2 label"),
    (Message(MessageType.HELLO, {**HELLO_11, "channel_labels": ["a", 7]}), "bad_field", "label"),
    (Message(MessageType.HELLO, {**HELLO_11, "channel_labels": ["a", "a"]}), "bad_field", "unique"),
    (Message(MessageType.HELLO, {**HELLO_11, "channel_labels": ["a", "x" * 65]}), "bad_field",
     "label"),
    (Message(MessageType.WELCOME, {**EXAMPLES[MessageType.WELCOME].header, "minor": True}),
     "bad_field", "'minor'"),
    (results_11(fixation_broken=1), "bad_field", "'fixation_broken'"),
    (results_11(dropped_frames=-1), "bad_field", "'dropped_frames'"),
    (results_11(dropped_frames=1.5), "bad_field", "'dropped_frames'"),
    (results_11(photodiode_onset="late"), "bad_field", "'photodiode_onset'"),
    (results_11(baseline_rates=[1.0]), "bad_field", "2 numbers within"),
    (results_11(baseline_rates=[1.0, None]), "bad_field", "'baseline_rates'"),
    (results_11(baseline_window_ms=[0, 100]), "bad_field", "-60000 <= start"),
    (results_11(baseline_window_ms=[-50, -100]), "bad_field", "'baseline_window_ms'"),
]


def nested(depth: int) -> dict:
    """A setup whose objects are nested ``depth`` deep ({} is 1)."""
    setup: dict = {}
    for _ in range(depth - 1):
        setup = {"a": setup}
    return setup


@pytest.mark.parametrize("setup, words", [
    ([57], "it is a list"),
    ({"notes": "x" * 5000}, "it is 5012 bytes"),
    (nested(17), "it is nested over 16 deep"),
    ({"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}, "it is nested over 16 deep"),  # arrays count too
])
def test_protocol_12_setup_is_a_small_shallow_object(setup, words):
    assert decode(encode(Message(MessageType.HELLO, {**HELLO_11, "minor": 2, "setup": nested(16)}))).header[
        "setup"] == nested(16)
    with pytest.raises(ProtocolError) as err:
        decode(raw(MessageType.HELLO, {**HELLO_11, "minor": 2, "setup": setup}))
    assert err.value.code == "bad_field" and "field 'setup' must be a JSON object" in err.value.message
    assert f"; {words}; got " in err.value.message


@pytest.mark.parametrize("where", [
    b'"setup":{"a":"\\ud800"}', b'"channel_labels":["ok","\\ud800"]', b'"setup":{"\\uDC80x":1}'])
def test_a_lone_surrogate_anywhere_in_a_header_is_bad_json(where):
    """It is not text: stored, it broke the REST answers of the rig and its sessions, and as a field name an ACK
    could not list it (ERROR internal on every resend)."""
    header = b'{"rig":"rig-a","protocol":1,"minor":2,"channels":2,"cached_references":[],' + where + b'}'
    with pytest.raises(ProtocolError) as err:
        decode([VERSION, b"HELLO", header])
    assert err.value.code == "bad_json" and "lone UTF-16 surrogate" in err.value.message
    pair = b'{"rig":"rig-a","protocol":1,"minor":2,"channels":2,"cached_references":[],"setup":{"a":"\\ud83d\\ude00"}}'
    assert decode([VERSION, b"HELLO", pair]).header["setup"] == {"a": "\U0001f600"}  # a pair is one character


@pytest.mark.parametrize("msg, code, words", CASES_11)
def test_protocol_11_fields_are_validated(msg, code, words):
    with pytest.raises(ProtocolError) as err:
        decode(raw(msg.type, msg.header))
    assert err.value.code == code and words in err.value.message, err.value


@pytest.mark.parametrize("missing", ["baseline_rates", "baseline_window_ms"])
def test_baseline_needs_its_window_and_rates(missing):
    msg = Message(MessageType.RESULTS, {"batch_id": "b-1", "done": True,
                                        "presentations": [without(missing)]})
    with pytest.raises(ProtocolError) as err:
        decode(raw(msg.type, msg.header))
    assert err.value.code == "missing_field" and f"'{missing}'" in err.value.message


def test_flagged_presentations():
    from rig_client.trials import TrialPresentation

    assert not is_flagged(TRIAL) and not is_flagged(EXAMPLES[MessageType.RESULTS].header[
        "presentations"][0])
    assert is_flagged({**TRIAL, "fixation_broken": True}) and is_flagged({**TRIAL, "dropped_frames": 2})
    p = TrialPresentation("g0", [1.0, 2.0], 1764250000.25, (50, 200), dropped_frames=1,
                          baseline_rates=[0.5, 0.0], baseline_window_ms=(-100, 0))
    assert p.flagged
    msg = Message(MessageType.RESULTS, {"batch_id": "b", "done": True, "presentations": [p.to_json()]})
    assert decode(encode(msg)).header["presentations"][0]["baseline_rates"] == [0.5, 0.0]


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.sampled_from(["noise", "smooth", "flat"]))
def test_our_pngs_are_valid_files_that_pillow_decodes_to_the_same_pixels(height, width, seed, kind):
    from PIL import Image

    rng = np.random.default_rng(seed)
    if kind == "noise":
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif kind == "smooth":  # wraps around 0/255 between rows, as the Up filter's differences do
        image = np.cumsum(rng.integers(0, 256, (height, width, 3)), axis=0).astype(np.uint8)
    else:
        image = np.full((height, width, 3), rng.integers(0, 256), np.uint8)
    image = image[:, ::-1] if width > 1 else image  # a non-contiguous view too
    png = encode_png(image)
    with Image.open(io.BytesIO(png)) as opened:
        opened.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(png)) as opened:
        assert (opened.mode, opened.size) == ("RGB", (width, height))
        np.testing.assert_array_equal(np.asarray(opened), image)


def test_time_ordered_uuids_are_version_7_carry_their_time_and_sort_by_it():
    import time

    from rig_client.protocol import time_ordered_uuid

    before = time.time_ns() // 1_000_000
    ids = [time_ordered_uuid() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    time.sleep(0.002)
    later = time_ordered_uuid()
    assert {(u.version, u.variant) for u in ids} == {(7, uuid.RFC_4122)}
    assert all(before <= u.int >> 80 <= after for u in ids)  # the first 48 bits: unix milliseconds
    assert len(set(ids)) == len(ids) and max(map(str, ids)) < str(later)
    assert len({u.int & (2**62 - 1) for u in ids}) == len(ids)  # the low bits are random
    msg = copy.deepcopy(EXAMPLES[MessageType.RESULTS])
    msg.header["presentations"][0]["presentation_id"] = str(later)
    assert decode(encode(msg)).header["presentations"][0]["presentation_id"] == str(later)
