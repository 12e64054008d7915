"""Run by test_lsl.py in its own process (LSLAPICFG must be set before pylsl loads).

Publishes spike streams that `LSLSource` must refuse and prints, as JSON, the `RigError` each one gave:
``two_channels``, ``string`` and ``float``: streams of another format, refused when opened; ``markers_two_channels``
and ``markers_float``: marker streams of another format, refused when opened; ``markers_int``: a marker stream of
event codes, accepted (null); ``unix_time``: spikes stamped with time.time() instead of the LSL clock, refused when
polled.
"""

import json
import sys
import time
import uuid

import pylsl

from rig_client import RigError
from rig_client.spikes.lsl import MARKER_TYPE, SPIKE_TYPE, LSLSource, spike_outlet


def outlet(name: str, channels: int, channel_format: str, stream_type: str = SPIKE_TYPE):
    """An outlet of another format; a spike outlet lists one unit."""
    info = pylsl.StreamInfo(name, stream_type, channels, pylsl.IRREGULAR_RATE, channel_format, f"{name}-id")
    if stream_type == SPIKE_TYPE:
        info.desc().append_child("units").append_child("unit").append_child_value("label", "elec1-unit1")
    return pylsl.StreamOutlet(info)


def error(make) -> str | None:
    try:
        make()
    except RigError as exc:
        return str(exc)
    return None


tag = uuid.uuid4().hex[:8]
out = {}
for case, channels, channel_format in [("two_channels", 2, "int32"), ("string", 1, "string"), ("float", 1, "float32")]:
    name = f"{case}-{tag}"
    kept = outlet(name, channels, channel_format)
    out[case] = error(lambda: LSLSource(name, timeout=10))
    del kept

spikes = spike_outlet(f"spikes-{tag}", ["elec1-unit1"])
for case, channels, channel_format in [("markers_two_channels", 2, "string"), ("markers_float", 1, "float32"),
                                       ("markers_int", 1, "int32")]:
    name = f"{case}-{tag}"
    kept = outlet(name, channels, channel_format, MARKER_TYPE)
    out[case] = error(lambda: LSLSource(f"spikes-{tag}", name, timeout=10).close())
    del kept
del spikes

name = f"unix_time-{tag}"
spikes = spike_outlet(name, ["elec1-unit1"])
source = LSLSource(name, timeout=10)
spikes.push_sample([0], time.time())


def poll_until_refused():
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        source.poll()
        time.sleep(0.02)


out["unix_time"] = error(poll_until_refused)
out["offset"] = time.time() - pylsl.local_clock()
source.close()
json.dump(out, sys.stdout)
