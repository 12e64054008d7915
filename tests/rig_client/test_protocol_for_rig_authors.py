"""What a rig written from docs/protocol.md alone meets: the validation rules and how
`RigClient` matches replies and retries a HELLO rate limit."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import zmq

from rig_client.client import Presentation, RigClient
from rig_client.protocol import (
    MAX_HEADER_BYTES, VERSION, ErrorCode, Message, MessageType, ProtocolError, decode, encode, error,
)
from tests.rig_client.test_client import FAST

PID = "3f2b8c1e-9d4a-4c2e-8f1a-2b3c4d5e6f70"


def presentation(**fields) -> dict:
    return {"presentation_id": PID, "stimulus_id": "g0", "onset": 1.7e9, "rates": [1.0],
            "window_ms": [50, 200], **fields}


def results(batch_id="b-1", **fields) -> list[bytes]:
    header = {"batch_id": batch_id, "done": True, "presentations": [presentation(**fields)]}
    return [VERSION, b"RESULTS", json.dumps(header).encode()]


def refusal(frames, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        decode(frames, **kwargs)
    return err.value


def test_an_error_to_results_names_its_batch_whenever_the_header_could_be_read():
    over_total = refusal([*results("b-7"), b"\0" * 2000], max_message_bytes=1024)
    assert (over_total.code, over_total.in_reply_to, over_total.batch_id) == ("too_large", "RESULTS", "b-7")
    assert "several RESULTS" in over_total.message
    # A header over 1 MiB or not JSON is not read: no batch_id (the rig matches such a reply by its order, §8).
    huge = [VERSION, b"RESULTS", b'{"batch_id": "b-7", "pad": "' + b"x" * MAX_HEADER_BYTES + b'"}']
    assert (refusal(huge).code, refusal(huge).batch_id) == ("too_large", None)
    nan = [VERSION, b"RESULTS", b'{"batch_id": "b-7", "x": nan}']
    assert (refusal(nan).code, refusal(nan).in_reply_to, refusal(nan).batch_id) == ("bad_json", "RESULTS", None)


def test_a_batch_over_the_limit_tells_the_operator_what_to_change():
    batch = Message(MessageType.BATCH, {"batch_id": "b", "session_id": "1", "thread_id": "2", "generation": 0,
                                        "response_window_ms": [50, 200],
                                        "stimuli": [{"stimulus_id": "s", "kind": "synthetic", "frame": 0}]},
                    [b"\x89PNG" + b"\0" * 2000])
    with pytest.raises(ProtocolError) as err:
        encode(batch, max_message_bytes=1024)
    assert err.value.code == "too_large" and "ACTMAX_MAX_MESSAGE_BYTES" in err.value.message
    assert "split it" not in err.value.message


@pytest.mark.parametrize("receiver, mtype", [("server", b"WELCOME"), ("server", b"BATCH"), ("server", b"ACK"),
                                             ("rig", b"HELLO"), ("rig", b"RESULTS")])
def test_a_type_sent_the_wrong_way_is_unexpected_whatever_its_header(receiver, mtype):
    err = refusal([VERSION, mtype, b'{"batch_id": "b-3"}'], receiver=receiver)
    assert (err.code, err.in_reply_to, err.batch_id) == ("unexpected_type", mtype.decode(), "b-3")
    assert decode(results(), receiver="server").type == MessageType.RESULTS  # each side's own types pass


@pytest.mark.parametrize("protocol", [b"1.0", b"1e0", b"true", b'"1"'])
def test_protocol_is_the_integer_1_only(protocol):
    header = b'{"rig": "rig-a", "protocol": ' + protocol + b', "channels": 1, "cached_references": []}'
    assert refusal([VERSION, b"HELLO", header]).code == "bad_version"
    assert decode([VERSION, b"HELLO", header.replace(protocol, b"1")]).header["protocol"] == 1


@pytest.mark.parametrize("fields", [{"rates": [1.7e308]}, {"rates": [-1.1e9]},
                                    {"baseline_rates": [2e9], "baseline_window_ms": [-100, 0]}])
def test_rates_beyond_a_billion_spikes_per_second_are_refused(fields):
    err = refusal(results(**fields))
    assert err.code == "bad_field" and "1e+09" in err.message and err.batch_id == "b-1"
    assert decode(results(rates=[1e9], baseline_rates=[-1e9], baseline_window_ms=[-100, 0]))


# --- RigClient against a bare ROUTER playing the server -------------------------------------------


class BareServer:
    """A ROUTER socket the test drives by hand."""

    def __init__(self, ctx, endpoint):
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(endpoint)

    def receive(self, mtype: MessageType) -> tuple[bytes, Message]:
        while True:
            assert self.router.poll(10_000), f"no {mtype} from the rig"
            identity, *frames = self.router.recv_multipart()
            msg = decode(frames)
            if msg.type == mtype:
                return identity, msg

    def send(self, identity: bytes, msg: Message) -> None:
        self.router.send_multipart([identity, *encode(msg)])

    def welcome(self) -> bytes:
        identity, _ = self.receive(MessageType.HELLO)
        self.send(identity, Message(MessageType.WELCOME, {"server": "bare", "heartbeat_ms": 50, "liveness": 100,
                                                          "max_message_bytes": 2**20}))
        return identity


@pytest.fixture
def bare(zmq_context, endpoint):
    server = BareServer(zmq_context, endpoint)
    yield server
    server.router.close(linger=0)


def shown(stimulus_id: str) -> Presentation:
    return Presentation(stimulus_id, [1.0], time.time(), (50, 200), str(uuid.uuid4()))


def test_an_error_without_batch_id_answers_the_oldest_results_awaiting_a_reply(zmq_context, endpoint, bare):
    """§8: replies come in order; an ERROR whose RESULTS header could not be read names no batch, and
    still settles that RESULTS, so the next ACK settles the RESULTS it answers."""
    with RigClient(endpoint, "rig-a", channels=1, context=zmq_context, **FAST) as client:
        identity = bare.welcome()
        first = client.send_results("b1", [shown("g0")], done=False)
        bare.receive(MessageType.RESULTS)
        second = client.send_results("b1", [shown("g1")])
        bare.receive(MessageType.RESULTS)
        bare.send(identity, error(ErrorCode.BAD_JSON, "RESULTS header is not UTF-8 JSON", in_reply_to="RESULTS"))
        bare.send(identity, Message(MessageType.ACK, {"batch_id": "b1", "accepted": 1, "duplicates": 0}))
        with pytest.raises(ProtocolError) as err:
            first.result(10)
        assert err.value.code == "bad_json"
        assert second.result(10) == {"batch_id": "b1", "accepted": 1, "duplicates": 0}


def test_a_hello_rate_limit_is_retried_with_backoff(zmq_context, endpoint, bare):
    """§6.3, §9: `rate_limited` to HELLO is transient; the rig reconnects on a new socket, not stops."""
    with RigClient(endpoint, "rig-a", channels=1, reconnect_max_s=0.2, context=zmq_context, **FAST) as client:
        identity, _ = bare.receive(MessageType.HELLO)
        bare.send(identity, error(ErrorCode.RATE_LIMITED, "too many HELLOs from this address",
                                  in_reply_to="HELLO"))
        assert bare.welcome() != identity  # a new socket says HELLO again
        assert client.wait_connected(10)
        assert [e["code"] for e in client.errors] == ["rate_limited"]
