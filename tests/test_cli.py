"""The ``actmax`` console script: every command has --help; bad input exits non-zero with one line."""

from __future__ import annotations

import argparse
import os
import re
import socket
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
    ["session", "create"], ["session", "watch"], ["thread", "retarget"], ["weights", "list"], ["weights", "verify"],
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
    (["session", "list"], "no API token: set ACTMAX_TOKEN"),
    (["session", "watch", "1", "--interval", "0"], "argument --interval: 0: expected a number > 0"),
    (["weights", "verify", "no-such-gan"], "unknown generator(s) no-such-gan"),
    (["serve", "--port", "-1"], "bad setting: --port: Input should be greater than or equal to 0"),
    (["serve", "--batch-timeout", "0"], "bad setting: --batch-timeout"),
    (["demo", "--generations", "0"], "threads.0.n_generations"),  # refused before any process starts
    (["demo", "--optimizers", "adam"], "unknown optimizer 'adam'"),
    (["demo", "--unit", "blocks.6"], "expected LAYER:CHANNEL"),
])
def test_bad_input_exits_nonzero_with_the_reason(args, reason, tmp_path):
    result = actmax(*args, env={"ACTMAX_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_folder_without_an_actmax_database_is_named(tmp_path):
    from server.store.db import make_db_engine, upgrade

    cases = {"garbage": "is not an SQLite database", "folder": "is a folder", "empty": "not actmax's"}
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "actmax.sqlite").write_bytes(os.urandom(4096))
    (tmp_path / "folder" / "actmax.sqlite").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "actmax.sqlite").touch()
    for folder, reason in cases.items():
        for command in (["export", "csv", "--session", "1", "--out", str(tmp_path / "out")],
                        ["analyze", "session", "1", "--out", str(tmp_path / "out")]):
            result = actmax(*command, "--data-dir", str(tmp_path / folder))
            assert result.returncode == 2 and reason in result.stderr and "Traceback" not in result.stderr, result
    result = actmax("serve", "--data-dir", str(tmp_path / "garbage"), env={"ACTMAX_TOKEN": "t"})
    assert result.returncode == 2 and "is not an SQLite database" in result.stderr, result.stderr

    db_engine = make_db_engine(f"sqlite:///{tmp_path / 'real' / 'actmax.sqlite'}")
    upgrade(db_engine)
    db_engine.dispose()
    for command, reason in ((["analyze", "session", "999"], "session 999 not found"),
                            (["analyze", "manifold", "999"], "thread 999 not found")):
        result = actmax(*command, "--data-dir", str(tmp_path / "real"), "--out", str(tmp_path / "out"))
        assert result.returncode == 2 and reason in result.stderr, result.stderr
    (tmp_path / "a-file").touch()  # an output folder that is a file
    result = actmax("export", "csv", "--session", "1", "--out", str(tmp_path / "a-file"),
                    "--data-dir", str(tmp_path / "real"))
    assert result.returncode == 2 and "session 1 not found" in result.stderr
    result = actmax("keys", "--data-dir", str(tmp_path / "a-file"), "init")
    assert result.returncode == 2 and f"cannot use {tmp_path / 'a-file'}" in result.stderr, result.stderr


def test_a_bad_environment_setting_names_its_variable(tmp_path):
    for command in (["serve"], ["weights", "list"], ["analyze", "session", "1"]):
        result = actmax(*command, env={"ACTMAX_HEARTBEAT_S": "abc", "ACTMAX_TOKEN": "t"})
        assert result.returncode == 2 and "bad setting: ACTMAX_HEARTBEAT_S: Input should be a valid number" \
            in result.stderr, result.stderr


def test_config_and_token_mistakes_are_named_before_any_request(tmp_path):
    (tmp_path / "bad.yaml").write_text("threads: [unclosed")
    result = actmax("session", "create", str(tmp_path / "bad.yaml"), env={"ACTMAX_TOKEN": "t"})
    assert result.returncode == 2 and "bad.yaml is not valid YAML" in result.stderr, result.stderr
    secret = "s3cret-token"
    for token in (secret + "\n", secret + " x", secret + "é"):
        result = actmax("session", "list", env={"ACTMAX_TOKEN": token, "ACTMAX_URL": "http://127.0.0.1:9"})
        assert result.returncode == 2 and "no HTTP header can carry" in result.stderr, result.stderr
        assert secret not in result.stderr
    result = actmax("serve", env={"ACTMAX_TOKEN": secret + "\n", "ACTMAX_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "no HTTP header can carry" in result.stderr and secret not in result.stderr


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_no_help_shows_a_doubled_percent_sign():
    from server.cli import build_parser

    for parser in all_parsers(build_parser()):
        assert "%%" not in parser.format_help(), parser.prog


def test_the_client_says_when_the_server_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        result = actmax("session", "list", env={"ACTMAX_TOKEN": "t", "ACTMAX_URL": f"http://127.0.0.1:{port}"})
    assert result.returncode != 0 and "cannot reach the server at" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_rest_port_in_use_is_a_one_line_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = actmax("serve", "--port", str(port), "--zmq-endpoint", "tcp://127.0.0.1:*",
                        "--data-dir", str(tmp_path), env={"ACTMAX_TOKEN": "t"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot serve REST on 127.0.0.1:{port}" in line and "--port" in line


def test_weights_list_and_verify_report_where_each_generator_looks(tmp_path):
    broken = tmp_path / "weights" / "dcgan-faces"
    broken.mkdir(parents=True)
    (broken / "weights.tar").write_bytes(b"not a checkpoint")
    env = {"ACTMAX_WEIGHTS_DIR": str(tmp_path / "weights")}
    listed = actmax("weights", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    (dcgan,) = [line for line in listed.stdout.splitlines() if line.startswith("dcgan-faces")]
    assert "MISSING" in dcgan and str(broken) in dcgan
    assert "deepsim-fc6" in listed.stdout and "biggan-deep-128" in listed.stdout
    failed = actmax("weights", "verify", "dcgan-faces", env=env)
    assert failed.returncode == 1 and "dcgan-faces" in failed.stderr
    verified = actmax("weights", "verify", "dcgan-faces")  # the packaged weights
    assert verified.returncode == 0, verified.stderr
    assert re.search(r"dcgan-faces\s+ok\s+[0-9a-f]{64}", verified.stdout)
