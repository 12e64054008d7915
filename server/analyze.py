"""``actmax analyze``: offline analyses of recorded sessions and of generators, written as JSON + PNG."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from analysis import MAX_RESAMPLES
from rig_client.connection import add_weights_argument, non_negative_int

MAX_POSITIONS = 1000  # --positions at most: each holds two d x d Hessians in memory, seconds apiece to compute


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser("analyze", help="offline analyses (manifold maps, sessions, GAN geometry)")
    analyses = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    manifold = analyses.add_parser(
        "manifold", help="tuning map of a manifold thread: topology, isotropy, reliability",
        description="Smooth each plane of a manifold thread's map (spherical spline, s = sum of SEM^2), then "
        "write its level-set signature, mesh persistence, axis ratio, Kent fit (on the trial means), split-half "
        "and bootstrap reliability (manifold.json) and a heatmap with level sets per plane (manifold_<plane>.png). "
        "A map shown once per image (repeats: 1) has no reliability and is not smoothed; manifold.json says so.")
    _add_store_arguments(manifold)
    manifold.add_argument("thread", type=int, help="manifold thread id (see GET /sessions/{id}/threads)")
    manifold.add_argument("--n-boot", type=resamples, default=200,
                          help=f"bootstrap resamples, 2 to {MAX_RESAMPLES} (default 200)")
    manifold.add_argument("--reliability", action=argparse.BooleanOptionalAction, default=True,
                          help="split-half and bootstrap reliability, the slow part (default on)")
    manifold.set_defaults(func=run_manifold)

    session = analyses.add_parser(
        "session", help="score-per-generation plot, best images, summary and methods text of a session",
        description="Write scores.png, evolution_<thread>.png, best_images.png, manifold_<thread>.png, "
        "retest_<thread>.png and .json (a retest's images against their evolution scores), "
        "summary.json and methods.txt (how each thread ran: generator and weights, optimizer and every "
        "hyperparameter, seed, objective, references, channels, software) for a recorded session.")
    _add_store_arguments(session)
    session.add_argument("session", type=int, help="session id")
    session.set_defaults(func=run_session)

    geometry = analyses.add_parser(
        "geometry", help="metric Hessians of a generator: spectra, homogeneity, eigenvector walks",
        description="Compute the metric Hessian of a generator's image manifold at random codes, and of a "
        "shuffled-weights control; write summary.json (dims for 99/99.9/99.99% of the spectrum, "
        "homogeneity), spectra.png, homogeneity.png, eigenvector walks and eigenbasis.npz (for hess-cma).")
    geometry.add_argument("generator", help="generator name, e.g. dcgan-faces")
    geometry.add_argument("--out", type=Path, default=Path("actmax-geometry"),
                          help="output folder (default actmax-geometry)")
    geometry.add_argument("--positions", type=int, default=30,
                          help=f"codes to compute Hessians at, 2 to {MAX_POSITIONS} (default 30): each adds a Hessian "
                          "of the generator and one of its control, seconds apiece on a CPU, all kept in memory")
    geometry.add_argument("--method", default="bp", choices=["bp", "hvp_ad", "hvp_fd", "jac"],
                          help="bp: full backprop (exact); hvp_*: Lanczos on Hessian-vector products; "
                          "jac: Jacobian Gram form (default bp)")
    geometry.add_argument("--distance", default="mse", choices=["mse", "perceptual"],
                          help="pixel MSE or EfficientNet-Lite0 feature distance (default mse)")
    geometry.add_argument("--k", type=int, help="eigenpairs per Hessian (default: all d for bp and jac, d/2 - 1 for "
                          "hvp_*); below d, dims and corr are of the top k")
    geometry.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_weights_argument(geometry)
    geometry.add_argument("--seed", type=non_negative_int, default=0,
                          help="seed of the random codes and of the shuffled-weights control (default 0)")
    geometry.set_defaults(func=run_geometry)

    from insilico import study

    study.add_parser(analyses).set_defaults(func=run_study)


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="server data folder (default: ACTMAX_DATA_DIR or ./actmax-data)")
    parser.add_argument("--out", type=Path, default=Path("actmax-analysis"), help="output folder (default actmax-analysis)")


def resamples(text: str) -> int:
    """``--n-boot``: an integer from 2 to ``MAX_RESAMPLES``."""
    n = int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"{n}: a bootstrap needs at least 2 resamples")
    if n > MAX_RESAMPLES:
        raise argparse.ArgumentTypeError(f"{n}: at most {MAX_RESAMPLES} resamples; ask for fewer")
    return n


def check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file (``ValueError``); it creates nothing, so a command calls it first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")


def output_folder(out: Path) -> Path:
    """``out``, created, once a file could be written there: call it before long work, after the checks that
    may find nothing to write."""
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:  # named after the folder, not the temporary file
        raise OSError(error.errno, error.strerror, str(out)) from None
    return out


def stored_settings(args: argparse.Namespace):
    """The settings of the server data folder that ``--data-dir`` names, its database checked to be actmax's."""
    from server.settings import load_settings
    from server.store.db import check_database_file

    settings = load_settings({"data_dir": ("--data-dir", args.data_dir)})
    if settings.database_url.startswith("sqlite:///"):
        check_database_file(settings.data_dir / "actmax.sqlite")
    return settings


def run_manifold(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.manifold import analyze, summary
    from analysis.serialization import json_safe
    from server.manifold import manifold_data, plot_plane
    from server.store.db import make_sessionmaker, offline_db_engine

    settings = stored_settings(args)
    db_engine = offline_db_engine(settings.database_url)
    try:
        with make_sessionmaker(db_engine)() as db:
            data = manifold_data(db, args.thread)
    finally:
        db_engine.dispose()
    out = output_folder(args.out)
    with tqdm(desc="analysing", unit="stage", leave=False) as bar:
        results = analyze(data, n_boot=args.n_boot, reliability=args.reliability, progress=bar)
    for r in results:
        plot_plane(data, r, f"thread {args.thread}, {r['plane']}", out / f"manifold_{r['plane']}.png")
    (out / "manifold.json").write_text(json.dumps(json_safe(summary(results)), indent=2), encoding="utf-8")
    for r in results:
        s = r["signature"]
        print(f"{r['plane']}: lowest single-loop level {s.lowest_loop_index}, loop AUC {s.auc_loop:.2f}, "
              f"line AUC {s.auc_line:.2f}, axis ratio {r['axis_ratio'].mean_top:.2f}, Kent R² {r['kent'].r2:.2f}")
        if r["note"]:
            print(f"  note: {r['note']}")
    print(f"written to {out}/")
    return 0


def run_session(args: argparse.Namespace) -> int:
    import math

    from server.report import retest_lines, write_session_report

    check_output_folder(args.out)
    settings = stored_settings(args)
    for s in write_session_report(settings.database_url, settings.data_dir, args.session, args.out):
        best = "no reference scored" if math.isnan(s.best_reference) else f"best reference {s.best_reference:.3f}"
        first = (f"objective changed at generation {s.objective_from_generation}, mean there"
                 if s.objective_from_generation else "first mean")
        print(f"{s.name}: {s.generations} generations, {first} {s.first_generation_mean:.3f}, "
              f"last mean {s.last_generation_mean:.3f}, {best}")
    for line in retest_lines(settings.database_url, args.session):
        print(line)
    print(f"written to {args.out}/")
    return 0


def run_geometry(args: argparse.Namespace) -> int:
    from analysis.geometry import GeometryError
    from server.geometry import report

    if args.positions < 2:
        raise GeometryError(f"--positions must be >= 2 (homogeneity compares positions), got {args.positions}")
    if args.positions > MAX_POSITIONS:
        raise GeometryError(f"--positions must be <= {MAX_POSITIONS} (each holds two Hessians in memory), "
                            f"got {args.positions}; ask for fewer")
    if args.k is not None and args.k < 1:
        raise GeometryError(f"--k must be >= 1, got {args.k}")
    created = not args.out.exists()
    try:
        output_folder(args.out)
        summary = report(args.generator, args.out, n_positions=args.positions, method=args.method, k=args.k,
                         distance=args.distance, device=args.device, weights=args.weights, seed=args.seed)
    except BaseException:
        # Refused before anything was written (an unwritable --out, an unknown generator, missing weights, --k
        # beyond the latent size, Ctrl-C): leave no empty folder behind.
        if created and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()
        raise
    if summary["k"] < summary["d"]:
        print(f"dims and corr over the top {summary['k']} of {summary['d']} eigenvalues: dims are lower bounds, "
              f"None where the top {summary['k']} cannot tell")
    for model in ("real", "shuffled"):
        m = summary[model]
        print(f"{model:>8}: dims_99 {m['dims_99']}, dims_999 {m['dims_999']}, corr_log {m['corr_log_mean']:.3f}, "
              f"corr_lin {m['corr_lin_mean']:.3f}")
    print(f"written to {args.out}/")
    return 0


def run_study(args: argparse.Namespace) -> int:
    """``actmax analyze study`` (`insilico.study.run`), a file given as ``--out`` refused first."""
    from insilico import study

    check_output_folder(args.out)
    return study.run(args)
