"""The Blackrock adapter's packet conversion, on packets built with pycbsdk's own C structures
(no Cerebus hardware or nPlay simulator here)."""

from __future__ import annotations

import numpy as np
import pytest

from rig_client import RigError
from rig_client.spikes import SpikeBuffer, count_in_window
from rig_client.spikes.blackrock import BlackrockSource, PacketBuffer

pycbsdk_lib = pytest.importorskip("pycbsdk._lib", reason="pip install 'actmax[blackrock]'")


def packet(time_ns: int, chid: int, type_: int = 0, word: int = 0):
    pkt = pycbsdk_lib.ffi.new("cbPKT_GENERIC *")
    pkt.cbpkt_header.time, pkt.cbpkt_header.chid, pkt.cbpkt_header.type = time_ns, chid, type_
    pkt.data_u32[0] = word
    return pkt.cbpkt_header, pkt.data_u8  # what Session's event callback passes


def test_packets_become_spikes_and_markers():
    buffer = PacketBuffer(["chan3-u1", "chan7-u0"])
    onset_ns = 12_000_000_000
    buffer.on_digital(*packet(onset_ns, 151, word=0x10203))
    for t_ms, chid, unit in [(60, 3, 1), (100, 3, 1), (-50, 7, 0), (70, 3, 2), (80, 9, 1)]:
        buffer.on_spike(*packet(onset_ns + t_ms * 1_000_000, chid, unit))
    events = buffer.take()
    assert buffer.skipped == 2 and events.marker_names == ["din66051"]
    assert len(buffer.take().spike_times) == 0  # taken once
    spikes = SpikeBuffer(2)
    spikes.add(events)
    np.testing.assert_allclose(spikes.markers("din66051"), [12.0])
    counts = count_in_window(spikes.spikes(), [12.0], (50, 200), baseline_ms=(-100, 0))
    np.testing.assert_allclose(counts.rates, [[2 / 0.15, 0.0]])
    np.testing.assert_allclose(counts.baseline, [[0.0, 1 / 0.1]])


def test_a_device_clock_that_starts_again_from_zero_is_refused():
    buffer = PacketBuffer(["chan3-u1"])
    buffer.on_spike(*packet(12_000_000_000, 3, 1))
    buffer.on_digital(*packet(12_500_000_000, 151, word=1))
    assert len(buffer.take().spike_times) == 1
    buffer.on_digital(*packet(200_000_000, 151, word=1))  # the NSP restarted
    with pytest.raises(RigError, match=r"Blackrock device's clock \(stream 'digital-input packets'\) went back from "
                       r"12\.500 s to 0\.200 s: the NSP was restarted"):
        buffer.take()


def test_a_missing_sdk_library_is_a_rig_error_that_says_what_to_install(monkeypatch, tmp_path):
    """pip's pycbsdk may come without libcbsdk; its raw OSError became a RigError naming CBSDK_LIB_PATH."""
    from pycbsdk import session

    monkeypatch.setattr(session, "lib", None)  # not loaded yet
    monkeypatch.setattr(pycbsdk_lib, "_find_library", lambda: str(tmp_path / "libcbsdk.so"))
    with pytest.raises(RigError, match=r"could not load libcbsdk.*CBSDK_BUILD_SHARED=ON.*CBSDK_LIB_PATH.*"
                       r"libcbsdk\.so"):
        BlackrockSource(["chan1-u1"])
