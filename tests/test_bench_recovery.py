"""bench/recovery.py: a served session's server killed and restarted while `actmax rig sim` shows its batches."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a server, a simulated rig and a restart


def test_a_kill_is_timed_from_the_rigs_record_and_the_restart_in_parts():
    spec = importlib.util.spec_from_file_location("recovery", ROOT / "bench" / "recovery.py")
    recovery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recovery)
    ((baseline, healthy, rest, to_onset, gap),) = recovery.kill_gaps(kills=1, population=4, show_ms=50, seed=0)
    # A smoke test of the bench: each figure was measured (> 0), and the parts add up to the whole.
    assert min(baseline, healthy, to_onset, gap) > 0 and np.isclose(healthy + rest, to_onset)
