"""bench/gpu_checks.sh picks its Python and device as its header says (a copy of the script, with stand-in
interpreters that print how they were called), and the real script's refusal of a device names a flag it takes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stand_in(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{name} $*"\n')
    path.chmod(0o755)


def _checkout(tmp_path: Path, venv: bool) -> tuple[Path, dict]:
    """A copy of the script in a checkout with (or without) .venv/bin/python; `python` and `python3` on PATH."""
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    shutil.copy2(ROOT / "bench" / "gpu_checks.sh", checkout / "bench" / "gpu_checks.sh")
    if venv:
        _stand_in(checkout / ".venv" / "bin" / "python", "venv")
    for name in ("python", "python3"):
        _stand_in(tmp_path / "bin" / name, name)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON", "DEVICE", "OUT")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    return checkout / "bench" / "gpu_checks.sh", env


def _call(script: Path, env: dict, *args: str, **variables: str) -> str:
    done = subprocess.run([str(script), *args], env={**env, **variables}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_gpu_checks_use_the_checkouts_venv(tmp_path):
    script, env = _checkout(tmp_path, venv=True)
    assert _call(script, env, "--tiny") == "venv bench/gpu.py --device cuda --tiny"
    assert _call(script, env, "--tiny", DEVICE="cpu") == "venv bench/gpu.py --device cpu --tiny"
    python = str(tmp_path / "bin" / "python")
    assert _call(script, env, PYTHON=python) == "python bench/gpu.py --device cuda"


def test_gpu_checks_fall_back_to_python3_without_a_venv(tmp_path):
    script, env = _checkout(tmp_path, venv=False)
    assert _call(script, env, "--tiny", DEVICE="cpu") == "python3 bench/gpu.py --device cpu --tiny"


def test_gpu_checks_take_the_device_flag_their_refusal_names():
    """bench/gpu.py's refusal names --device: given to the script, it wins over DEVICE."""
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(ROOT / "bench" / "gpu_checks.sh"), "--device", "nonsense:7"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "device 'nonsense:7' (--device" in done.stdout, done.stdout + done.stderr
