"""`actmax bench` (run or resume a benchmark grid on Dask) and `actmax bench report`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insilico.bench.errors import BenchError
from insilico.evolve import N_GENERATIONS, POPULATION
from rig_client.connection import add_weights_argument, non_negative_int

if TYPE_CHECKING:
    from insilico.bench.grid import UnitSpec
    from insilico.bench.runner import CNNBackend

#: EfficientNet-Lite0 depths (pre-activation outputs of rig_client.cnn), one per stage from the second on:
#: 24 ch at 56x56, 40 at 28x28, 80 at 14x14, 112 at 14x14, 320 at 7x7, then the 1280-ch head at 7x7.
DEPTHS = ["blocks.2", "blocks.4", "blocks.7", "blocks.10", "blocks.15", "head"]
OPTIMIZERS = ["ga", "cma-sigma1", "pycma-sigma1", "pycma-diag", "sphere-cma-r10"]
NOISES = [0.0, 0.2, 0.5]
#: Grid sizes (docs/benchmark.md, "Cost"): `full` is the published scale (~100 CPU core-hours); the
#: default needs ~10,000 CPU-seconds (~1.5 h on 2 idle cores); `quick` ~200 CPU-seconds.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"optimizers": ["ga", "cma-sigma1", "sphere-cma-r10"], "layers": ["blocks.2", "blocks.4"],
              "units_per_layer": 1, "noise": [0.0, 0.5], "reps": 1, "generations": N_GENERATIONS},
    "default": {"optimizers": OPTIMIZERS, "layers": DEPTHS[:5], "units_per_layer": 2,
                "noise": NOISES, "reps": 1, "generations": N_GENERATIONS},
    "full": {"optimizers": OPTIMIZERS, "layers": DEPTHS, "units_per_layer": 10, "noise": NOISES,
             "reps": 5, "generations": N_GENERATIONS},
}
#: Random generator samples a unit is screened on (rig_client.units.screen_units).
SCREEN_SAMPLES = 64


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def _from_preset(name: str) -> str:
    """Help text: the value of setting `name` in each preset."""
    def shown(value: Any) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    default, quick, full = (shown(PRESETS[preset][name]) for preset in ("default", "quick", "full"))
    if default == quick == full:
        return f"default {default} in every preset"
    return f"default from the preset: {default}; --quick {quick}; --full {full}"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `bench` options and the `report` subcommand to `parser`."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="preset", const="quick",
                      help="a small grid for a first look (minutes on 2 cores)")
    size.add_argument("--full", action="store_const", dest="preset", const="full",
                      help=f"the published scale: {len(DEPTHS)} depths x 10 units x 3 noise levels x 5 repeats")
    parser.set_defaults(preset="default")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/<preset>); "
                        "rerunning into it resumes")
    parser.add_argument("--optimizers", type=_csv(str),
                        help="comma-separated registered optimizer names (`actmax bench --optimizers x` lists them; "
                        f"{_from_preset('optimizers')})")
    parser.add_argument("--layers", type=_csv(str),
                        help=f"comma-separated EfficientNet-Lite0 layer names ({_from_preset('layers')})")
    parser.add_argument("--units-per-layer", type=int,
                        help=f"units per layer, pre-screened for response ({_from_preset('units_per_layer')})")
    parser.add_argument("--noise", type=_csv(float),
                        help=f"comma-separated noise levels eps ({_from_preset('noise')})")
    parser.add_argument("--reps", type=int, help=f"repeats per (optimizer, unit, noise) ({_from_preset('reps')})")
    parser.add_argument("--generations", type=int,
                        help=f"generations per run ({_from_preset('generations')}, as published)")
    parser.add_argument("--population", type=int, default=POPULATION, help="images per generation (default 40)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="base seed of the grid (default 0)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (e.g. from dask-jobqueue); "
                        "default: a LocalCluster on this machine")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--threads", action="store_true", help="LocalCluster workers as threads, not processes")
    parser.add_argument("--device", default="cpu", help="torch device for generator and network (default cpu)")
    parser.add_argument("--generator", default="dcgan-faces", help="generator name (default dcgan-faces)")
    add_weights_argument(parser, "; on every worker")
    parser.add_argument("--backend", choices=["cnn", "quadratic"], default="cnn",
                        help="cnn: generator + EfficientNet-Lite0 units; quadratic: an analytic objective "
                             "for checking a cluster without weights")
    parser.add_argument("--dry-run", action="store_true", help="print the grid size and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub = parser.add_subparsers(dest="bench_command", metavar="{report}")
    report = sub.add_parser("report", help="Markdown + PNG report of a results directory: the optimizer comparison "
                            "tables, beside the numbers Wang & Ponce (GECCO 2022) published")
    report.add_argument("results_dir", type=Path, nargs="?", default=Path("bench/results/default"),
                        help="results directory (default bench/results/default)")
    report.add_argument("--out", dest="report_out", type=Path, metavar="DIR", help="output directory (default RESULTS_DIR/report)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `bench` on the `actmax` subparsers; the parsed namespace's `func(args)` runs it."""
    parser = subparsers.add_parser("bench", help="in-silico optimizer benchmark on Dask, and its report",
                                   description=__doc__)
    configure(parser)
    parser.set_defaults(func=run_from_args)
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `actmax bench ...` given the arguments after `bench`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="actmax bench", description=__doc__)
    configure(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the parsed `bench` command; errors become one line on stderr and exit status 2."""
    from analysis.bench_report import ReportError
    from generators import GeneratorError
    from insilico import InsilicoError
    from optimizers import OptimizerError
    from rig_client import RigError

    try:
        return _report(args) if args.bench_command == "report" else _run(args)
    except (InsilicoError, ReportError, OptimizerError, GeneratorError, RigError) as exc:
        print(f"actmax bench: error: {exc}", file=sys.stderr)
        return 2


def _setting(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    return PRESETS[args.preset][name] if value is None else value


def _run(args: argparse.Namespace) -> int:
    from insilico import check_layers, storage
    from insilico.bench.grid import UnitSpec, build_grid, check_settings
    from insilico.bench.runner import CNNBackend, QuadraticBackend, run_grid

    out = args.out or Path("bench/results") / args.preset
    layers, per_layer = _setting(args, "layers"), _setting(args, "units_per_layer")
    # Every setting is checked before the units are screened (seconds, and units.json written).
    for flag, value in (("--units-per-layer", per_layer), ("--workers", args.workers)):
        if value < 1:
            raise BenchError(f"{flag} must be >= 1, got {value}")
    if not layers or len(set(layers)) != len(layers):
        raise BenchError(f"--layers must name at least one layer, each once; got {layers}")
    check_settings(_setting(args, "optimizers"), _setting(args, "noise"), _setting(args, "reps"),
                   _setting(args, "generations"), args.population)
    if args.backend == "quadratic":
        backend = QuadraticBackend()
        units = [UnitSpec(layer, c) for layer in layers for c in range(per_layer)]
    else:
        check_layers(layers, BenchError)
        backend = CNNBackend(args.generator, args.device, weights_path(args.generator, args.weights))
        units = screened_units(out, backend, layers, per_layer, args.seed)
    specs = build_grid(_setting(args, "optimizers"), units, _setting(args, "noise"), _setting(args, "reps"),
                       n_generations=_setting(args, "generations"), population=args.population,
                       backend=backend.key, base_seed=args.seed)
    done = len(storage.completed_ids(out) & {s.run_id for s in specs})
    print(f"{len(specs)} runs ({done} already in {out}); {_count(len(units), 'unit')} in "
          f"{_count(len(layers), 'layer')}", file=sys.stderr)
    if args.dry_run:
        return 0
    outcome = run_grid(specs, backend, out, scheduler=args.scheduler, n_workers=args.workers,
                       processes=not args.threads, progress=not args.no_progress)
    where = f"results in {storage.consolidate(out)[0]}" if storage.completed_ids(out) else "no results"
    print(f"{outcome.completed} runs completed, {outcome.skipped} skipped (already done), "
          f"{len(outcome.failed)} failed; {where}", file=sys.stderr)
    if storage.completed_ids(out) and len(grids := _grids(out)) > 1:
        print(f"note: {out} holds runs of {len(grids)} grids ({'; '.join(grids)}); `actmax bench report` reports "
              "each on its own; give each grid its own --out to keep them apart", file=sys.stderr)
    for run_id, error in sorted(outcome.failed.items())[:10]:
        print(f"  failed {run_id}: {error}", file=sys.stderr)
    if len(outcome.failed) > 10:
        print(f"  ... and {len(outcome.failed) - 10} more; rerun to retry them", file=sys.stderr)
    return 1 if outcome.failed else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _grids(out: Path) -> list[str]:
    """The grids (`analysis.bench_report.split_grids`) of the consolidated results in `out`, as labels."""
    import pandas as pd

    from analysis.bench_report import grid_label, split_grids

    return [grid_label(grid) for grid, _ in split_grids(pd.read_parquet(out / "results.parquet"))]


def weights_path(generator: str, weights: str | None) -> str | None:
    """`--weights`, else ACTMAX_WEIGHTS_DIR/<generator>/ when it exists: where `actmax serve` looks (server.settings
    reads the variable for the server; the benchmark is a program of its own)."""
    import os

    import generators

    source = generators.weights_source(generator, os.environ.get("ACTMAX_WEIGHTS_DIR"), weights)
    return None if source is None else str(source)


def screened_units(out: Path, backend: CNNBackend, layers: list[str], per_layer: int, seed: int) -> list[UnitSpec]:
    """`per_layer` units per layer that respond most to random samples of the backend's generator, screened once per
    results directory and listed round robin over layers."""
    from insilico import storage
    from insilico.bench.grid import UnitSpec  # noqa: F811  (runtime import of the annotated type)

    generator, device = backend.generator, backend.device
    key = {"generator": generator, "layers": layers, "per_layer": per_layer, "seed": seed,
           **({"weights": backend.weights} if backend.weights else {})}
    saved = storage.load_units(out, key)
    if saved is None:
        import generators
        import numpy as np
        from rig_client.cnn import load_efficientnet_lite0
        from rig_client.units import screen_units

        gen = generators.load(generator, device=device, weights=backend.weights)
        network = load_efficientnet_lite0(device)
        by_layer = []
        for layer in layers:
            found = screen_units(gen, layer, SCREEN_SAMPLES, np.random.default_rng(seed), model=network,
                                 device=device)
            if len(found) < per_layer:
                raise BenchError(f"only {len(found)} units of {layer} respond to {generator} samples; "
                                 f"ask for fewer with --units-per-layer")
            by_layer.append([{"layer": s.unit.layer, "channel": s.unit.channel, "x": s.unit.x, "y": s.unit.y}
                             for s in found[:per_layer]])
        # Round robin over layers, so a partly done benchmark covers every depth.
        saved = [units[i] for i in range(per_layer) for units in by_layer]
        storage.save_units(out, key, saved)
    return [UnitSpec(**u) for u in saved]


def _report(args: argparse.Namespace) -> int:
    from analysis.bench_report import load, render
    from insilico import storage

    if storage.runs_dir(args.results_dir).is_dir():
        storage.consolidate(args.results_dir)
    path = render(*load(args.results_dir), args.report_out or args.results_dir / "report")
    print(path)
    return 0
