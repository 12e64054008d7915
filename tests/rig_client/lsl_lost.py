"""Run by test_lsl.py in its own process (LSLAPICFG must be set before pylsl loads).

Reads a spike stream through `LSLSource`, closes its outlet, and prints as JSON what `poll` did then.
"""

import json
import sys
import time
import uuid

import pylsl

from rig_client import RigError
from rig_client.spikes.lsl import LSLSource, spike_outlet

name = f"spikes-{uuid.uuid4().hex[:8]}"
outlet = spike_outlet(name, ["elec1-unit1"])
source = LSLSource(name, timeout=10)
outlet.push_sample([0], pylsl.local_clock())
deadline, received = time.monotonic() + 20, 0
while not received and time.monotonic() < deadline:
    received += len(source.poll().spike_times)
    time.sleep(0.02)
del outlet  # its program ended
error, empty_polls = None, 0
while error is None and time.monotonic() < deadline:
    try:
        empty_polls += len(source.poll().spike_times) == 0
    except RigError as exc:
        error = str(exc)
    time.sleep(0.05)
source.close()
json.dump({"received": received, "error": error}, sys.stdout)
