"""bench/gpu_checks.sh on the CPU with tiny sizes: every GPU check's code path runs and reports."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_checks_run_on_the_cpu_and_write_their_report(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(ROOT / "bench" / "gpu_checks.sh"), "--tiny"], env=env, capture_output=True,
                          text=True, timeout=280)
    report = (tmp_path / "gpu_checks.txt").read_text()
    assert done.returncode == 0, report + done.stderr
    assert report == done.stdout
    for section in ("[generators]", "[units]", "[hessian]", "[e2e]"):
        assert section in report
    assert "failed" not in report and "skipped" not in report
    lines = report.splitlines()
    # One throughput line per generator and passing precision; the rig's wait for each e2e generator.
    assert any(line.split()[:2] == ["dcgan-faces", "float32"] for line in lines)
    assert any(line.split()[:2] == ["dcgan-faces", "float16"] for line in lines)
    assert sum(line.split()[:1] in (["dcgan-faces"], ["biggan-deep-128"]) and len(line.split()) == 5
               for line in lines) == 2


def test_gpu_bench_refuses_a_device_it_cannot_use():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "nonsense:7"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "device 'nonsense:7' is not usable here" in done.stderr
