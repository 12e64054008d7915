"""`actmax analyze study` end to end at tiny settings, and its pieces (settings, CLI, differentiable unit)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from insilico import study
from rig_client.version import package_version
from insilico.study import StudyError, StudySettings

TINY = ["--layers", "blocks.1", "blocks.2", "--units-per-layer", "1", "--generations", "6", "--population", "8",
        "--grid", "18", "--screen-samples", "8", "--rbf-n", "4", "--rbf-levels", "0.6", "0.9", "--rbf-steps", "1",
        "--examples-per-layer", "1", "--seed", "3", "--threads", "--no-progress"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study.add_parser(parser.add_subparsers())
    return parser.parse_args(["study", *argv])


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("study")
    args = parse([*TINY, "--out", str(out)])
    settings = study.settings_from_args(args)
    assert settings.layers == ("blocks.1", "blocks.2") and settings.rbf and settings.rbf_levels == (0.6, 0.9)
    assert args.func(args) == 0
    return out, json.loads((out / "study.json").read_text())


def test_outputs_written(result: tuple[Path, dict]) -> None:
    out, doc = result
    for name in ("study.json", "study.md", "study.png"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in (out / "maps").iterdir()) == [
        f"{u['layer']}_ch{u['channel']}.png" for u in doc["units"]]
    report = (out / "study.md").read_text()
    assert "| lowest single-loop index |" in report and "Spearman" in report
    # two units: every trend says why it has no verdict (it said "nan nan 2 no data")
    assert "| line AUC | decreases | — | — | 2 | too few units (n 2 < 3) |" in report
    assert f"actmax {package_version()}; settings:" in report
    assert doc["actmax_version"] == package_version() and {u["actmax_version"] for u in doc["units"]} == {
        package_version()}
    assert doc["summary"]["layers"] == ["blocks.1", "blocks.2"]
    assert set(doc["summary"]["spearman"]) == {key for key, *_ in study.STATISTICS}


def test_unit_statistics_finite_and_consistent(result: tuple[Path, dict]) -> None:
    _, doc = result
    assert [u["layer"] for u in doc["units"]] == ["blocks.1", "blocks.2"]
    for u in doc["units"]:
        values = np.array(u["map"])
        assert values.shape == (11, 11) and np.isfinite(values).all()
        assert u["map_max"] == pytest.approx(values.max())
        # the evolution drifts along PC1, so the hemisphere's centre is near the map's peak (2 grid steps)
        assert u["peak_offset_deg"] <= 36
        assert u["best_score"] >= u["first_score"] and u["best_score"] > 0
        for key in ("auc_loop", "auc_line", "axis_ratio", "kent_r2", "kent_kappa", "kent_beta"):
            assert u[key] is not None and math.isfinite(u[key]), key
        assert 0 <= u["lowest_loop_index"] <= 20
        assert len(u["signature"]) == 42
        rbf = u["rbf"]
        assert u["f_star"] == pytest.approx(u["best_score"], rel=1e-3)
        local = np.array([rbf[mode]["level_mean_distance"] for mode in ("min", "max")])
        far = np.array(rbf["max_abinit"]["level_mean_distance"])
        assert local.shape == (2, 2) and np.isfinite(local).all() and (local > 0).all()
        # codes started anywhere on the prior end further from the peak than codes started near it; min vs
        # max is not ordered after one or two Adam steps (max runs 1.5x the steps of min, as in the spec)
        assert np.all(far > local.max(axis=0))
        for mode in ("min", "max", "max_abinit"):
            assert np.isfinite(rbf[mode]["level_mean_fraction"]).all()


def test_settings_from_args_presets() -> None:
    quick = study.settings_from_args(parse(["--quick", "--generations", "3", "--no-rbf", "--layers", "blocks.1,head"]))
    assert (quick.generations, quick.rbf, quick.grid_step, quick.layers) == (3, False, 18, ("blocks.1", "head"))
    default = study.settings_from_args(parse([]))
    assert default == StudySettings() and len(default.layers) >= 5 and default.grid_n == 21


@pytest.mark.parametrize("bad", [dict(layers=()), dict(grid_step=10), dict(generations=0), dict(population=2),
                                 dict(distance="lpips"), dict(rbf_levels=(0.5, 1.5))])
def test_bad_settings_rejected(bad: dict) -> None:
    with pytest.raises(StudyError):
        StudySettings(**bad)


def test_unknown_layer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"blocks.99.*blocks.N\[.part\]"):
        study.run_study(StudySettings(layers=("blocks.99",)), tmp_path, progress=False)


def test_a_refused_study_leaves_no_folder(tmp_path: Path, capsys) -> None:
    from server.cli import main

    out = tmp_path / "study"
    assert main(["analyze", "study", *TINY, "--layers", "blocks.1", "blocks.99", "--out", str(out)]) == 2
    assert "unknown or non-spatial layers ['blocks.99']" in capsys.readouterr().err
    assert not out.exists()  # it left out/maps/


def test_a_rerun_with_other_settings_leaves_only_its_own_maps(result: tuple[Path, dict], tmp_path: Path,
                                                              capsys) -> None:
    """Into a folder of an earlier study: maps/ then holds this study's maps only, as study.json lists them; a
    probe not run says so."""
    import shutil

    out = tmp_path / "again"
    shutil.copytree(result[0], out)
    args = parse([*TINY, "--layers", "blocks.1", "--generations", "5", "--no-rbf", "--out", str(out)])
    assert args.func(args) == 0
    doc = json.loads((out / "study.json").read_text())
    assert [(u["layer"], u["channel"]) for u in doc["units"]] == [("blocks.1", result[1]["units"][0]["channel"])]
    assert sorted(p.name for p in (out / "maps").iterdir()) == [f"blocks.1_ch{doc['units'][0]['channel']}.png"]
    assert (out / "maps" / f"blocks.1_ch{doc['units'][0]['channel']}.png").read_bytes() != (
        result[0] / "maps" / f"blocks.1_ch{doc['units'][0]['channel']}.png").read_bytes()  # redrawn: 5 generations
    report = (out / "study.md").read_text()
    assert "| RBF max/min (0.6-0.9) | → 1 | — | — | 0 | not run (--no-rbf) |" in report
    assert "| RBF global/local | > 1 | — | — | 0 | not run (--no-rbf) |" in report
    assert "not run (--no-rbf)" in capsys.readouterr().out


@pytest.mark.parametrize("device", ["cuda:99", "bogus"])
def test_a_device_this_torch_cannot_use_is_one_line(tmp_path: Path, capsys, device: str) -> None:
    from server.cli import main

    argv = ["analyze", "study", *TINY, "--out", str(tmp_path), "--device", device]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"actmax analyze: device '{device}' (--device on the command line, device= in Python): ") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # refused before any work


def test_unit_activation_matches_scorer() -> None:
    import generators
    from rig_client.cnn import load_efficientnet_lite0
    from rig_client.units import Unit, UnitScorer

    model = load_efficientnet_lite0()
    generator = generators.load("dcgan-faces", device="cpu")
    rf = study.unit_rf(model, "blocks.2", (24, 56, 56))
    assert rf.size == 19 and (rf.x, rf.y) == (112.5, 112.5)
    scorer = UnitScorer([Unit("blocks.2", 5)], model=model, rf=rf)
    codes = generator.sample(3, np.random.default_rng(0))
    z = torch.as_tensor(codes, dtype=torch.float32).requires_grad_()
    act = study.unit_activation(scorer, generator.forward)(z)
    act.sum().backward()
    expected = np.maximum(scorer.score(generator.generate(codes))[:, 0], 0)
    assert act.detach().numpy() == pytest.approx(expected, abs=1e-3)
    assert torch.isfinite(z.grad).all()


def test_study_resumes_from_its_unit_files(result: tuple[Path, dict]) -> None:
    """Rerunning into the folder reruns only the unit whose Parquet file is missing, with the same row."""
    from insilico import storage

    out, doc = result
    files = sorted(storage.runs_dir(out).glob("*.parquet"))
    assert len(files) == len(doc["units"]) == 2
    kept = {p.name: p.stat().st_mtime_ns for p in files[1:]}
    files[0].unlink()
    args = parse([*TINY, "--out", str(out)])
    rows, _ = study.run_study(study.settings_from_args(args), out, processes=False, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in files[1:]} == kept  # not rerun
    assert files[0].is_file()
    again = json.loads((out / "study.json").read_text())

    def results(units: list[dict]) -> list[dict]:
        return [{k: v for k, v in u.items() if not k.endswith("_s")} for u in units]  # not the wall times

    assert results(again["units"]) == results(doc["units"])  # same seeds, same results
    assert len(rows) == 2


def test_the_depth_figure_plots_what_its_rho_is_of() -> None:
    """The RBF max/min panel plots |ratio − 1|, the values its Spearman ρ (in the title) is computed on."""
    from scipy.stats import spearmanr

    from analysis.landscape import summarize

    ratios = [3.0, 0.2, 1.5, 1.2, 0.9, 1.05]  # |ratio − 1| falls with depth, the ratio itself does not
    rows = [{"layer": f"l{i // 2}", "depth": i // 2, "max_min_ratio": r} for i, r in enumerate(ratios)]
    summary = summarize(rows, ["l0", "l1", "l2"])
    fig = study.depth_figure(summary, rows)
    (ax,) = [a for a in fig.axes if a.get_title().startswith("RBF max/min")]
    x, y = np.concatenate([line.get_xdata() for line in ax.lines[:3]]), np.concatenate(
        [line.get_ydata() for line in ax.lines[:3]])
    np.testing.assert_allclose(np.sort(y), np.sort(np.abs(np.array(ratios) - 1)))
    rho = summary["spearman"]["max_min_ratio"]["rho"]
    assert spearmanr(x, y)[0] == pytest.approx(rho) and f"ρ = {rho:.2f}" in ax.get_title()
    assert "units" in fig.get_suptitle()


def test_the_depth_figure_says_which_probe_was_not_run() -> None:
    from analysis.landscape import summarize

    rows = [{"layer": f"l{d}", "depth": d, "auc_line": float(d)} for d in range(3)]
    summary = summarize(rows, ["l0", "l1", "l2"], not_run=dict.fromkeys(study.RBF_STATISTICS, "--no-rbf"))
    fig = study.depth_figure(summary, rows)
    for title in ("RBF max/min", "RBF global/local"):
        (ax,) = [a for a in fig.axes if a.get_title().startswith(title)]
        assert [t.get_text() for t in ax.texts] == ["not run (--no-rbf)"] and "ρ undefined" in ax.get_title()
    (ax,) = [a for a in fig.axes if a.get_title().startswith("axis ratio")]
    assert [t.get_text() for t in ax.texts] == ["undefined at every unit"]


def test_no_progress_also_silences_the_screening_bar(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`--no-progress` (as in a batch job's log) leaves no screening bar behind; its units are screened all the same."""
    settings = study.settings_from_args(parse([*TINY, "--out", str(tmp_path)]))
    layers, tasks = study.unit_tasks(settings, tmp_path, progress=False)
    assert layers == ["blocks.1", "blocks.2"] and len(tasks) == 2 and (tmp_path / "units.json").is_file()
    assert "screening" not in capfd.readouterr().err


def test_a_probe_that_never_wakes_the_unit_is_nan_with_a_note() -> None:
    """blocks.2 ch13 (seed 3's first unit): two Adam steps from the global start leave every max_abinit sample
    at activation 0, a constant f/f* whose distance fit failed the unit (LinAlgError in np.polyfit)."""
    from rig_client.units import ReceptiveField, Unit, UnitScorer

    settings = StudySettings(layers=("blocks.2",), rbf_n=4, rbf_levels=(0.6, 0.9), rbf_steps=1)
    model, generator, distance = study._loaded(settings)
    scorer = UnitScorer([Unit("blocks.2", 13, 28, 28)], model=model, rf=ReceptiveField(19, 112.5, 112.5))
    evo = study.evolve_unit(generator, scorer, generations=10, population=20, seed=300_009)
    out = study.rbf_statistics(scorer, distance, generator, evo.best_code, settings, seed=300_009)
    dead = out["rbf"]["max_abinit"]
    assert dead["level_mean_fraction"] == [0.0, 0.0]  # the degenerate probe this test is about
    assert math.isnan(dead["slope"]) and math.isnan(out["global_local_ratio"])
    assert "max_abinit: no distance fit, all 8 samples at f/f* = 0" in out["rbf_note"]
    assert np.isfinite(out["rbf"]["min"]["level_mean_distance"]).all()


def test_the_report_says_why_rbf_statistics_are_undefined(result: tuple[Path, dict]) -> None:
    from analysis.landscape import summarize

    out, doc = result
    report = (out / "study.md").read_text()
    for u in doc["units"]:  # an undefined RBF statistic has a note, and study.md lists every note
        if u["max_min_ratio"] is None or u["global_local_ratio"] is None:
            assert "undefined" in u["rbf_note"]
        if u["rbf_note"] is not None:
            assert f"- {u['layer']} ch{u['channel']}: {u['rbf_note']}" in report
    rows = [{"layer": "l0", "channel": 1, "depth": 0, "max_min_ratio": 1.2, "global_local_ratio": 1.5},
            {"layer": "l0", "channel": 2, "depth": 0, "max_min_ratio": float("nan"),
             "global_local_ratio": float("nan"), "rbf_note": "no RBF probe: the evolution's best response 0 is not "
             "above 0"}]
    report = study.markdown_report(summarize(rows, ["l0"]), StudySettings(layers=("l0",)), rows)
    assert "| RBF max/min (0.6-0.9) | 1.2 (1) |" in report
    assert "- l0 ch2: no RBF probe: the evolution's best response 0 is not above 0" in report
    assert "l0 ch1:" not in report
    assert "RBF probe notes" not in study.markdown_report(summarize(rows[:1], ["l0"]), StudySettings(layers=("l0",)),
                                                    rows[:1])
