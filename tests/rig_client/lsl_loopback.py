"""Run by test_lsl.py in its own process (LSLAPICFG must be set before pylsl loads).

Publishes a spike and a marker stream, reads them back through `LSLSource`, prints JSON.
"""

import json
import sys
import time
import uuid

import pylsl

from rig_client.spikes import SpikeBuffer, count_in_window
from rig_client.spikes.lsl import LSLSource, marker_outlet, spike_outlet

tag = uuid.uuid4().hex[:8]
spikes = spike_outlet(f"spikes-{tag}", ["elec1-unit1", "elec2-unit1"])
markers = marker_outlet(f"markers-{tag}")
source = LSLSource(f"spikes-{tag}", f"markers-{tag}", timeout=10)
t0 = pylsl.local_clock()
onset = t0 + 0.5
sent = [(0, onset + 0.06), (0, onset + 0.1), (1, onset + 0.15), (1, onset - 0.05), (0, onset + 0.3)]
for unit, stamp in sent:
    spikes.push_sample([unit], stamp)
markers.push_sample(["onset"], onset)
buffer = SpikeBuffer(len(source.labels))
deadline = time.monotonic() + 20
got = 0
while got < len(sent) + 1 and time.monotonic() < deadline:
    events = source.poll()
    buffer.add(events)
    got += len(events.spike_times) + len(events.marker_times)
    time.sleep(0.05)
counts = count_in_window(buffer.spikes(), buffer.markers("onset"), (50, 200), baseline_ms=(-100, 0))
json.dump({"labels": source.labels, "received": got, "onset_error": float(buffer.markers("onset")[0] - onset),
           "rates": counts.rates.tolist(), "baseline": counts.baseline.tolist()}, sys.stdout)
source.close()
