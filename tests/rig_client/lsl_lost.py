"""Run by test_lsl.py in its own process (LSLAPICFG must be set before pylsl loads).

Reads a spike stream through `LSLSource`, closes its outlet, and prints as JSON what `poll` did then.
usage: lsl_lost.py [reconnect]. ``reconnect``: the source waits for the stream, which comes back once with
its units and, after a second loss, once with other units.
"""

import json
import sys
import time
import uuid

import pylsl

from rig_client import RigError
from rig_client.spikes.lsl import LSLSource, spike_outlet

reconnect = sys.argv[1:] == ["reconnect"]
name = f"spikes-{uuid.uuid4().hex[:8]}"
outlet = spike_outlet(name, ["elec1-unit1"])
source = LSLSource(name, timeout=10, reconnect=reconnect)
deadline = time.monotonic() + 30


def poll_until(done) -> dict:
    """Polls every 20 ms until ``done(seen)``, a `RigError` or the deadline: what they brought (``seen``)."""
    seen = {"spikes": [], "error": None}
    while not done(seen) and time.monotonic() < deadline:
        try:
            seen["spikes"] += source.poll().spike_times.tolist()
        except RigError as exc:
            seen["error"] = str(exc)
            break
        time.sleep(0.02)
    return seen


outlet.push_sample([0], pylsl.local_clock())
first = poll_until(lambda seen: seen["spikes"])
deleted_at = pylsl.local_clock()
del outlet  # its program ended
lost = poll_until(lambda seen: source.away)
out = {"received": len(first["spikes"]), "error": lost["error"], "lost": source.lost}
if reconnect:
    out["outage_while_away"] = [list(o) for o in source.outages]
    out["first_spike"], out["deleted_at"] = first["spikes"][0], deleted_at
    outlet = spike_outlet(name, ["elec1-unit1"])  # restarted, the same units
    back = poll_until(lambda seen: not source.away)
    stamp = pylsl.local_clock()
    outlet.push_sample([0], stamp)
    after = poll_until(lambda seen: seen["spikes"])
    out.update(back_error=back["error"], outages=[list(o) for o in source.outages], after=after["spikes"],
               stamp=stamp)
    del outlet
    poll_until(lambda seen: source.away)
    outlet = spike_outlet(name, ["elec1-unit1", "elec2-unit1"])  # restarted with another sorting
    out["relabelled"] = poll_until(lambda seen: not source.away)["error"]
source.close()
json.dump(out, sys.stdout)
