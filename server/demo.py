"""``actmax demo``: a real closed loop on loopback — server and simulated rig as separate processes."""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import signal
import sqlite3
import time
from pathlib import Path

from rig_client.connection import non_negative, positive
from rig_client.sim import DEFAULT_UNIT, parse_unit


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="evolve images for a simulated neuron end to end and write a report",
        description="Start `actmax serve` and `actmax rig sim` as separate processes on loopback, run "
        "two evolution threads on one simulated EfficientNet-Lite0 unit, and write a report folder "
        "(scores.png, evolution_<thread>.png, best_images.png, summary.json, methods.txt, the session database).",
    )
    parser.add_argument("--out", default="actmax-demo",
                        help="report folder (default ./actmax-demo): a new or empty folder, or an earlier demo's "
                        "report, which is replaced")
    parser.add_argument("--generations", type=int, default=30, help="generations per thread (default 30)")
    parser.add_argument("--population", type=_population, default=40, help="images per generation (default 40)")
    parser.add_argument("--optimizers", nargs="+", default=["cma", "sphere-cma"],
                        help="one thread per optimizer (default: cma sphere-cma)")
    parser.add_argument("--unit", type=_unit, default=DEFAULT_UNIT,
                        help=f"LAYER:CHANNEL[:X:Y] (default {DEFAULT_UNIT})")
    parser.add_argument("--noise-eps", type=non_negative, default=0.2,
                        help="multiplicative gain noise (default 0.2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the threads and the rig (default 1)")
    parser.add_argument("--timeout", type=positive, default=900, help="give up after this many seconds")
    parser.set_defaults(func=run)


def _unit(text: str) -> str:
    parse_unit(text)  # the rig's own check, before anything starts
    return text


def _population(text: str) -> int:
    from optimizers import MAX_POPULATION  # at parsing: the parser itself imports no torch

    try:
        population = int(text)
    except ValueError:
        population = 0
    if not 2 <= population <= MAX_POPULATION:  # what every optimizer takes, checked before anything starts
        raise argparse.ArgumentTypeError(f"{text}: expected a whole number of images from 2 to {MAX_POPULATION}")
    return population


@contextlib.contextmanager
def stopped_as_on_ctrl_c():
    """SIGTERM and SIGHUP (``timeout``, a closed terminal) raise KeyboardInterrupt meanwhile, so that the server and
    the rig, which run in sessions of their own, are stopped as on Ctrl-C rather than left running."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    stops = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]  # no SIGHUP on Windows
    previous = {stop: signal.signal(stop, interrupt) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def session_config(args: argparse.Namespace) -> dict:
    return {
        "name": "actmax demo",
        "rig": "demo-sim",
        "notes": f"simulated unit {args.unit}, gain noise eps={args.noise_eps}",
        "references": {"source": "skimage", "count": 10},
        "threads": [
            {
                "name": f"{optimizer}",
                "generator": "dcgan-faces",
                "optimizer": optimizer,
                "optimizer_params": {"population": args.population},
                "objective": {"channels": [0]},
                "seed": args.seed + i,
                "n_generations": args.generations,
            }
            for i, optimizer in enumerate(args.optimizers)
        ],
    }


def progress(api, threads: list[dict]) -> tuple[int, bool]:
    """Generations complete, and whether every thread has ended. The states are read first: a generation
    that completes between the two reads is counted, so the count of ended threads is final."""
    states = [api.get(f"/threads/{t['id']}")["status"] for t in threads]
    done = sum(api.get(f"/threads/{t['id']}/generations", status="complete", limit=1)["total"] for t in threads)
    return done, all(s in ("finished", "stopped", "failed") for s in states)


def table(summaries) -> str:
    """Per thread: first and last generation mean, the best reference image's mean and the best image's, each with
    the presentations (n) it is the mean of; then what the best image's number is worth."""
    lines = [f"{'thread':<12} {'gens':>4} {'first mean':>11} {'last mean':>10} {'best ref (n)':>14} "
             f"{'best image (n)':>15}"]
    for s in summaries:
        reference = f"{s.best_reference:.3f} ({s.best_reference_presentations})"
        best = f"{s.best_score:.3f} ({s.best_score_presentations})"
        lines.append(f"{s.name:<12} {s.generations:>4} {s.first_generation_mean:>11.3f} "
                     f"{s.last_generation_mean:>10.3f} {reference:>14} {best:>15}")
    counts = ", ".join(str(s.images_ranked) for s in summaries)
    lines += ["last mean vs best ref is the fair comparison: both are means over many presentations;",
              f"best image: the highest of each thread's images' means ({counts} images), biased high: expect it "
              "to be lower when shown again"]
    return "\n".join(lines)



#: The file that marks a folder as a demo's report, which the next demo may replace.
MARKER = ".actmax-demo"


def replace_report_folder(out: Path) -> None:
    """Make ``out`` a new, empty report folder. Only an empty folder or an earlier demo's report (its ``MARKER``)
    is emptied: anything else, and the current folder or one above it, is refused before anything is deleted."""
    from server.session_config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the report")
    if out.is_dir() and any(out.iterdir()):
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"--out {out} is the current folder or one above it; give a folder of its own for the "
                              "report, e.g. --out actmax-demo")
        if not (out / MARKER).is_file():
            raise ConfigError(f"--out {out} already holds files and is not an earlier demo report, so it is left "
                              "as it is; give a new folder, or empty this one yourself")
        for entry in out.iterdir():  # the folder's contents: ``out`` may be a link to it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a report of `actmax demo`, which the next demo into this folder replaces\n",
                              encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pydantic import ValidationError

    from server.launch import ServerProcess, server_with_sim_rig
    from server.report import write_session_report
    from server.session_config import ConfigError, SessionConfig, describe_validation_error
    from server.settings import new_token

    try:  # before the server and the rig start
        SessionConfig.model_validate(session_config(args))
    except ValidationError as error:
        raise ConfigError("the session these flags make (--generations, --population, --optimizers) is not "
                          f"valid: {describe_validation_error(error)}") from None
    out = Path(args.out)
    replace_report_folder(out)
    data = out / "data"
    server = ServerProcess(data, new_token())
    started = time.monotonic()
    print(f"starting server (REST {server.url}, rigs {server.zmq_endpoint}) and simulated rig ...")
    with stopped_as_on_ctrl_c(), server_with_sim_rig(server, "demo-sim", [args.unit], out / "rig.log",
                                                     noise_eps=args.noise_eps, seed=args.seed) as (api, rig):
        session = api.post("/sessions", session_config(args))
        threads = api.get(f"/sessions/{session['id']}/threads")
        total = len(threads) * args.generations
        with tqdm(total=total, unit="gen", desc="evolving") as bar:
            while True:
                if rig.poll() is not None:
                    raise RuntimeError(f"the simulated rig exited (code {rig.returncode}); see {out / 'rig.log'}")
                done, ended = progress(api, threads)
                bar.update(done - bar.n)
                if ended:
                    break
                if time.monotonic() - started > args.timeout:
                    raise TimeoutError(f"demo did not finish within {args.timeout:.0f} s; see {data / 'server.log'}")
                time.sleep(0.5)
    database = out / "actmax.sqlite"
    with sqlite3.connect(data / "actmax.sqlite") as source, sqlite3.connect(database) as target:
        source.backup(target)
    summaries = write_session_report(f"sqlite:///{database}", data, session["id"], out)
    print(f"\nreport in {out}/ (scores.png, evolution_*.png, best_images.png, summary.json, methods.txt, actmax.sqlite) "
          f"after {time.monotonic() - started:.0f} s")
    print(table(summaries))
    beaten = True
    for s in summaries:
        beaten &= s.last_generation_mean > max(s.first_generation_mean, s.best_reference) and math.isfinite(
            s.last_generation_mean)
    print("evolved images beat the first generation and the best reference" if beaten
          else "WARNING: an evolution did not beat the first generation and the best reference")
    return 0 if beaten else 1
