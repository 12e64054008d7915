"""The ``actmax`` console script: every command has --help; bad input exits non-zero with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ACTMAX = Path(sys.executable).parent / "actmax"


def actmax(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ACTMAX_")}
    return subprocess.run([str(ACTMAX), *args], capture_output=True, text=True, timeout=120,
                          env={**environment, **(env or {})})


@pytest.mark.parametrize("command", [
    [], ["serve"], ["rig", "sim"], ["rig", "screen"], ["demo"], ["bench"], ["bench", "report"],
    ["analyze", "manifold"], ["analyze", "session"], ["analyze", "geometry"], ["analyze", "study"],
])
def test_every_command_has_help(command):
    result = actmax(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: actmax")


@pytest.mark.parametrize(("args", "reason"), [
    (["serve"], "no API token: set ACTMAX_TOKEN"),
    (["analyze", "manifold", "1", "--data-dir", "/nonexistent-actmax"], "no actmax database"),
    (["analyze", "geometry", "no-such-gan", "--positions", "2"], "unknown generator"),
    (["rig", "sim", "--unit", "blocks.6"], "expected LAYER:CHANNEL"),
    (["rig", "sim", "--drop", "1.5"], "expected a fraction"),
    (["rig", "screen", "--layer", "fc"], "needs a spatial layer"),
])
def test_bad_input_exits_nonzero_with_the_reason(args, reason, tmp_path):
    result = actmax(*args, env={"ACTMAX_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
