"""bench/gpu_checks.sh on the CPU with tiny sizes: every GPU check's code path runs and reports."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_checks_run_on_the_cpu_and_write_their_report(tmp_path):
    """The end-to-end section runs the loop of bench/turnaround.py; it is left out here for time."""
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(ROOT / "bench" / "gpu_checks.sh"), "--tiny", "--skip-e2e"], env=env, capture_output=True,
                          text=True, timeout=280)
    report = (tmp_path / "gpu_checks.txt").read_text()
    assert done.returncode == 0, report + done.stderr
    assert report == done.stdout
    for section in ("[generators]", "[units]", "[hessian]"):
        assert section in report
    assert "[e2e]" not in report and "failed" not in report and "skipped" not in report
    rows = [line.split() for line in report.splitlines()]
    # A throughput row (name, precision, difference, images/s, ms, PNG ms) per generator and accepted precision.
    assert {tuple(row[:2]) for row in rows if len(row) == 6 and row[1] == "float32"} == \
        {("dcgan-faces", "float32"), ("biggan-deep-128", "float32")}
    assert any(row[:2] == ["dcgan-faces", "float16"] and 0 < float(row[2]) <= 4 / 255 for row in rows)


def test_gpu_bench_refuses_a_device_it_cannot_use():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "nonsense:7"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "device 'nonsense:7' (--device" in done.stderr and "not a torch device" in done.stderr
