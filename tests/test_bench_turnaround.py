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


def test_the_hot_path_trace_times_each_stretch_of_a_served_turn():
    """bench/hot_path.py: a traced server in its own process, one thread's rig over real ZeroMQ."""
    spec = importlib.util.spec_from_file_location("hot_path", ROOT / "bench" / "hot_path.py")
    hot_path = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hot_path)
    events = hot_path.run("bench-standin-64", generations=4, show_ms=0, baseline=True)
    turns = hot_path.turns(events)
    assert len(turns) == 3  # each RESULTS that answered a round, up to the next BATCH; the last one finished
    hot_path_order = ["decode", "on_results", "steps.answer", "steps.record_results", "r.record_presentations",
                      "monitor", "r.add_generation", "steps.prepare_batch", "commit", "_reply_built", "send"]
    for turn in turns:
        started = iter(label for label, phase, *_ in turn if phase == "b")
        # Each stamped function of the hot path is reached, in the order a turn runs them; others may come between
        # (a heartbeat decoded or sent during the compute, a commit of the rig's last-seen time under load).
        assert all(label in started for label in hot_path_order), [label for label, phase, *_ in turn if phase == "b"]
        parts = {label: (ms, used) for label, ms, used in hot_path.stretches(turn)}
        ms, (cpu, faults) = parts["commit:b -> commit:e"]
        assert ms > 0 and 0 < cpu <= ms + 0.5  # the commit waits for its fsync: CPU time within the wall time
