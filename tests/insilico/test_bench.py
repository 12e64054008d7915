"""The benchmark grid, per-run storage, the Dask runner (kill and resume) and the CLI, on an analytic objective."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from insilico import storage
from insilico.bench import BenchError, cli_main, runner
from insilico.bench.cli import weights_path
from insilico.bench.grid import UnitSpec, build_grid
from insilico.bench.runner import QuadraticBackend, execute_run, run_grid
from insilico.runner import Outcome

ROOT = Path(__file__).resolve().parents[2]
UNITS = [UnitSpec("q0", 0), UnitSpec("q1", 3)]


@dataclass(frozen=True)
class SlowQuadraticBackend(QuadraticBackend):
    """The analytic objective, slowed down so a benchmark can be killed half way."""

    delay_s: float = 0.0

    def load(self) -> runner.Loaded:
        loaded = super().load()
        base, delay = loaded.scorer, self.delay_s

        def slow_scorer(unit: UnitSpec) -> Any:
            unit_scorer = base(unit)

            def score(images: Any) -> np.ndarray:
                time.sleep(delay)
                return unit_scorer.score(images)
            return score
        loaded.scorer = slow_scorer
        return loaded


@dataclass(frozen=True)
class FailingBackend(QuadraticBackend):
    """The analytic objective, except that units of layer "bad" raise."""

    def load(self) -> runner.Loaded:
        loaded = super().load()
        base = loaded.scorer

        def scorer(unit: UnitSpec) -> Any:
            if unit.layer == "bad":
                raise RuntimeError("unit bad:0 cannot be scored")
            return base(unit)
        loaded.scorer = scorer
        return loaded


def tiny_grid(backend: runner.Backend, generations: int = 3) -> list:
    """2 optimizers x 2 units x 1 noise level x 2 repeats."""
    return build_grid(["cma-sigma1", "ga"], UNITS, [0.0], reps=2, n_generations=generations, population=12,
                      backend=backend.key)


def interrupted_main(out_dir: str) -> None:
    """Run in a subprocess that the test kills half way."""
    backend = SlowQuadraticBackend(delay_s=0.25)
    run_grid(tiny_grid(backend), backend, out_dir, n_workers=1, processes=False, progress=False)


def ctrl_c_main(out_dir: str) -> None:
    """Run in a subprocess that the test sends SIGINT, as Ctrl-C does: to its whole process group."""
    backend = SlowQuadraticBackend(delay_s=0.25)
    try:
        run_grid(tiny_grid(backend), backend, out_dir, n_workers=1, processes=True, progress=False)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # as `actmax` does


def test_grid_ids_are_deterministic_and_seeds_shared_across_optimizers() -> None:
    specs = tiny_grid(QuadraticBackend())
    again = tiny_grid(QuadraticBackend())
    assert len(specs) == 8 and len({s.run_id for s in specs}) == 8
    assert [s.run_id for s in specs] == [s.run_id for s in again]
    by_cell: dict[tuple, set[int]] = {}
    for s in specs:
        by_cell.setdefault((s.unit, s.noise, s.rep), set()).add(s.seed)
    assert all(len(seeds) == 1 for seeds in by_cell.values())
    assert len({next(iter(v)) for v in by_cell.values()}) == 4
    assert [s.rep for s in specs] == [0] * 4 + [1] * 4  # repeat-major
    longer = tiny_grid(QuadraticBackend(), generations=4)
    assert not {s.run_id for s in longer} & {s.run_id for s in specs}
    with pytest.raises(BenchError, match="unknown optimizer"):
        build_grid(["cmaes"], UNITS, [0.0], 1, n_generations=2, population=12, backend="x")
    with pytest.raises(BenchError, match="noise"):
        build_grid(["cma-sigma1"], UNITS, [-0.2], 1, n_generations=2, population=12, backend="x")


def test_execute_run_writes_one_atomic_file_and_loads_backend_once(tmp_path: Path, monkeypatch) -> None:
    loads = []
    monkeypatch.setattr(runner, "_LOADED", {})
    original = QuadraticBackend.load
    monkeypatch.setattr(QuadraticBackend, "load", lambda self: loads.append(1) or original(self))
    specs = tiny_grid(QuadraticBackend())[:3]
    rows = [execute_run(s, QuadraticBackend(), str(tmp_path)) for s in specs]
    assert len(loads) == 1
    assert storage.completed_ids(tmp_path) == {s.run_id for s in specs}
    results, traces = storage.load_runs(tmp_path)
    assert len(results) == 3 and len(traces) == 3 * 3
    row = results.set_index("run_id").loc[rows[0]["run_id"]]
    assert row["clean_max"] == rows[0]["clean_max"] >= row["cum_clean_max_500"]
    assert row["n_evaluations"] == 1 + 2 * 12  # cma: single first image, then 2 x 12
    for col in ["optimizer", "layer", "unit", "channel", "noise", "rep", "seed", "clean_max", "noisy_max",
                "cum_clean_max_500", "cum_clean_max_1000", "cum_clean_max_3000", "final_code_norm",
                "wall_s", "cond_C"]:
        assert col in results
    trace = traces[traces["run_id"] == rows[0]["run_id"]]
    assert list(trace["generation"]) == [0, 1, 2] and trace["cum_clean_max"].iloc[-1] == row["clean_max"]
    (storage.runs_dir(tmp_path) / "x.parquet.tmp-1-abc").write_bytes(b"partial")
    assert storage.remove_partial(tmp_path) == 1


def await_two_runs(proc: subprocess.Popen, out: Path) -> None:
    """Until the benchmark ``proc`` has saved two runs in ``out`` (its stderr's tail if it ends first)."""
    deadline = time.monotonic() + 60
    while len(storage.completed_ids(out)) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no results appeared within 60 s"
        time.sleep(0.05)


def test_interrupted_benchmark_resumes_with_every_run_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tests.insilico.test_bench import interrupted_main; interrupted_main({str(out)!r})"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await_two_runs(proc, out)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in storage.runs_dir(out).glob("*.parquet")}
    assert 2 <= len(before) < 8, "the benchmark was not interrupted half way"

    backend = SlowQuadraticBackend(delay_s=0.0)
    specs = tiny_grid(SlowQuadraticBackend(delay_s=0.25))  # the same grid: the delay is not in the run id
    assert {s.run_id for s in specs} == {s.run_id for s in tiny_grid(backend)}
    outcome = run_grid(specs, backend, out, n_workers=2, processes=False, progress=False)
    assert outcome == Outcome(total=8, skipped=len(before), completed=8 - len(before))
    files = sorted(p.name for p in storage.runs_dir(out).iterdir())
    assert files == sorted(f"{s.run_id}.parquet" for s in specs)  # each once, no temporary files
    assert all(storage.runs_dir(out).joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    results_path, traces_path = storage.consolidate(out)
    results = pd.read_parquet(results_path)
    assert sorted(results["run_id"]) == sorted(s.run_id for s in specs)
    assert len(pd.read_parquet(traces_path)) == 8 * 3
    assert run_grid(specs, backend, out, progress=False) == Outcome(total=8, skipped=8)


def test_ctrl_c_says_how_many_runs_are_saved_and_nothing_else(tmp_path: Path) -> None:
    """Ctrl-C reaches the driver and its worker processes: one line from actmax, no worker traceback, no Dask
    shutdown warnings ("will be recomputed elsewhere" about a run that is saved, "still alive, killing")."""
    out = tmp_path / "bench"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tests.insilico.test_bench import ctrl_c_main; ctrl_c_main({str(out)!r})"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored, as in a terminal
    try:
        await_two_runs(proc, out)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    saved = len(storage.completed_ids(out))
    assert proc.returncode == 130 and saved < 8
    assert err.decode() == (f"interrupted: {saved} of 8 runs saved in {out}; run the same command again to "
                            "resume\n")


def test_process_workers_run_tasks_and_report_failures(tmp_path: Path) -> None:
    backend = FailingBackend(dim=6)
    specs = tiny_grid(backend, generations=2)[:2]
    bad = build_grid(["ga"], [UnitSpec("bad", 0)], [0.0], 1, n_generations=2, population=12, backend=backend.key)
    outcome = run_grid(specs + bad, backend, tmp_path, n_workers=1, processes=True, progress=False)
    assert outcome.completed == 2 and list(outcome.failed) == [bad[0].run_id]
    assert "cannot be scored" in outcome.failed[bad[0].run_id]
    assert storage.completed_ids(tmp_path) == {s.run_id for s in specs}


def test_cli_runs_resumes_and_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["--backend", "quadratic", "--out", str(out), "--optimizers", "cma-sigma1,ga,sphere-cma-r10",
            "--layers", "a,b", "--units-per-layer", "2", "--noise", "0,0.5", "--reps", "2",
            "--generations", "4", "--population", "8", "--threads", "--no-progress"]
    assert cli_main([*argv, "--dry-run"]) == 0
    assert "48 runs (0 already" in capsys.readouterr().err
    assert cli_main(argv) == 0
    assert "48 runs completed" in capsys.readouterr().err
    assert cli_main(argv) == 0
    assert "0 runs completed, 48 skipped" in capsys.readouterr().err
    assert cli_main(["report", str(out)]) == 0
    report = out / "report" / "report.md"
    assert report.is_file() and (out / "report" / "score_vs_generation.png").is_file()
    assert "## cma-sigma1 vs ga" in report.read_text()
    assert cli_main([*argv, "--optimizers", "cmaes"]) == 2
    assert "unknown optimizer" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["hess-cma", "fixed-design"])
def test_optimizers_that_need_more_than_defaults_are_refused_up_front(tmp_path: Path, capsys, name) -> None:
    argv = ["--backend", "quadratic", "--quick", "--out", str(tmp_path), "--population", "8", "--optimizers", name]
    assert cli_main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"optimizer {name} cannot run in a benchmark" in err and "--population" in err
    assert cli_main([*argv[:-1], "bogus"]) == 2
    listed = capsys.readouterr().err.split("choose from ")[1]
    assert "cma-sigma1" in listed and "hess-cma" not in listed and "fixed-design" not in listed


def test_when_every_run_fails_the_failures_are_listed_and_the_status_is_1(tmp_path: Path, capsys,
                                                                         monkeypatch) -> None:
    def unscorable(self, unit):
        raise RuntimeError(f"unit {unit.label} cannot be scored")

    monkeypatch.setattr(runner._QuadraticLoaded, "scorer", unscorable)  # thread workers: this process
    argv = ["--backend", "quadratic", "--quick", "--out", str(tmp_path), "--generations", "2", "--population", "8",
            "--optimizers", "ga", "--layers", "a", "--noise", "0", "--threads", "--no-progress"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "0 runs completed, 0 skipped (already done), 1 failed; no results" in err
    assert "failed ga-" in err and "unit a:0 cannot be scored" in err and "no run files" not in err


def test_an_unreachable_scheduler_is_named(tmp_path: Path, capsys) -> None:
    import dask

    from server.launch import free_port

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    argv = ["--backend", "quadratic", "--quick", "--out", str(tmp_path), "--generations", "2", "--population", "8",
            "--scheduler", address, "--no-progress"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--scheduler {address}: no Dask scheduler is reachable at that address" in err
    assert "paths" not in err


def test_help_gives_the_presets_values(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "--quick blocks.2,blocks.4; --full blocks.2,blocks.4,blocks.7,blocks.10,blocks.15,head" in out
    assert "(default from the preset: 2; --quick 1; --full 10)" in out and "--quick 0.0,0.5" in out
    assert "(default from the preset: 1; --quick 1; --full 5)" in out and "default 75 in every preset" in out


def test_cnn_backend_runs_a_real_dcgan_unit(tmp_path: Path) -> None:
    """The real pipeline, briefly: DCGAN faces -> EfficientNet-Lite0 blocks.2 pre-activation."""
    backend = runner.CNNBackend()
    spec = build_grid(["sphere-cma-r10"], [UnitSpec("blocks.2", 21)], [0.2], 1, n_generations=2, population=6,
                      backend=backend.key)[0]
    row = execute_run(spec, backend, str(tmp_path))
    assert row["n_evaluations"] == 6 + 7 and np.isfinite(row["clean_max"])
    assert row["final_code_norm"] == pytest.approx(10.0)  # SphereCMA stays on the prior shell
    assert runner._loaded(backend).scorer(spec.unit) is runner._loaded(backend).scorer(spec.unit)


def test_generator_weights_come_from_the_servers_weights_folder_or_weights(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """As `actmax serve`: ACTMAX_WEIGHTS_DIR/<generator>/, or --weights; on every worker too (unreadable ones here)."""
    from generators import GeneratorError

    folder = tmp_path / "weights" / "dcgan-faces"
    folder.mkdir(parents=True)
    (folder / "weights.tar").write_bytes(b"not weights")
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", str(tmp_path / "weights"))
    argv = ["--out", str(tmp_path / "out"), "--layers", "blocks.2", "--units-per-layer", "1", "--dry-run"]
    assert cli_main(argv) == 2
    assert f"from {folder / 'weights.tar'}" in capsys.readouterr().err
    other = tmp_path / "other.tar"
    other.write_bytes(b"neither")
    assert cli_main([*argv, "--weights", str(other)]) == 2
    assert f"from {other}" in capsys.readouterr().err
    with pytest.raises(GeneratorError, match=f"from {other}"):
        runner.CNNBackend(weights=str(other)).load()


def test_runs_with_other_weights_are_other_runs_and_an_empty_weights_dir_is_unset(tmp_path: Path, monkeypatch,
                                                                                   capsys) -> None:
    """A benchmark rerun into its folder with other --weights used to find every run id done and skip them all."""
    def run_ids(weights: str | None) -> set[str]:
        key = runner.CNNBackend(weights=weights).key
        return {s.run_id for s in build_grid(["ga"], UNITS, [0.0], 2, n_generations=2, population=12, backend=key)}

    assert run_ids(None).isdisjoint(run_ids("/w/a.tar")) and run_ids("/w/a.tar").isdisjoint(run_ids("/w/b.tar"))
    assert run_ids("/w/a.tar") == run_ids("/w/a.tar")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dcgan-faces").mkdir()  # a folder named like the generator where the command runs
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", "")
    assert weights_path("dcgan-faces", None) is None  # the standard locations, as `actmax serve` (it was ./dcgan-faces)


def test_dask_keeps_its_info_lines_to_itself(tmp_path: Path, caplog) -> None:
    """`actmax bench` logs at INFO; Dask's start/stop lines (and a shutdown race's traceback) are not shown."""
    import logging

    backend = QuadraticBackend(dim=4)
    caplog.set_level(logging.INFO)
    outcome = run_grid(tiny_grid(backend, generations=2)[:1], backend, tmp_path, n_workers=1, processes=False,
                       progress=False)
    assert outcome.completed == 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("distributed")] == []


def test_the_bar_names_the_running_task_instead_of_an_eta_when_asked(tmp_path: Path, capsys) -> None:
    """The study's units differ tenfold in cost, so its bar says which unit runs rather than a mean-rate ETA."""
    from insilico.runner import run_tasks

    backend = QuadraticBackend(dim=4)
    specs = tiny_grid(backend, generations=2)[:2]
    outcome = run_tasks(specs, execute_run, tmp_path, desc="demo", n_workers=1, processes=False,
                        describe=lambda s: f"unit {s.unit.layer}", backend=backend)
    assert outcome.completed == 2
    shown = capsys.readouterr().err
    assert f"running unit {specs[0].unit.layer}" in shown and "<" not in shown  # tqdm writes an ETA as <MM:SS


@dataclass(frozen=True)
class EnvTask:
    run_id: str = "env"


def write_malloc_trim(task: EnvTask, out_dir: str) -> None:
    storage.write_run(out_dir, {"run_id": task.run_id, "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")}, {})


def test_process_workers_keep_the_c_librarys_malloc_trim_threshold(tmp_path: Path) -> None:
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 made torch page-fault ten times as often (half a unit's time in the kernel)."""
    from insilico.runner import run_tasks

    before = os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")  # Dask sets it in the spawning process too
    assert run_tasks([EnvTask()], write_malloc_trim, tmp_path, desc="env", n_workers=1, progress=False).completed == 1
    written = pd.read_parquet(storage.runs_dir(tmp_path) / "env.parquet")
    assert written["trim"].tolist() == [before] and os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset") == before


def test_two_grids_in_one_folder_are_reported_apart(tmp_path: Path, capsys) -> None:
    """A rerun with other --generations into the same folder adds a second grid: the report keeps them apart."""
    from rig_client.version import package_version

    out = tmp_path / "mixed"
    argv = ["--backend", "quadratic", "--out", str(out), "--optimizers", "cma-sigma1,ga", "--layers", "a,b",
            "--units-per-layer", "1", "--noise", "0,0.5", "--reps", "2", "--population", "8", "--threads",
            "--no-progress"]
    assert cli_main([*argv, "--generations", "2"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert cli_main([*argv, "--generations", "3"]) == 0
    assert (f"note: {out} holds runs of 2 grids (2 generations × 8 images, backend `quadratic-10`; 3 generations"
            in capsys.readouterr().err)
    assert cli_main(["report", str(out)]) == 0
    text = (out / "report" / "report.md").read_text()
    assert "runs of 2 grids" in text and "32 runs" not in text
    for grid, generations in ((1, 2), (2, 3)):
        section = text.split(f"## Grid {grid}: ")[1].split("## Grid ")[0]
        assert section.startswith(f"{generations} generations × 8 images")
        assert (f"16 runs; 2 analytic stand-in units labelled a, b (backend `quadratic-10`: no network); noise ε ∈ "
                f"{{0, 0.5}}; {generations} generations × 8 images; 2 repeats per (optimizer, unit, noise), seed 0; "
                f"actmax {package_version()};") in section
        cma_ga = section.split("### cma-sigma1 vs ga")[1].split("###")[0]
        all_row = next(line for line in cma_ga.splitlines() if line.startswith("| all |"))
        assert all_row.split(" | ")[4] == "14"  # df = 8 + 8 - 2 within the grid (pooled with the other: 30)
    results = pd.read_parquet(out / "results.parquet")
    assert sorted(results.groupby("n_generations").size().items()) == [(2, 16), (3, 16)]


@pytest.mark.parametrize("change, message", [
    (["--reps", "0"], "--reps must be >= 1, got 0"),
    (["--generations", "-3"], "--generations must be >= 1, got -3"),
    (["--population", "1"], "--population must be from 2 to 500, got 1"),
    (["--population", "999999999999"], "--population must be from 2 to 500, got 999999999999"),  # out of memory
    (["--noise", "-0.5"], "--noise levels must be >= 0, got [-0.5]"),
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--units-per-layer", "0"], "--units-per-layer must be >= 1, got 0"),
    (["--layers", "blocks.99"], "unknown or non-spatial layers ['blocks.99']; use stem, blocks.N[.part] (N = 0..15,"),
    (["--layers", "blocks.2,blocks.2"], "--layers must name at least one layer, each once"),
])
def test_bad_settings_are_refused_before_units_are_screened_or_files_written(tmp_path: Path, capsys, change,
                                                                            message) -> None:
    out = tmp_path / "out"
    assert cli_main(["--quick", "--out", str(out), "--dry-run", *change]) == 2
    err = capsys.readouterr().err
    assert err.startswith("actmax bench: error: ") and message in err and err.count("\n") == 1
    assert "screen_units" not in err
    assert not out.exists()


def test_screening_names_the_spatial_layers_not_an_internal_function() -> None:
    from rig_client import RigError
    from rig_client.cnn import load_efficientnet_lite0
    from rig_client.units import screen_units

    model = load_efficientnet_lite0()
    with pytest.raises(RigError) as refused:
        screen_units(None, "blocks.99", model=model)  # refused before the generator is used
    assert str(refused.value) == ("screening needs a spatial layer: stem, blocks.N[.part] (N = 0..15, part: "
                                  "expand, depthwise or project; block 0 has no expand) or head; got 'blocks.99' "
                                  "(no such layer)")
    with pytest.raises(RigError, match=r"got 'fc' \(no spatial map\)$"):
        screen_units(None, "fc", model=model)


def test_spaces_around_listed_names_are_ignored(tmp_path: Path, capsys) -> None:
    argv = ["--backend", "quadratic", "--quick", "--out", str(tmp_path), "--optimizers", "ga, cma-sigma1",
            "--layers", "a, b", "--dry-run"]
    assert cli_main(argv) == 0
    assert "8 runs (0 already" in capsys.readouterr().err
