"""bench/turnaround.py's floor: its minimal server in a process of its own, played over real ZeroMQ."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_the_floor_times_each_turn_and_the_compute_inside_it():
    spec = importlib.util.spec_from_file_location("turnaround", ROOT / "bench" / "turnaround.py")
    turnaround = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(turnaround)
    waits, computes = turnaround.floor_waits("bench-standin-64", generations=4, population=3, show_ms=0)
    assert len(waits) == len(computes) == 3  # the first turn, which waited for the server to start, is left out
    # The compute comes back in the BATCH the rig validated; the rig's wait holds it and the hops.
    assert np.all(computes > 0) and np.all(waits > computes)
