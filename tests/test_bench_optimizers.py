"""bench/optimizers.py times the base optimizers by default, as docs/optimizers.md shows."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dim", "8", "--population", "4", "--generations", "1", "--pycma-generations", "1", "--hess-k", "2"]


def run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "bench" / "optimizers.py"), *SMALL, "--blas-threads", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_default_run_times_the_base_optimizers_only():
    done = run()
    assert done.returncode == 0, done.stderr
    timed = [line.split()[0] for line in done.stdout.splitlines()[2:]]
    assert timed == ["cma", "ga", "hess-cma", "pycma", "sphere-cma"]


def test_only_takes_a_preset_and_refuses_an_optimizer_without_a_population():
    done = run("--only", "cma-sigma1")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[2:]] == ["cma-sigma1"]
    refused = run("--only", "fixed-design")
    assert refused.returncode != 0 and "fixed-design take(s) no population" in refused.stderr
    assert "Traceback" not in refused.stderr
