"""The ``actmax`` console script: every command has --help; bad input exits non-zero with one line."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ACTMAX = Path(sys.executable).parent / "actmax"


def actmax(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ACTMAX_")}
    return subprocess.run([str(ACTMAX), *args], capture_output=True, text=True, timeout=120,
                          env={**environment, **(env or {})})


@pytest.mark.parametrize("command", [
    [], ["serve"], ["rig", "sim"], ["rig", "screen"], ["demo"], ["bench"], ["bench", "report"],
    ["analyze", "manifold"], ["analyze", "session"], ["analyze", "geometry"], ["analyze", "study"],
    ["rig", "matlab-files"], ["session", "create"], ["session", "watch"], ["thread", "retarget"], ["weights", "list"], ["weights", "verify"],
])
def test_every_command_has_help(command, capsys):
    from server.cli import main

    with pytest.raises(SystemExit) as exit:
        main([*command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: actmax {' '.join(command)}".rstrip())


def test_the_console_script_is_installed_and_runs():
    from rig_client.version import package_version

    result = actmax("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: actmax")
    version = actmax("--version")  # what a methods section or a bug report quotes: this checkout's build
    assert version.returncode == 0 and version.stdout.strip() == f"actmax {package_version()}", version.stderr


def test_the_parser_and_the_rest_client_commands_import_no_heavy_library():
    """Every `actmax` command builds the whole parser, so no subcommand module (nor its package) may import
    torch, pandas or scipy at the top: `actmax --help` and `actmax thread pause ID` answer at once."""
    from server.launch import free_port

    program = ("import sys\nfrom server.cli import build_parser, main\nbuild_parser()\n"
               "for argv in (['--help'], ['thread', 'pause', '999'], ['session', 'list']):\n"
               "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
               "print(sorted(m for m in ('torch', 'pandas', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ACTMAX_TOKEN": "t", "ACTMAX_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 0, result.stderr
    assert "cannot reach the server" in result.stderr  # the commands ran their request
    assert result.stdout.splitlines()[-1] == "[]"


def test_the_server_imports_neither_pandas_nor_scipys_splines_nor_alembic_until_it_needs_them(tmp_path):
    """What `actmax serve` imports before it answers is what a restart after a crash costs the animal
    (bench/recovery.py): the exports' pandas and the tuning maps' splines wait for their first request, and Alembic
    for a database to migrate (not one already up to date)."""
    from server.store import db

    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    db.upgrade(db.make_db_engine(url))
    program = ("import sys\nimport server.engine, server.main, server.serve  # noqa\nfrom server.store import db\n"
               f"db.upgrade(db.make_db_engine({url!r}))\n"
               "print(sorted(m for m in ('pandas', 'scipy.interpolate', 'alembic') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_second_server_on_the_same_data_folder_is_refused(tmp_path):
    """Both would run the same threads (each flipping them between running and waiting for its rig)."""
    from server.launch import ServerProcess, free_port

    token = "t" * 32
    first = ServerProcess(tmp_path, token, env={"ACTMAX_HEARTBEAT_MS": "1000"})  # misspelt: ACTMAX_HEARTBEAT_S
    first.start()
    try:
        second = actmax("serve", "--port", str(free_port()), "--zmq-endpoint", f"tcp://127.0.0.1:{free_port()}",
                        "--data-dir", str(tmp_path), env={"ACTMAX_TOKEN": token})
    finally:
        first.stop()
    assert second.returncode == 2
    assert f"{tmp_path} is in use by another actmax serve (pid {first.process.pid})" in second.stderr
    warning = next(line for line in first.log_path.read_text().splitlines() if "no setting reads" in line)
    assert "ACTMAX_HEARTBEAT_MS (did you mean ACTMAX_HEARTBEAT_S?)" in warning and "misspelt?" in warning


def test_output_piped_into_a_reader_that_closed_early_ends_quietly(tmp_path):
    """``actmax weights list | head -0``: no traceback and no advice about paths, as Unix tools do."""
    read, write = os.pipe()
    os.close(read)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ACTMAX_")}
    try:
        result = subprocess.run([str(ACTMAX), "weights", "list"], stdout=write, stderr=subprocess.PIPE, text=True,
                                timeout=120, env={**environment, "ACTMAX_DATA_DIR": str(tmp_path)})
    finally:
        os.close(write)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr and "paths" not in result.stderr


@pytest.mark.parametrize(("args", "reason"), [
    (["serve"], "no API token: set ACTMAX_TOKEN"),
    (["analyze", "manifold", "1", "--data-dir", "/nonexistent-actmax"], "no actmax database"),
    (["analyze", "geometry", "no-such-gan", "--positions", "2"], "unknown generator"),
    (["rig", "sim", "--unit", "blocks.6"], "expected LAYER:CHANNEL"),
    (["rig", "sim", "--drop", "1.5"], "expected a fraction"),
    (["rig", "screen", "--layer", "fc"], "needs a spatial layer"),
    (["session", "list"], "no API token: set ACTMAX_TOKEN"),
    (["weights", "verify", "no-such-gan"], "unknown generator(s) no-such-gan"),
])
def test_bad_input_exits_nonzero_with_the_reason(args, reason, tmp_path):
    result = actmax(*args, env={"ACTMAX_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


def in_process(*args: str, capsys) -> tuple[int, str]:
    """``actmax ARGS`` run in this process (what the console script runs, without its start-up): exit code
    and stderr."""
    from server.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse's refusals
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith("ACTMAX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ACTMAX_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


@pytest.mark.parametrize(("args", "reason"), [
    (["session", "watch", "1", "--interval", "0"], "argument --interval: 0: expected a number > 0"),
    (["session", "watch", "1", "--interval", "1e308"], "argument --interval: 1e308: at most 3600 s between polls"),
    (["rig", "sim", "--seed", "-1"], "argument --seed: -1: expected a whole number >= 0"),  # not naming the flag
    (["bench", "--dry-run", "--seed", "-1"], "argument --seed: -1: expected a whole number >= 0"),
    (["serve", "--port", "-1"], "bad setting: --port: Input should be greater than or equal to 0"),
    (["serve", "--batch-timeout", "0"], "bad setting: --batch-timeout"),
    (["serve", "--zmq-endpoint", "tcp://127.0.0.1:99999"], "bad setting: --zmq-endpoint: 'tcp://127.0.0.1:99999' is "
     "not an endpoint to bind: use tcp://HOST:PORT"),  # ZeroMQ bound port 34463, and the log said 99999
    (["serve", "--zmq-endpoint", "garbage"], "PORT 1-65535, or * for any free one"),  # not "off loopback"
    (["demo", "--generations", "0"], "threads.0.n_generations"),  # refused before any process starts
    (["demo", "--optimizers", "adam"], "unknown optimizer 'adam'"),
    (["demo", "--unit", "blocks.6"], "expected LAYER:CHANNEL"),
    (["demo", "--noise-eps", "nan"], "argument --noise-eps: nan: expected a number >= 0"),  # the rig's own refusal,
    (["demo", "--timeout", "-1"], "argument --timeout: -1: expected a number > 0"),  # once the server ran, or
    (["demo", "--population", "1"], "expected a whole number of images from 2 to 500"),  # the session's POST
])
def test_bad_flags_are_named_before_anything_starts(args, reason, clean_environment, capsys):
    code, err = in_process(*args, capsys=capsys)
    assert code == 2 and reason in err, err


def test_a_data_folder_without_an_actmax_database_is_named(tmp_path, clean_environment, capsys):
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
            code, err = in_process(*command, "--data-dir", str(tmp_path / folder), capsys=capsys)
            assert code == 2 and reason in err, err
    result = actmax("serve", "--data-dir", str(tmp_path / "garbage"), env={"ACTMAX_TOKEN": "t"})  # the real script
    assert result.returncode == 2 and "is not an SQLite database" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

    db_engine = make_db_engine(f"sqlite:///{tmp_path / 'real' / 'actmax.sqlite'}")
    upgrade(db_engine)
    db_engine.dispose()
    for command, reason in ((["analyze", "session", "999"], "session 999 not found"),
                            (["analyze", "manifold", "999"], "thread 999 not found")):
        code, err = in_process(*command, "--data-dir", str(tmp_path / "real"), "--out", str(tmp_path / "out"),
                               capsys=capsys)
        assert code == 2 and reason in err, err
    (tmp_path / "a-file").touch()  # a folder that is a file
    code, err = in_process("keys", "--data-dir", str(tmp_path / "a-file"), "init", capsys=capsys)
    assert code == 2 and f"cannot use {tmp_path / 'a-file'}" in err, err


def test_a_bad_environment_setting_names_its_variable(clean_environment, capsys):
    clean_environment.setenv("ACTMAX_HEARTBEAT_S", "abc")
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    for command in (["serve"], ["weights", "list"], ["analyze", "session", "1"]):
        code, err = in_process(*command, capsys=capsys)
        assert code == 2 and "bad setting: ACTMAX_HEARTBEAT_S: Input should be a valid number" in err, err


@pytest.mark.parametrize(("variable", "value", "reason"), [
    ("ACTMAX_HEARTBEAT_S", "0.001", "greater than or equal to 0.01"),
    ("ACTMAX_HEARTBEAT_S", "3600", "less than or equal to 600"),
    ("ACTMAX_LIVENESS", "5000", "less than or equal to 1000"),
    ("ACTMAX_MAX_MESSAGE_BYTES", "100", "greater than or equal to 1024"),
    ("ACTMAX_HEARTBEAT_S", "nan", "a finite number"),  # not "at most 600"
    ("ACTMAX_BATCH_TIMEOUT_S", "inf", "a finite number"),
])
def test_a_connection_setting_no_welcome_can_carry_is_refused_at_start(variable, value, reason, clean_environment,
                                                                        capsys):
    """Outside WELCOME's ranges the server used to start, then answer every rig's HELLO with ERROR internal."""
    clean_environment.setenv(variable, value)
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    code, err = in_process("serve", capsys=capsys)
    assert code == 2 and f"bad setting: {variable}: Input should be {reason}" in err, err


@pytest.mark.parametrize("url", ["garbage", "postgresql://x@127.0.0.1:1/x"])
def test_a_database_url_that_is_no_sqlite_file_is_named(url, clean_environment, capsys):
    """A traceback from SQLAlchemy's URL parser, or a missing PostgreSQL driver, before."""
    clean_environment.setenv("ACTMAX_DATABASE_URL", url)
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    code, err = in_process("serve", capsys=capsys)
    assert code == 2 and f"bad setting: ACTMAX_DATABASE_URL: {url!r}: actmax keeps its data in an SQLite file: give " \
        "sqlite:///PATH" in err and "Traceback" not in err, err


def test_config_and_token_mistakes_are_named_before_any_request(tmp_path, clean_environment, capsys):
    (tmp_path / "bad.yaml").write_text("threads: [unclosed")
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    code, err = in_process("session", "create", str(tmp_path / "bad.yaml"), capsys=capsys)
    assert code == 2 and "bad.yaml is not valid YAML" in err, err
    secret = "s3cret-token"
    clean_environment.setenv("ACTMAX_URL", "http://127.0.0.1:9")
    for token in (secret + "\n", secret + " x", secret + "é"):
        clean_environment.setenv("ACTMAX_TOKEN", token)
        for command in (["session", "list"], ["serve"]):
            code, err = in_process(*command, capsys=capsys)
            assert code == 2 and "no HTTP header can carry" in err and secret not in err, err


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


def test_no_help_cites_the_spec():
    """An installed user has no spec: a help text gives the number or names the publication."""
    from server.cli import build_parser

    for parser in all_parsers(build_parser()):
        assert not re.search(r"\bspec\b", parser.format_help()), parser.prog


def test_keys_list_names_the_folder_it_looked_in(tmp_path, clean_environment, capsys):
    from server.cli import main

    missing = tmp_path / "mistyped"
    code, err = in_process("keys", "list", "--data-dir", str(missing), capsys=capsys)
    assert code == 2 and f"{missing} does not exist, so there are no keys in {missing / 'keys'}" in err, err
    assert not missing.exists()
    clean_environment.chdir(tmp_path)
    (tmp_path / "fresh").mkdir()
    assert main(["keys", "list", "--data-dir", "fresh"]) == 0
    assert capsys.readouterr().out.splitlines() == [  # absolute: the working folder is not always obvious
        f"keys folder: {tmp_path.resolve() / 'fresh' / 'keys'} (none yet: `actmax keys init` makes it)",
        "server: no key pair (CURVE off)"]


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


def test_a_rest_host_that_is_no_address_of_this_machine_is_told_so(tmp_path):
    """Not "choose a free port", which was the advice for every bind failure."""
    result = actmax("serve", "--host", "no-such-host.invalid", "--port", "0", "--zmq-endpoint", "tcp://127.0.0.1:*",
                    "--data-dir", str(tmp_path), env={"ACTMAX_TOKEN": "t" * 32})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot serve REST on no-such-host.invalid:0" in line and "(--host)" in line and "free port" not in line


def test_a_rig_port_in_use_is_told_before_the_database_is_made(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = actmax("serve", "--port", "0", "--zmq-endpoint", f"tcp://127.0.0.1:{port}",
                        "--data-dir", str(tmp_path), env={"ACTMAX_TOKEN": "t"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot bind the rig transport to tcp://127.0.0.1:{port}" in line, line
    assert not (tmp_path / "actmax.sqlite").exists()


def test_serve_leaves_another_programs_sqlite_file_as_it_was(tmp_path):
    import sqlite3
    from contextlib import closing

    database = tmp_path / "actmax.sqlite"
    with closing(sqlite3.connect(database)) as db, db:
        db.execute("CREATE TABLE spikes (t REAL)")
    result = actmax("serve", "--port", "0", "--zmq-endpoint", "tcp://127.0.0.1:*", "--data-dir", str(tmp_path),
                    env={"ACTMAX_TOKEN": "t"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "spikes" in line and "not actmax's" in line and "--data-dir" in line, line
    with closing(sqlite3.connect(database)) as db:
        assert [name for (name,) in db.execute("SELECT name FROM sqlite_master")] == ["spikes"]


def test_weights_list_and_verify_report_where_each_generator_looks(tmp_path):
    broken = tmp_path / "weights" / "dcgan-faces"
    broken.mkdir(parents=True)
    (broken / "weights.tar").write_bytes(b"not a checkpoint")
    env = {"ACTMAX_WEIGHTS_DIR": str(tmp_path / "weights")}
    listed = actmax("weights", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    (dcgan,) = [line for line in listed.stdout.splitlines() if line.startswith("dcgan-faces")]
    assert "UNUSABLE" in dcgan and str(broken) in dcgan  # a file that is there but does not load is not MISSING
    assert "deepsim-fc6" in listed.stdout and "biggan-deep-128" in listed.stdout
    failed = actmax("weights", "verify", "dcgan-faces", env=env)
    assert failed.returncode == 1 and "dcgan-faces" in failed.stderr
    verified = actmax("weights", "verify", "dcgan-faces")  # the packaged weights
    assert verified.returncode == 0, verified.stderr
    assert re.search(r"dcgan-faces\s+ok\s+[0-9a-f]{64}", verified.stdout)
    assert "loading" not in listed.stderr and "verifying" not in verified.stderr  # no bar cut into a piped table


def test_rig_screen_loads_the_weights_given_by_flag_or_by_the_servers_folder(tmp_path):
    broken = tmp_path / "weights" / "dcgan-faces"
    broken.mkdir(parents=True)
    (broken / "weights.tar").write_bytes(b"not a checkpoint")
    for args, env in [(["--weights", str(broken)], {}), ([], {"ACTMAX_WEIGHTS_DIR": str(tmp_path / "weights")})]:
        result = actmax("rig", "screen", "--samples", "2", *args, env=env)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert str(broken / "weights.tar") in result.stderr, (args, result.stderr)


def test_weights_verify_prints_the_whole_reason_of_a_failure(tmp_path):
    """Not only its first line, which ends at "tried:": the paths tried and what to do, indented under it."""
    failed = actmax("weights", "verify", "deepsim-fc6", env={"TORCH_HOME": str(tmp_path / "torch"),
                                                             "ACTMAX_WEIGHTS_DIR": str(tmp_path / "weights")})
    assert failed.returncode == 1, failed.stderr
    first, tried, advice = failed.stdout.splitlines()
    assert re.fullmatch(r"deepsim-fc6\s+FAILED\s+weights for generator 'deepsim-fc6' not found; tried:", first)
    assert tried == f"      - {tmp_path / 'torch' / 'hub' / 'checkpoints' / 'upconvGAN_fc6.pt'}"
    assert advice.startswith("    Download the DeePSiM fc6 PyTorch state dict")

def test_demo_progress_counts_a_generation_that_completes_between_its_reads():
    """``make demo``'s bar ended at 59/60: its last generation completed after the count, before the states."""
    from server.demo import progress

    class Api:  # one thread; its last generation completes, and the thread finishes, right after the first read
        reads = 0

        def get(self, path: str, **params):
            self.reads += 1
            ended = self.reads > 1
            if path.endswith("/generations"):
                assert params["status"] == "complete"
                return {"total": 2 if ended else 1}
            return {"status": "finished" if ended else "running"}

    api = Api()
    while not (result := progress(api, [{"id": 1}]))[1]:
        pass
    assert result == (2, True)


def test_an_actmax_url_without_its_scheme_is_named(clean_environment, capsys):
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    clean_environment.setenv("ACTMAX_URL", "127.0.0.1:8000")
    code, err = in_process("session", "list", capsys=capsys)
    assert code == 2 and "ACTMAX_URL must start with http:// or https://, e.g. http://127.0.0.1:8000" in err, err


def test_an_actmax_url_of_the_rigs_zeromq_port_is_named_in_seconds(clean_environment, capsys, zmq_context):
    import time

    import zmq

    from server import client_cli

    clean_environment.setattr(client_cli, "FIRST_TIMEOUT_S", 1.0)
    router = zmq_context.socket(zmq.ROUTER)  # what `actmax serve` binds for rigs
    port = router.bind_to_random_port("tcp://127.0.0.1")
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    clean_environment.setenv("ACTMAX_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    try:
        code, err = in_process("session", "list", capsys=capsys)
    finally:
        router.close(linger=0)
    assert code == 2 and f"http://127.0.0.1:{port} answered, but not as actmax's REST API" in err, err
    assert time.monotonic() - start < 10


def test_an_actmax_url_whose_peer_resets_the_connection_is_named(clean_environment, capsys):
    """A port that accepts and then resets (the rigs' ZeroMQ port with CURVE on does) is not a dead server."""
    import contextlib
    import socket
    import struct
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def reset_each():
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                connection = listener.accept()[0]
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.close()  # with linger 0: a TCP reset

    threading.Thread(target=reset_each, daemon=True).start()
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    clean_environment.setenv("ACTMAX_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        code, err = in_process("session", "list", capsys=capsys)
    finally:
        listener.close()
    assert code == 2 and "answered, but not as actmax's REST API" in err, err


def test_watch_prints_in_time_order_and_no_negative_zero(clean_environment, capsys):
    """A session already running when watched: its thread's ``running`` came before its generation 0, and
    the generation's reference mean of -0.0001 prints as 0.000."""
    from server import client_cli

    thread = {"id": 7, "name": "ch0", "status": "running", "last_error": None, "created_at": "2026-11-29T10:00:00Z"}
    snapshots = iter([{"id": 1, "status": "active", "threads": [thread]}] * 2 + [
                      {"id": 1, "status": "stopped", "threads": [{**thread, "status": "stopped"}]}])
    events = [{"thread_id": 7, "kind": f"thread.{status}", "level": "info", "message": "", "time": time}
              for status, time in (("running", "2026-11-29T10:00:01Z"), ("stopped", "2026-11-29T10:00:09Z"))]
    generation = {"id": 3, "number": 0, "status": "complete", "mean_score": 1.5, "max_score": 2.0,
                  "reference_mean": -0.0001, "rig_latency_s": 0.1, "completed_at": "2026-11-29T10:00:05.5Z"}

    def call(method: str, path: str, body=None):
        if "/events?" in path:
            offset = int(path.split("offset=")[1].split("&")[0])
            return {"items": events[offset:offset + 1]}
        if "/generations?" in path:
            return {"items": [generation] if "offset=0&" in path else []}
        return next(snapshots)

    clean_environment.setattr(client_cli, "call", call)
    capsys.readouterr()
    assert client_cli.watch_session(argparse.Namespace(id=1, interval=0.01)) == 0
    *lines, last = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    # each line starts with its local time and offset from UTC (two words), the session's end without one
    assert [words[2:] for words in lines] == [["ch0", "running"], ["ch0", "0", "1.500", "2.000", "0.000", "0.100"],
                                              ["ch0", "stopped"]]
    assert last == ["session", "1", "stopped"]


def test_session_list_and_show_say_how_many_threads_of_a_finished_session_failed(tmp_path, clean_environment, capsys):
    """Its failed thread ended the session ``finished``, as a completed one does; the CLI says which it was."""
    import httpx

    from server.cli import main
    from server.main import create_app
    from server.store import records
    from server.store.models import ThreadStatus
    from tests.server.conftest import (
        TOKEN,
        LiveServer,
        WakeCounter,
        make_settings,
        served,
        session_config,
        thread_config,
    )

    server = LiveServer(make_settings(tmp_path / "data"), WakeCounter())
    try:
        with served(create_app(server.settings, server.sessions, engine=server.engine)) as url:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                ok, bad = (client.post("/sessions", json=session_config(name=name, threads=[thread_config()])).json()
                           for name in ("completed", "crashed"))
            with server.sessions() as db:  # as the engine ends them
                records.finish_thread(db, ok["threads"][0]["id"])
                records.end_session_if_done(db, ok["id"])
                records.set_thread_error(db, bad["threads"][0]["id"], "thread.failed", "failed: boom",
                                         status=ThreadStatus.FAILED)
                db.commit()
            clean_environment.setenv("ACTMAX_URL", url)
            clean_environment.setenv("ACTMAX_TOKEN", TOKEN)
            capsys.readouterr()
            assert main(["session", "list"]) == 0
            header, *rows = capsys.readouterr().out.splitlines()
            assert [row.split()[2:-1] for row in rows] == [["rig-A", "finished"],
                                                           ["rig-A", "finished", "(1", "of", "1", "threads", "failed)"]]
            assert len({line.index(" created" if line == header else " 20") for line in [header, *rows]}) == 1
            assert main(["session", "show", str(bad["id"])]) == 0
            assert capsys.readouterr().out.splitlines()[0].endswith(": finished (1 of 1 threads failed)")
            assert main(["session", "watch", str(bad["id"])]) == 1  # a script's `watch && analyze` stops here
            assert capsys.readouterr().out.splitlines()[-1] == f"session {bad['id']} finished (1 of 1 threads failed)"
            assert main(["session", "watch", str(ok["id"])]) == 0
            assert capsys.readouterr().out.splitlines()[-1] == f"session {ok['id']} finished"
    finally:
        server.db_engine.dispose()


def test_serve_refuses_a_damaged_database_or_one_from_a_newer_actmax_in_one_line(tmp_path, clean_environment,
                                                                                capsys):
    from server.store.db import make_db_engine, upgrade
    from tests.server.conftest import damage

    for folder in ("damaged", "newer"):
        db_engine = make_db_engine(f"sqlite:///{tmp_path / folder / 'actmax.sqlite'}")
        upgrade(db_engine)
        db_engine.dispose()
    damage(tmp_path / "damaged" / "actmax.sqlite")
    with sqlite3.connect(tmp_path / "newer" / "actmax.sqlite") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999future'")
    clean_environment.setenv("ACTMAX_TOKEN", "t")
    for folder, reason in (("newer", "is at schema version '9999future', which this actmax does not know"),
                           ("damaged", "is damaged (PRAGMA quick_check: ")):
        code, err = in_process("serve", "--data-dir", str(tmp_path / folder), "--port", "0",
                               "--zmq-endpoint", "tcp://127.0.0.1:*", "--device", "cpu", capsys=capsys)
        (line,) = err.strip().splitlines()
        assert code == 2 and line.startswith("actmax serve: ") and reason in line, err


def test_serve_stopped_with_a_live_stream_open_ends_it_and_exits_quietly(tmp_path):
    """A dashboard's open stream does not hold the shutdown until uvicorn cancels it (with a traceback)."""
    from server.launch import ServerProcess

    server = ServerProcess(tmp_path, "t" * 32)
    server.start().close()
    with httpx.stream("GET", f"{server.url}/live", headers={"Authorization": f"Bearer {'t' * 32}"},
                      timeout=60) as stream:
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        server.process.send_signal(signal.SIGTERM)
        list(lines)  # to the stream's end, which the server closes properly (else: RemoteProtocolError)
    assert server.process.wait(60) == 0
    log = server.log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert log.rstrip().endswith("INFO server.serve: shutting down"), log


def test_weights_verify_fails_weights_that_render_one_image_for_every_code(tmp_path):
    """Untrained or unconverted weights load and render finite pixels, but an evolution would show one image."""
    import torch

    from generators.dcgan import STATE_KEY, packaged_weights

    checkpoint = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    checkpoint[STATE_KEY]["main.12.weight"].zero_()  # the last layer: a grey image whatever the code
    (tmp_path / "dcgan-faces").mkdir()
    torch.save(checkpoint, tmp_path / "dcgan-faces" / "weights.tar")
    failed = actmax("weights", "verify", "dcgan-faces", env={"ACTMAX_WEIGHTS_DIR": str(tmp_path)})
    assert failed.returncode == 1, failed.stdout
    assert re.match(r"dcgan-faces\s+FAILED\s+the weights look untrained or not converted", failed.stdout)


def test_demo_out_replaces_only_an_empty_folder_or_an_earlier_demo_report(tmp_path, capsys, monkeypatch):
    """`actmax demo --out DIR` deleted any DIR, a data folder or `.` included, before anything else ran."""
    from server.cli import main
    from server.demo import MARKER, replace_report_folder

    recordings = tmp_path / "recordings"
    (recordings / "images").mkdir(parents=True)
    (recordings / "lab-notebook.txt").write_text("notes")
    assert main(["demo", "--out", str(recordings)]) == 2  # refused before any process starts
    assert "already holds files and is not an earlier demo report" in capsys.readouterr().err
    assert sorted(p.name for p in recordings.iterdir()) == ["images", "lab-notebook.txt"]

    report = tmp_path / "report"
    replace_report_folder(report)  # new: made, and marked
    (report / "scores.png").write_bytes(b"old")
    replace_report_folder(report)  # an earlier report: emptied
    assert [p.name for p in report.iterdir()] == [MARKER]
    (report / "data").mkdir()
    link = tmp_path / "latest-demo"
    link.symlink_to(report)  # a link to it: the report it points to is emptied, the link kept
    replace_report_folder(link)
    assert link.is_symlink() and [p.name for p in report.iterdir()] == [MARKER]
    monkeypatch.chdir(report)
    assert main(["demo", "--out", "."]) == 2
    assert "is the current folder or one above it" in capsys.readouterr().err
    assert (report / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    replace_report_folder(empty)
    assert [p.name for p in empty.iterdir()] == [MARKER]


def test_a_demo_stopped_by_sigterm_stops_its_server_and_rig(tmp_path):
    """`timeout 60 actmax demo`, or a closed terminal: the demo's server and rig run in sessions of their own, and
    were left running, holding their ports and the report folder's database."""
    out = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, "-m", "server.cli", "demo", "--out", str(out), "--generations", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def children() -> set[int]:  # the demo's server and rig, started by it (in sessions of their own)
        found = set()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and int((proc / "stat").read_text().rpartition(")")[2].split()[1]) == demo.pid:
                    found.add(int(proc.name))
            except (OSError, ValueError, IndexError):
                pass
        return found

    def alive(pid: int) -> bool:
        try:
            return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except OSError:
            return False

    started: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(started := started | children()) < 2:  # the server, then the rig
            assert demo.poll() is None and time.monotonic() < deadline, "the demo did not start its server and rig"
            time.sleep(0.2)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) != 0
        deadline = time.monotonic() + 30
        while any(map(alive, started)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in started if alive(pid)]
    finally:
        demo.kill()
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
