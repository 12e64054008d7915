"""Bad flags of ``actmax rig ...`` are refused before anything opens or connects, with the flag,
the value and what to give instead; no traceback, exit status 2."""

from __future__ import annotations

import pytest

from server.cli import main

MISSING = "replay:/nonexistent/rec.npz"  # never read: the flags are refused first


@pytest.mark.parametrize(("args", "message"), [
    (["sim", "--endpoint", "notanendpoint"],
     "argument --endpoint: 'notanendpoint' is not an endpoint to connect to: use tcp://HOST:PORT "
     "(e.g. tcp://127.0.0.1:5555)"),
    (["sim", "--rig", "bad name"], "argument --rig: 'bad name': a rig name is 1-64 of A-Z a-z 0-9 . _ - "
                                   "(no spaces or accented letters), starting with a letter or digit"),
    (["sim", "--delay", "-5"], "argument --delay: -5: expected a number >= 0"),
    (["sim", "--disconnect-every", "-1"], "argument --disconnect-every: -1: expected a whole number >= 0"),
    (["screen", "--top", "-3"], "argument --top: -3: expected a whole number > 0"),
    (["screen", "--samples", "-1"], "argument --samples: -1: expected a whole number > 0"),
    (["bridge", "--folder", "unused", "--channels", "-1"], "argument --channels: -1: expected a whole number > 0"),
    (["present", "--spikes", MISSING, "--width-cm", "0"], "argument --width-cm: 0: expected a number > 0"),
    (["present", "--spikes", MISSING, "--distance-cm", "-57"], "argument --distance-cm: -57: expected a number > 0"),
    (["present", "--spikes", MISSING, "--refresh-hz", "nan"], "argument --refresh-hz: nan: expected a number > 0"),
    (["present", "--spikes", MISSING, "--isi-ms", "-1"], "argument --isi-ms: -1: expected a number >= 0"),
    (["present", "--spikes", MISSING, "--window", "0x600"],
     "argument --window: '0x600': expected WIDTHxHEIGHT in pixels, e.g. 800x600"),
])
def test_bad_flags_are_refused_by_the_parser(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["rig", *args])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    (None, "setup.json: No such file or directory; give a JSON file that exists"),
    ('{"distance": 57', "setup.json is not UTF-8 JSON (Expecting ',' delimiter"),
    ("[57]", "setup.json must hold a JSON object such as {\"viewing_distance_cm\": 57}, at most 4096 bytes as "
     "compact JSON and nested at most 16 deep; it is a list"),
    ('{"notes": "%s"}' % ("x" * 5000), "setup.json must hold a JSON object such as {\"viewing_distance_cm\": 57}, "
     "at most 4096 bytes as compact JSON and nested at most 16 deep; it is 5012 bytes"),
    ('{"distance": NaN}', "setup.json is not UTF-8 JSON (NaN is not JSON; write a number)"),
])
@pytest.mark.parametrize("command", [["sim"], ["bridge", "--folder", "unused"], ["present", "--spikes", MISSING]])
def test_a_setup_file_that_is_no_small_json_object_is_refused_by_the_parser(command, content, message, tmp_path,
                                                                            capsys):
    setup = tmp_path / "setup.json"
    if content is not None:
        setup.write_text(content)
    with pytest.raises(SystemExit) as exit:
        main(["rig", *command, "--setup", str(setup)])
    assert exit.value.code == 2
    assert f"argument --setup: {tmp_path / message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["sim"], ["bridge", "--folder", "unused"], ["present", "--spikes", MISSING]])
def test_a_rig_name_with_an_umlaut_is_refused_naming_the_characters_allowed(command, capsys):
    """'ü' is a letter to a German user: the message lists the characters, as the session config's does."""
    with pytest.raises(SystemExit) as exit:
        main(["rig", *command, "--rig", "Rig-Müller"])
    assert exit.value.code == 2
    assert "argument --rig: 'Rig-Müller': a rig name is 1-64 of A-Z a-z 0-9 . _ - (no spaces or accented " \
           "letters), starting with a letter or digit" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--baseline-ms", "0", "-100"], "--baseline-ms 0 -100: END must be after START, e.g. -100 0"),
    (["--size-deg", "200"], "--size-deg 200: a stimulus must be under 180 degrees wide"),
    (["--record", "/nonexistent/presented.jsonl"], "--record /nonexistent/presented.jsonl: No such file"),
])
def test_present_checks_its_flags_before_reading_the_spikes(args, message, capsys):
    assert main(["rig", "present", "--spikes", MISSING, *args]) == 2
    assert message in capsys.readouterr().err


def test_a_device_this_torch_cannot_use_is_refused_before_connecting(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    assert main(["rig", "sim", "--device", "cuda", "--endpoint", "tcp://127.0.0.1:9"]) == 2
    assert "device 'cuda' (--device on the command line, device= in Python): this torch has no CUDA" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--rate-scale", "5"], "--rate-scale 5 does nothing without --poisson-window SECONDS: add it, or leave "
                            "--rate-scale out"),
    (["--drift-tau", "100", "--poisson-window", "0.2"], "--drift-tau 100 does nothing without --drift-sd SD"),
])
def test_a_noise_flag_without_the_one_it_scales_is_refused_before_the_model_loads(args, message, capsys):
    """Alone, these flags used to change nothing while the rig said "noise none"."""
    assert main(["rig", "sim", *args, "--endpoint", "tcp://127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err


def test_the_noise_flags_build_the_documented_chain_with_their_defaults():
    from rig_client import noise
    from rig_client.sim import build_noise
    from server.cli import build_parser

    args = build_parser().parse_args(["rig", "sim", "--poisson-window", "0.2", "--drift-sd", "0.3"])
    drift, poisson = build_noise(args).models
    assert isinstance(drift, noise.Drift) and (drift.tau, drift.sigma) == (500.0, 0.3)
    assert isinstance(poisson, noise.PoissonNoise) and (poisson.window_s, poisson.scale) == (0.2, 1.0)
    args = build_parser().parse_args(["rig", "sim", "--poisson-window", "0.2", "--rate-scale", "4"])
    assert [(type(m), m.scale) for m in build_noise(args).models] == [(noise.PoissonNoise, 4.0)]


def test_a_setup_file_written_by_notepad_is_read_and_the_programs_own_fields_are_not_overwritten(tmp_path):
    from rig_client import RigError
    from rig_client.connection import rig_setup
    from server.cli import build_parser

    setup = tmp_path / "setup.json"
    setup.write_text('{"viewing_distance_cm": 57, "noise": "low"}', encoding="utf-8-sig")  # with a byte-order mark
    args = build_parser().parse_args(["rig", "bridge", "--folder", "unused", "--setup", str(setup)])
    assert args.setup == {"viewing_distance_cm": 57, "noise": "low"}
    assert rig_setup(args, {"rig_program": "x"}) == {"viewing_distance_cm": 57, "noise": "low", "rig_program": "x"}
    with pytest.raises(RigError, match="this program sets 'noise' itself; rename the file's field"):
        rig_setup(args, {"rig_program": "x", "noise": {"eps": 0.1}})


def test_a_bridge_folder_in_a_folder_that_does_not_exist_is_refused_before_the_rig_connects(tmp_path, capsys):
    """A typo, or a share not mounted: the bridge made the whole path and waited there for batches the rig's task,
    reading the real folder, never saw."""
    missing = tmp_path / "not-mounted" / "rig-folder"
    assert main(["rig", "bridge", "--folder", str(missing), "--channels", "2"]) == 2
    assert f"--folder {missing}: its parent {missing.parent} does not exist (a typo, or a share not mounted?)" in \
        capsys.readouterr().err
    assert not missing.parent.exists()
    (tmp_path / "a-file").touch()
    assert main(["rig", "bridge", "--folder", str(tmp_path / "a-file"), "--channels", "2"]) == 2
    assert "a-file: it is a file" in capsys.readouterr().err
