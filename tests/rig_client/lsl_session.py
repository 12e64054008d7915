"""Run by test_lsl.py inside a loopback-only network namespace, with LSLAPICFG and DISPLAY set.

`actmax serve`, an LSL spike outlet (this process) and `actmax rig present --spikes lsl:...` run a
session; prints JSON with what was presented, stored and published, and the presenter's log.
usage: lsl_session.py WORKDIR [MODE]; MODE ``late``: each spike is pushed 0.3 s after its time stamp
(a recorder slower than --latency-ms); ``lost``: the outlet closes while the second generation is shown,
and a new one of the same name and units starts 1.5 s later (spikes of that gap are never published).
"""

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pylsl

from rig_client.spikes.lsl import spike_outlet
from server.launch import ServerProcess, stop

work = Path(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else ""
delay = 0.3 if mode == "late" else 0.0
rates = (60.0, 5.0)
NAME, UNITS = "actmax-session-spikes", ["elec1-u1", "elec2-u1"]
outlet = spike_outlet(NAME, UNITS)
start = pylsl.local_clock()
rng = np.random.default_rng(0)
duration = 300.0
spikes = [np.sort(start + rng.uniform(0, duration, int(r * duration))) for r in rates]
events = sorted((t, c) for c, times in enumerate(spikes) for t in times)
pushed = []  # (time stamp, unit) of every spike published


def publish(outlet, done: threading.Event, after: float):
    for t, c in events:
        if t < after:
            continue
        while pylsl.local_clock() < t + delay:
            if done.wait(min(0.005, t + delay - pylsl.local_clock())):
                return
        outlet.push_sample([c], t)
        pushed.append((t, c))


done = threading.Event()
publisher = threading.Thread(target=publish, args=(outlet, done, start), daemon=True)
publisher.start()
gap = None
server = ServerProcess(work / "data", "token-for-the-lsl-session")
api = server.start()
record = work / "presented.jsonl"
# lost: stimuli long enough that the outlet is gone well before the second batch is answered
timing = ["--duration-ms", "300", "--isi-ms", "300"] if mode == "lost" else ["--duration-ms", "50", "--isi-ms", "30"]
with open(work / "present.log", "wb") as log:
    presenter = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "rig", "present", "--endpoint", server.zmq_endpoint,
         "--rig", "lsl-rig", "--spikes", "lsl:actmax-session-spikes", "--window", "400x300",
         *timing, "--record", str(record)],
        stdout=log, stderr=subprocess.STDOUT)
try:
    session = api.post("/sessions", {
        "name": "lsl", "rig": "lsl-rig", "references": {"source": "skimage", "count": 1},
        "threads": [{"name": "cma", "generator": "dcgan-faces", "optimizer": "cma",
                     "optimizer_params": {"population": 4}, "objective": {"channels": [0]},
                     "seed": 2, "n_generations": 2}]})
    (thread,) = api.get(f"/sessions/{session['id']}/threads")
    deadline = time.monotonic() + 180
    if mode == "lost":
        while api.get(f"/threads/{thread['id']}/generations")["total"] < 2:  # the second batch is on its way
            assert presenter.poll() is None, (work / "present.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first batch was not answered"
            time.sleep(0.05)
        time.sleep(0.8)  # its second stimulus is on
        done.set()
        publisher.join()
        lost_at = pylsl.local_clock()
        del outlet  # the stream breaks off, as when its program ends
        time.sleep(1.5)
        outlet = spike_outlet(NAME, UNITS)  # its program restarted
        gap = [lost_at, pylsl.local_clock()]
        done = threading.Event()
        threading.Thread(target=publish, args=(outlet, done, gap[1]), daemon=True).start()
    while api.get(f"/threads/{thread['id']}")["status"] != "finished":
        assert presenter.poll() is None, (work / "present.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the session did not finish"
        time.sleep(0.3)
finally:
    stop(presenter)
    done.set()
    server.stop()
    api.close()
with sqlite3.connect(work / "data" / "actmax.sqlite") as db:
    stored = db.execute("SELECT presentation_id, stimulus_id, rates_json FROM presentations").fetchall()
    statuses = [s for (s,) in db.execute("SELECT status FROM generations")]
    kinds = [k for (k,) in db.execute("SELECT kind FROM events ORDER BY id")]
lines = [json.loads(line) for line in record.read_text().splitlines()]
json.dump({"presented": [p for p in lines if "flip_statistics" not in p],
           "stored": [[pid, sid, json.loads(r)] for pid, sid, r in stored], "statuses": statuses, "events": kinds,
           "spikes": [[t for t, c in pushed if c == unit] for unit in range(len(rates))], "gap": gap,
           "log": (work / "present.log").read_text()}, sys.stdout)
