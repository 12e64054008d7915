"""`actmax weights list|verify` load as the server does (its device and precision, which they name), the published
BigGAN download's own file name, what a not-found message tells a server's user, and which device setting a
refusal names."""

import re
import shutil

import pytest
import torch

from generators.base import resolve_device
from server.cli import main
from server.launch import ServerProcess
from server.weights import generators_device


def test_weights_verify_loads_in_the_servers_precision_and_says_so(monkeypatch, capsys):
    """dcgan-faces differs from float32 by more than the tolerance in bfloat16 (docs/generators.md): a server with
    ACTMAX_PRECISION=bfloat16 refuses it, so verify must too (it loaded in float32 on the CPU whatever the settings)."""
    monkeypatch.setenv("ACTMAX_PRECISION", "bfloat16")
    assert main(["weights", "verify", "dcgan-faces", "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert re.match(r"dcgan-faces\s+FAILED\s+dcgan-faces in bfloat16 differs from float32 by up to", out)
    assert err.startswith("actmax weights verify: generators on cpu in bfloat16, as `actmax serve` with these "
                          "settings\n")
    assert main(["weights", "verify", "dcgan-faces", "--device", "cpu", "--precision", "float32"]) == 0  # flag wins
    out, err = capsys.readouterr()
    assert re.match(r"dcgan-faces\s+ok\s+[0-9a-f]{64}", out) and "generators on cpu in float32" in err
    assert main(["weights", "list", "--device", "cpu"]) == 0
    (dcgan,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dcgan-faces")]
    assert "UNUSABLE" in dcgan


def test_weights_list_loads_on_the_servers_device(monkeypatch, capsys):
    monkeypatch.setenv("ACTMAX_DEVICE", "nosuch")
    assert main(["weights", "list"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("actmax weights: device 'nosuch' (--device or ACTMAX_DEVICE): not a torch device")
    assert main(["weights", "list", "--device", "cpu"]) == 0  # the flag over the variable
    assert "generators on cpu in float32" in capsys.readouterr().err


def test_the_device_named_says_why_auto_chose_the_cpu():
    if torch.cuda.is_available():
        assert re.fullmatch(r"cuda:\d+ \(.+\) in float16", generators_device("auto", "float16", "--device"))
    else:
        assert generators_device("auto", "float16", "--device") == (
            f"the CPU (device auto: torch {torch.__version__} is "
            f"{'a CPU-only build' if torch.version.cuda is None else 'built for CUDA but finds no GPU'}) in float16")
    assert generators_device("cpu", "float32", "--device") == "cpu in float32"


def test_serve_says_at_start_where_the_generators_run(tmp_path):
    server = ServerProcess(tmp_path / "data", "t" * 32, env={"ACTMAX_PRECISION": "float16"})  # with --device cpu
    server.start().close()
    server.stop()
    (line,) = [line for line in server.log_path.read_text().splitlines() if "serving REST on" in line]
    assert f", generators on cpu in float16, data in {(tmp_path / 'data').resolve()}" in line


def test_biggan_weights_under_the_published_downloads_name_load(weights_dirs, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "biggan-deep-128"
    folder.mkdir()
    shutil.copy(weights_dirs["biggan-deep-128"][1], folder / "biggan-deep-128-pytorch_model.bin")
    shutil.copy(weights_dirs["biggan-deep-128"][0] / "config.json", folder / "config.json")
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", str(tmp_path))
    assert main(["weights", "verify", "biggan-deep-128", "--device", "cpu"]) == 0
    assert re.match(r"biggan-deep-128\s+ok\s+[0-9a-f]{64}", capsys.readouterr().out)


def test_a_missing_weights_file_says_what_a_servers_user_sets(weights_dirs, tmp_path, monkeypatch, capsys):
    """`actmax weights list` and the server have no --weights: the advice names ACTMAX_WEIGHTS_DIR/<generator>/, and
    another .bin in the folder (a colleague's file, named their way) is named with the name it needs."""
    folder = tmp_path / "biggan-deep-128"
    folder.mkdir()
    shutil.copy(weights_dirs["biggan-deep-128"][1], folder / "biggan128.bin")
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", str(tmp_path))
    assert main(["weights", "list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("biggan-deep-128 "):out.index("biggan-deep-256 ")]
    assert "MISSING" in block and "--weights" not in block
    assert ("Give the pytorch_model.bin (with its config.json) file or a folder holding it (in "
            f"ACTMAX_WEIGHTS_DIR/biggan-deep-128/ on the server (now {tmp_path}), or as a thread's `weights` in a "
            "session). The folder "
            "holds biggan128.bin: rename the file of biggan-deep-128's network pytorch_model.bin.") in block
    assert "deepsim-fc6/ on the server" in out  # the other generators' advice too


def test_a_device_refusal_names_what_the_command_reads(capsys):
    """Only `actmax serve` (and `actmax weights`) read ACTMAX_DEVICE; `rig sim`, `analyze` and `bench` read --device."""
    with pytest.raises(ValueError, match=r"^device 'nosuch' \(--device on the command line, device= in Python\): "):
        resolve_device("nosuch")
    assert main(["rig", "sim", "--device", "nosuch", "--endpoint", "tcp://127.0.0.1:9"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("actmax rig: device 'nosuch' (--device on the command line, device= in Python): not a ")
