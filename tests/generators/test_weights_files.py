"""Bad weights files, BigGAN configs and devices: a `GeneratorError` naming the file (or flag) and the fix,
also through `actmax weights list` and `actmax serve`."""

import json
import os
import re
import shutil
import socket

import pytest
import torch

import generators
from generators import GeneratorError
from generators.base import resolve_device
from generators.biggan import TINY_CONFIG
from server.cli import main

TORCH_ADVICE = ("weights_only", "file an issue", "add_safe_globals")


class Pickled:
    """A Python object, which weights_only=True refuses to unpickle."""


class Shell:
    """An object that unpickles to a call of os.system: torch 2.13 calls its module (posix) blocked."""

    def __reduce__(self):
        return os.system, ("true",)


@pytest.mark.parametrize(("content", "held"), [
    (torch.zeros(3), "a Tensor of shape (3,), not a dict"),
    ([torch.zeros(3)], "a list, not a dict"),
    ({"defc7.weight": 1}, "a dict whose 'defc7.weight' is a int, not a tensor"),
    ({7: torch.zeros(3)}, "a dict with the key 7 (int), not a parameter name"),
])
@pytest.mark.parametrize("name", ["deepsim-fc6", "dcgan-faces"])
def test_a_file_that_is_not_a_state_dict_is_refused_naming_it(name, content, held, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(content, path)
    with pytest.raises(GeneratorError) as err:
        generators.load(name, device="cpu", weights=path)
    assert f"from {path}: it holds {held}; expected a state dict" in str(err.value)


def test_a_checkpoint_whose_state_dict_is_not_one_is_refused(tmp_path):
    path = tmp_path / "weights.tar"
    torch.save({"netG_state_dict": [torch.zeros(3)]}, path)
    with pytest.raises(GeneratorError, match="it holds a list, not a dict"):
        generators.load("dcgan-faces", device="cpu", weights=path)


@pytest.mark.parametrize(("write", "problem"), [
    (lambda path: path.write_bytes(b"not a checkpoint"), "it is not a PyTorch weights file"),
    (lambda path: path.write_bytes(b""), "it is not a PyTorch weights file"),
    (lambda path: torch.save({"defc7.weight": Pickled()}, path),
     f"it holds pickled Python objects ({__name__}.Pickled), which are not loaded for safety"),
    (lambda path: torch.save({"x": Shell()}, path),
     f"it holds pickled Python objects ({os.system.__module__}.system), which are not loaded for safety"),
])
def test_an_unreadable_file_is_named_without_torchs_advice(write, problem, tmp_path):
    path = tmp_path / "upconvGAN_fc6.pt"
    write(path)
    with pytest.raises(GeneratorError) as err:
        generators.load("deepsim-fc6", device="cpu", weights=path)
    message = str(err.value)
    assert f"from {path}: {problem}" in message and "torch.save(model.state_dict(), path)" in message
    assert not any(advice in message for advice in TORCH_ADVICE)


@pytest.mark.parametrize(("config", "problem"), [
    ("{bad json", "is not valid JSON (Expecting property name"),
    ("[1, 2]", "holds a JSON list, not an object"),
    (json.dumps({k: v for k, v in TINY_CONFIG.items() if k != "layers"}), "lacks layers"),
    (json.dumps({**TINY_CONFIG, "layers": 5}), "does not describe a BigGAN-deep network"),
])
def test_a_bad_biggan_config_is_named(config, problem, weights_dirs, tmp_path):
    shutil.copy(weights_dirs["biggan-deep-128"][1], tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(GeneratorError) as err:
        generators.load("biggan-deep-128", device="cpu", weights=tmp_path)
    assert str(tmp_path / "config.json") in str(err.value) and problem in str(err.value)
    assert "remove it to use the published config" in str(err.value) or "does not describe" in problem


def test_biggan_weights_of_another_size_do_not_fit_and_the_config_they_were_built_from_is_named(weights_dirs, tmp_path):
    shutil.copy(weights_dirs["biggan-deep-128"][1], tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "channel_width": 8}))  # a stand-in's, say
    with pytest.raises(GeneratorError) as err:
        generators.load("biggan-deep-128", device="cpu", weights=tmp_path)
    lines = str(err.value).splitlines()
    assert "do not fit generator 'biggan-deep-128'" in lines[0] and "size mismatch" in lines[1]
    assert len(lines) == 8 and lines[-2].endswith("more")  # five of torch's lines, not every parameter's
    assert lines[-1] == (
        f"The network was built from {tmp_path / 'config.json'} (32 px, channel width 8): if that config.json is not "
        "this file's (a stand-in's left beside real weights, say), put the file's own there, or remove it to use the "
        "published config of biggan-deep-128.")


GIVEN = re.escape("(--device on the command line, device= in Python)")  # where a device comes from, said neutrally


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(GeneratorError, match=rf"^device 'cuda' {GIVEN}: this torch has no CUDA \(torch.cuda."
                                             r"is_available\(\) is False\); use cpu or install a CUDA build"):
        resolve_device("cuda")


def test_devices_this_torch_cannot_use_are_refused():
    with pytest.raises(GeneratorError, match=rf"^device 'nosuch' {GIVEN}: not a torch device; use auto, cpu, cuda or "
                                             "cuda:N"):
        resolve_device("nosuch")
    with pytest.raises(GeneratorError, match=rf"^device 'cuda:99' {GIVEN}: this"):
        resolve_device("cuda:99")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_weights_list_names_a_file_that_is_not_a_state_dict(tmp_path, monkeypatch, capsys):
    (tmp_path / "deepsim-fc6").mkdir()
    torch.save([torch.zeros(3)], tmp_path / "deepsim-fc6" / "upconvGAN_fc6.pt")
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", str(tmp_path))
    assert main(["weights", "list"]) == 0
    (problem,) = [line for line in capsys.readouterr().out.splitlines() if "upconvGAN_fc6.pt" in line]
    assert "it holds a list, not a dict" in problem


@pytest.mark.parametrize(("device", "reason"), [("nosuch", "not a torch device; use auto, cpu"),
                                               ("cuda", "this torch has no CUDA")])
def test_serve_refuses_a_device_it_cannot_use_before_binding(device, reason, tmp_path, monkeypatch, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    monkeypatch.setenv("ACTMAX_TOKEN", "t")
    with socket.create_server(("127.0.0.1", 0)) as taken:  # were the device let through, binding would fail
        port = taken.getsockname()[1]
        code = main(["serve", "--device", device, "--port", str(port), "--zmq-endpoint", "tcp://127.0.0.1:*",
                     "--data-dir", str(tmp_path / "data")])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"actmax serve: device '{device}' (--device or ACTMAX_DEVICE): {reason}")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("name", "file"), [("deepsim-fc6", "upconvGAN_fc6.pt"),
                                            ("biggan-deep-128", "pytorch_model.bin")])
def test_a_folder_where_the_weights_file_belongs_is_named_as_a_folder(name, file, tmp_path):
    (tmp_path / file).mkdir()  # `cp -r`, or an archive unpacked, under the file's name
    with pytest.raises(GeneratorError) as err:
        generators.load(name, device="cpu", weights=tmp_path)
    assert not isinstance(err.value, generators.WeightsNotFoundError)
    assert str(err.value) == (f"cannot read weights for {name!r} from {tmp_path / file}: it is a folder, not a weights "
                              f"file; put the file {file} itself at that path")


def test_biggan_weights_without_their_config_say_which_config_was_assumed(weights_dirs, tmp_path):
    shutil.copy(weights_dirs["biggan-deep-128"][1], tmp_path / "pytorch_model.bin")  # its config.json left behind
    with pytest.raises(GeneratorError) as err:
        generators.load("biggan-deep-128", device="cpu", weights=tmp_path)
    assert "size mismatch" in str(err.value)
    assert str(err.value).splitlines()[-1] == (
        f"No config.json was found beside {tmp_path / 'pytorch_model.bin'}, so the published config of "
        "biggan-deep-128 (128 px, channel width 128) was assumed: put the network's config.json beside the file.")


def test_a_biggan_file_of_another_network_is_named_with_its_keys(tmp_path):
    torch.save({f"defc{i}.weight": torch.zeros(2) for i in range(7)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(GeneratorError) as err:
        generators.load("biggan-deep-128", device="cpu", weights=tmp_path)
    assert "do not fit generator 'biggan-deep-128': missing ['embeddings.weight'" in str(err.value)
    assert str(err.value).endswith("; the file's keys that fit no layer: ['defc0.weight', 'defc1.weight', "
                                   "'defc2.weight', 'defc3.weight', 'defc4.weight'] (of 7)")
