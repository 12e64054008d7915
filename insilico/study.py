"""``actmax analyze study``: tuning landscapes of EfficientNet-Lite0 units by depth (spec C3, "Landscapes").

Per layer, the centre units that DCGAN-face samples move most (`screen_units`) are evolved with
Cholesky CMA-ES; every code of the evolution feeds the PCA hemisphere grid (PC1-PC2-PC3, spec B1),
which is scored noise-free. The raw map (no spline: spec B3's in-silico rule), rectified at 0 like a
firing rate, gives the level-set signature (B3), the axis ratio (B4) and a Kent fit; the RBF probe
(B6) samples level sets of the unit around its evolved peak. `study.md` tables each statistic by
depth (mean ± SEM) with its Spearman correlation with depth and the published direction; docs/study.md
lists the settings and how they deviate from the spec.

Images are placed in the unit's theoretical receptive field (clipped to the 224-pixel frame), as the
reference study resized images into the RF. Each unit is one Dask task (`insilico.runner`) writing one
Parquet file, so a study resumes where it stopped. Heavy imports stay inside functions so
``actmax --help`` is instant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from analysis.landscape import STATISTICS, finite_values, landscape_statistics, mean_sem, summarize, trend_values
from analysis.serialization import json_safe
from insilico import InsilicoError, check_layers
from rig_client.connection import non_negative_int
from rig_client.version import package_version


class StudyError(InsilicoError):
    """Bad study settings (layers, sizes, grid)."""


DEFAULT_LAYERS = ("blocks.1", "blocks.4", "blocks.8", "blocks.11", "blocks.14")
GRIDS = {18: 11, 9: 21}  # grid step (degrees) -> points per axis
RBF_MODES = ("min", "max", "max_abinit")
#: The statistics of the RBF probe (`--no-rbf` leaves them out).
RBF_STATISTICS = ("max_min_ratio", "global_local_ratio")
#: Adam steps per probe mode relative to --rbf-steps (the spec's 50 : 75 : 100).
RBF_STEP_SHARE = {"min": 1.0, "max": 1.5, "max_abinit": 2.0}

@dataclass(frozen=True)
class StudySettings:
    """What the study runs; `quick()` gives the quick preset (~7 min on 2 cores)."""

    layers: tuple[str, ...] = DEFAULT_LAYERS
    units_per_layer: int = 3
    generations: int = 50
    population: int = 40
    grid_step: int = 9
    screen_samples: int = 64
    rbf: bool = True
    rbf_levels: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)
    rbf_n: int = 20
    rbf_steps: int = 20
    distance: str = "perceptual"
    examples_per_layer: int = 2
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.layers:
            raise StudyError("give at least one layer (e.g. --layers blocks.1 blocks.8 blocks.14)")
        if self.grid_step not in GRIDS:
            raise StudyError(f"--grid must be 18 (11 x 11) or 9 (21 x 21), got {self.grid_step}")
        for name in ("units_per_layer", "generations", "screen_samples", "rbf_n", "rbf_steps"):
            if getattr(self, name) < 1:
                raise StudyError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.population < 4:
            raise StudyError(f"population must be >= 4, got {self.population}")
        if self.examples_per_layer < 0:
            raise StudyError(f"examples-per-layer must be >= 0, got {self.examples_per_layer}")
        if self.distance not in ("perceptual", "mse"):
            raise StudyError(f"distance must be 'perceptual' or 'mse', got {self.distance!r}")
        if not self.rbf_levels or not all(0 < r <= 1 for r in self.rbf_levels):
            raise StudyError(f"RBF levels must be fractions in (0, 1], got {self.rbf_levels}")

    @classmethod
    def quick(cls, **overrides: Any) -> StudySettings:
        """One unit per layer, 15 x 20 evolution, 11 x 11 grid, small RBF probe."""
        preset = dict(units_per_layer=1, generations=15, population=20, grid_step=18, screen_samples=32,
                      rbf_n=10, rbf_steps=8, examples_per_layer=1)
        return cls(**{**preset, **overrides})

    @property
    def grid_n(self) -> int:
        return GRIDS[self.grid_step]


# ---------------------------------------------------------------------------------------------- units


def unit_rf(model, layer: str, shape: Sequence[int]) -> Any:
    """The theoretical receptive field of `layer`'s centre unit (feature map `shape` = (C, H, W)) as a
    `ReceptiveField`; the full frame if it is larger."""
    from rig_client.cnn import INPUT_SIZE
    from rig_client.units import ReceptiveField

    y0, y1, x0, x1 = model.receptive_field(layer, shape[1] // 2, shape[2] // 2)
    size = y1 - y0 + 1
    if size >= INPUT_SIZE:
        return ReceptiveField()
    return ReceptiveField(size, (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2)


class SharedForward:
    """`generator.forward` memoised on the last code tensor (by identity), so the RBF probe's activation
    and distance, which see the same `z` at every step, run the generator once."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self._z = self._images = None

    def __call__(self, z):
        if z is not self._z:
            self._z, self._images = z, self.generator.forward(z)
        return self._images


def unit_activation(scorer, forward: Callable) -> Callable:
    """Differentiable code -> rectified response of the scorer's single unit, `max(0, pre-activation)`.

    `forward` maps codes to images in [0, 1] (`generator.forward`). Same pipeline as `UnitScorer.score`
    (RF placement, normalisation, crop, folded network) but under autograd: `(n, dim)` -> `(n,)`.
    """
    import torch

    from rig_client.cnn import normalize

    if len(scorer.units) != 1:
        raise StudyError(f"unit_activation needs a scorer with one unit, got {len(scorer.units)}")
    unit = scorer.units[0]
    y0, y1, x0, x1 = scorer.crop
    stride = math.prod(conv.stride[0] for conv in scorer.model.conv_path(unit.layer))

    def activation(z: torch.Tensor) -> torch.Tensor:
        x = normalize(scorer.rf.place(forward(z)))[:, :, y0:y1, x0:x1]
        for name, h in scorer.model.preactivations(x):
            if name == unit.layer:
                return torch.relu(h[:, unit.channel, unit.y - y0 // stride, unit.x - x0 // stride])
        raise StudyError(f"layer {unit.layer!r} not reached")  # UnitScorer validated the layer: unreachable

    return activation


# ---------------------------------------------------------------------------------------------- one unit


@dataclass
class Evolution:
    """Every code of a CMA-ES evolution, in order, and its clean scores."""

    codes: np.ndarray  # (n_codes, dim)
    scores: np.ndarray  # (n_codes,)
    final_codes: np.ndarray  # last generation
    best_code: np.ndarray

    @property
    def best_score(self) -> float:
        return float(self.scores.max())


def evolve_unit(generator, scorer, *, generations: int, population: int, seed: int) -> Evolution:
    """Cholesky CMA-ES as the benchmark runs it (`cma-sigma1`: single first image) from the generator's
    default start and step size, noise-free.

    `insilico.evolve.evolve` keeps only the final generation; the PCA grid needs every code.
    """
    import optimizers

    init = generator.default_init()
    opt = optimizers.create("cma-sigma1", generator.latent_dim, seed=seed, population=population,
                            sigma0=init["sigma0"], init_code=init["init_code"])
    codes, scores = [], []
    for _ in range(generations):
        batch = opt.ask()
        clean = scorer.score(generator.generate(batch))[:, 0]
        opt.tell(batch, clean)
        codes.append(batch)
        scores.append(clean)
    all_codes, all_scores = np.concatenate(codes), np.concatenate(scores)
    return Evolution(all_codes, all_scores, codes[-1], all_codes[np.argmax(all_scores)])


def score_grid(generator, scorer, grid) -> np.ndarray:
    """Noise-free responses on a `SphereGrid` as a θ-major (n, n) map; pole points scored once."""
    n = len(grid.theta)
    flat = np.empty(len(grid.codes))
    flat[grid.unique] = scorer.score(generator.generate(grid.codes[grid.unique]))[:, 0]
    values = flat.reshape(n, n)
    poles = np.isclose(np.abs(grid.phi), np.pi / 2)
    values[1:, poles] = values[0, poles]
    return values


def rbf_statistics(scorer, distance, generator, z_star: np.ndarray, settings: StudySettings,
                   seed: int) -> dict[str, Any]:
    """RBF probe (spec B6) around `z_star` in modes min, max, max_abinit and `rbf_ratios` over them.

    The distance is ``||φ(G(z)) − φ(G(z*))||²`` with φ the features of an `analysis.distances`
    distance; min and max start from the same perturbations (same seed). A bin counts with at least
    half of `rbf_n` samples in it (the spec: 10 of 40). `rbf_note` says why a ratio or fit is NaN
    (`rbf_ratios`' notes), None when all are defined.
    """
    import torch

    from analysis.isotropy import rbf_probe, rbf_ratios

    forward = SharedForward(generator)
    activation = unit_activation(scorer, forward)
    with torch.no_grad():
        peak_features = distance.features(generator.forward(torch.as_tensor(z_star[None], dtype=torch.float32)))

    def distance_fn(z: torch.Tensor, _z_star: torch.Tensor) -> torch.Tensor:
        return (distance.features(forward(z)) - peak_features).pow(2).sum(1)

    probes = {mode: rbf_probe(activation, distance_fn, z_star, levels=settings.rbf_levels, mode=mode,
                              n=settings.rbf_n, steps=max(1, round(RBF_STEP_SHARE[mode] * settings.rbf_steps)),
                              rng=seed)
              for mode in RBF_MODES}
    ratios = rbf_ratios(probes, bins=settings.rbf_levels, min_count=max(1, settings.rbf_n // 2))
    return {"max_min_ratio": ratios["max_min_ratio"], "global_local_ratio": ratios["global_local_ratio"],
            "f_star": probes["min"].f_star, "rbf_note": "; ".join(ratios["notes"]) or None,
            "rbf": {mode: {"level_mean_distance": probes[mode].distance.mean(axis=1).tolist(),
                           "level_mean_fraction": probes[mode].fraction.mean(axis=1).tolist(),
                           **ratios[mode]} for mode in RBF_MODES}}


# ---------------------------------------------------------------------------------------------- study


def study_unit(generator, scorer, distance, settings: StudySettings, *, seed: int) -> dict[str, Any]:
    """Evolve, map and (with `settings.rbf`) RBF-probe the scorer's unit; one JSON-ready row.

    `distance` is an `analysis.distances` distance (None without the RBF probe).
    """
    from analysis.tuning import pca_sphere_grid

    unit = scorer.units[0]
    row: dict[str, Any] = {"layer": unit.layer, "channel": unit.channel, "x": unit.x, "y": unit.y,
                           "rf_size": scorer.rf.size, "seed": seed}
    started = time.perf_counter()
    evo = evolve_unit(generator, scorer, generations=settings.generations, population=settings.population,
                      seed=seed)
    row.update(best_score=evo.best_score, first_score=float(evo.scores[0]),
               final_norm=float(np.linalg.norm(evo.final_codes, axis=1).mean()),
               evolve_s=time.perf_counter() - started)
    grid = pca_sphere_grid(evo.codes, final_codes=evo.final_codes, step_deg=settings.grid_step, n=settings.grid_n)
    values = score_grid(generator, scorer, grid)
    row.update(radius=grid.radius, **landscape_statistics(values, grid.theta, grid.phi), map=values.tolist(),
               map_s=time.perf_counter() - started - row["evolve_s"])
    if settings.rbf:
        if evo.best_score > 0:
            row.update(rbf_statistics(scorer, distance, generator, evo.best_code, settings, seed))
        else:
            row.update(max_min_ratio=float("nan"), global_local_ratio=float("nan"), rbf=None,
                       rbf_note=f"no RBF probe: the evolution's best response {evo.best_score:.3g} is not above 0")
    row["wall_s"] = time.perf_counter() - started  # evolve_s + map_s + the RBF probe
    return row


@dataclass(frozen=True)
class UnitTask:
    """One screened unit of the study: what a Dask task evolves, maps and probes (`execute_unit`)."""

    layer: str
    channel: int
    x: int
    y: int
    depth: int  # index among the study's layers
    layer_index: int  # index among the network's layers
    screen_std: float
    rf: tuple[int, float, float]  # ReceptiveField (size, x, y)
    seed: int
    map_png: bool  # an example unit: its map is drawn in maps/ (`write_maps`)
    settings: str  # canonical JSON of what changes a unit's result

    @property
    def run_id(self) -> str:
        """Deterministic id: `<layer>-ch<channel>-<16 hex digits>` of the hash of every field."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.layer}-ch{self.channel}-{digest}"


#: Settings that do not change a unit's row: which units and layers are asked for, and where it runs.
_NOT_IN_TASK = ("layers", "units_per_layer", "examples_per_layer", "device")

_LOADED: dict[tuple, tuple] = {}
_LOADED_LOCK = threading.Lock()


def _loaded(settings: StudySettings) -> tuple:
    """(network, generator, distance) built once per worker process."""
    import generators
    from analysis.distances import get_distance
    from rig_client.cnn import load_efficientnet_lite0, normalize

    key = (settings.device, settings.distance, settings.rbf)
    with _LOADED_LOCK:
        if key not in _LOADED:
            model = load_efficientnet_lite0(settings.device)
            distance = get_distance(settings.distance, model, normalize) if settings.rbf else None
            _LOADED[key] = model, generators.load("dcgan-faces", device=settings.device), distance
        return _LOADED[key]


def execute_unit(task: UnitTask, settings: StudySettings, out_dir: str) -> None:
    """Study one unit (`study_unit`) and write its row to `runs/<run_id>.parquet`."""
    import torch

    from insilico import storage
    from rig_client.units import ReceptiveField, Unit, UnitScorer

    torch.set_num_threads(1)
    model, generator, distance = _loaded(settings)
    scorer = UnitScorer([Unit(task.layer, task.channel, task.x, task.y)], model=model,
                        rf=ReceptiveField(*task.rf), device=settings.device)
    row = study_unit(generator, scorer, distance, settings, seed=task.seed)
    row.update(run_id=task.run_id, depth=task.depth, layer_index=task.layer_index, screen_std=task.screen_std,
               actmax_version=package_version())
    storage.write_run(out_dir, {k: json.dumps(json_safe(row[k])) if k in _JSON_COLUMNS else v
                                for k, v in row.items()}, {})


#: Row entries that are not scalars, stored as JSON text in the unit's Parquet file.
_JSON_COLUMNS = ("map", "signature", "rbf")


def unit_tasks(settings: StudySettings, out: Path, progress: bool = True) -> tuple[list[str], list[UnitTask]]:
    """(layers in network order, one task per screened unit); screening is saved in `out/units.json`."""
    import torch
    from tqdm.auto import tqdm

    import generators
    from insilico import storage
    from rig_client.cnn import INPUT_SIZE, load_efficientnet_lite0
    from rig_client.units import screen_units

    check_layers(settings.layers, StudyError)
    model = load_efficientnet_lite0(settings.device)
    order = model.layer_names()
    layers = sorted(dict.fromkeys(settings.layers), key=order.index)
    key = {"layers": layers, "screen_samples": settings.screen_samples, "seed": settings.seed}
    screened = storage.load_units(out, key)
    if screened is None:
        with torch.no_grad():
            blank = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=settings.device)
            shapes = {name: tuple(h.shape[1:]) for name, h in model.preactivations(blank)}
        generator = generators.load("dcgan-faces", device=settings.device)
        screened = []
        for depth, layer in enumerate(tqdm(layers, desc="screening", unit="layer", leave=False, disable=not progress)):
            rf = unit_rf(model, layer, shapes[layer])
            found = screen_units(generator, layer, settings.screen_samples, np.random.default_rng([settings.seed, depth]),
                                 model=model, rf=rf, device=settings.device)
            screened += [{"layer": layer, "channel": s.unit.channel, "x": s.unit.x, "y": s.unit.y,
                          "screen_std": s.std, "rf": [rf.size, rf.x, rf.y]} for s in found]
        storage.save_units(out, key, screened)
    task_settings = json.dumps({k: v for k, v in asdict(settings).items() if k not in _NOT_IN_TASK}, sort_keys=True)
    by_layer = []
    for depth, layer in enumerate(layers):
        units = [u for u in screened if u["layer"] == layer]
        if len(units) < settings.units_per_layer:
            raise StudyError(f"{layer}: only {len(units)} responsive centre channels, "
                             f"fewer than --units-per-layer {settings.units_per_layer}")
        by_layer.append([UnitTask(layer, u["channel"], u["x"], u["y"], depth, order.index(layer), u["screen_std"],
                                  tuple(u["rf"]), settings.seed * 100_003 + depth * 1_000 + k,
                                  k < settings.examples_per_layer, task_settings)
                         for k, u in enumerate(units[:settings.units_per_layer])])
    # Round robin over layers, so a partly done study covers every depth.
    return layers, [tasks[k] for k in range(settings.units_per_layer) for tasks in by_layer]


def run_study(settings: StudySettings, out: Path, *, scheduler: str | None = None, n_workers: int = 1,
              processes: bool = True, progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the study on Dask (one task per unit, resumable) and write study.json, study.md, study.png and
    maps/ under `out` (created once the layers are checked). Returns the per-unit rows and the by-depth summary
    (`summarize`)."""
    from insilico.runner import run_tasks

    layers, tasks = unit_tasks(settings, out, progress)
    outcome = run_tasks(tasks, execute_unit, out, desc="study", scheduler=scheduler, n_workers=n_workers,
                        processes=processes, progress=progress, describe=lambda t: f"{t.layer} ch{t.channel}",
                        noun="units", settings=settings)
    if outcome.failed:
        first = next(iter(outcome.failed.items()))
        raise StudyError(f"{len(outcome.failed)} of {outcome.total} units failed (first: {first[0]}: {first[1]}); "
                         f"rerun into {out} to retry them")
    rows = read_rows(out, [t.run_id for t in sorted(tasks, key=lambda t: (t.depth, t.seed))])
    summary = summarize(rows, layers, not_run=None if settings.rbf else dict.fromkeys(RBF_STATISTICS, "--no-rbf"))
    _write_json(out / "study.json", settings, rows, summary)
    (out / "study.md").write_text(markdown_report(summary, settings, rows), encoding="utf-8")
    plot_by_depth(summary, rows, out / "study.png")
    examples = {t.run_id for t in tasks if t.map_png}
    write_maps(out / "maps", settings, [r for r in rows if r["run_id"] in examples])
    return rows, summary


def write_maps(folder: Path, settings: StudySettings, rows: Sequence[dict[str, Any]]) -> None:
    """`<layer>_ch<channel>.png` in `folder` for each row: its rectified map with level sets. Any other PNG there
    (an earlier study into the same folder, with other settings or units) is removed, so the maps are always
    those of study.json."""
    from analysis.plots import plot_map
    from analysis.tuning import grid_axis
    from rig_client.units import Unit

    folder.mkdir(parents=True, exist_ok=True)
    axis = grid_axis(settings.grid_step, settings.grid_n)
    written = set()
    for row in rows:
        path = folder / f"{row['layer']}_ch{row['channel']}.png"
        unit = Unit(row["layer"], row["channel"], row["x"], row["y"])
        plot_map(np.maximum(np.array(row["map"], dtype=float), 0), axis, axis, path=path, title=f"{unit} (rectified)")
        written.add(path.name)
    for stale in folder.glob("*.png"):
        if stale.name not in written:
            stale.unlink()


def read_rows(out: Path, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of these units from their Parquet files, in order."""
    import pyarrow.parquet as pq

    from insilico import storage

    rows = []
    for run_id in run_ids:
        row = pq.read_table(storage.runs_dir(out) / f"{run_id}.parquet").to_pylist()[0]
        rows.append({k: json.loads(v) if k in _JSON_COLUMNS else v for k, v in row.items()})
    return rows


def markdown_report(summary: dict[str, Any], settings: StudySettings, rows: Sequence[dict[str, Any]]) -> str:
    """study.md: settings, the by-depth table (mean ± SEM, n), Spearman ρ with depth and each unit's `rbf_note`."""
    layers = summary["layers"]
    lines = ["# Tuning landscapes by depth (EfficientNet-Lite0 units, DCGAN faces)", "",
             f"{len(rows)} units; actmax {package_version()}; settings: `{json.dumps(asdict(settings))}`", "",
             "Maps are the raw noise-free grids rectified at 0; see docs/study.md for the method and deviations.",
             "", "| statistic | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for key, label, *_ in STATISTICS:
        cells = []
        for layer in layers:
            s = summary["by_layer"][layer][key]
            if s["n"] == 0:
                cells.append("-")
            else:
                sem = f" ± {s['sem']:.2g}" if s["n"] > 1 else ""
                cells.append(f"{s['mean']:.3g}{sem} ({s['n']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Spearman ρ with depth over units (for RBF max/min: of |ratio − 1|; for global/local the "
              "verdict is the share of units above 1):", "",
              "| statistic | expected with depth | ρ | p | n | verdict |", "|---|---|---|---|---|---|"]
    for key, label, *_ in STATISTICS:
        t = summary["spearman"][key]
        rho, p = (f"{t['rho']:.2f}", f"{t['p']:.3g}") if np.isfinite(t["rho"]) else ("—", "—")
        lines.append(f"| {label} | {t['expected']} | {rho} | {p} | {t['n']} | {t['verdict']} |")
    notes = [f"- {r['layer']} ch{r['channel']}: {r['rbf_note']}" for r in rows if r.get("rbf_note")]
    if notes:
        lines += ["", "RBF probe notes (undefined statistics are left out of the tables above):", "", *notes]
    lines += ["", "Other per-unit numbers (evolution best, map peak offset from the grid centre, wall time) "
              "are in study.json.", ""]
    return "\n".join(lines)


def plot_by_depth(summary: dict[str, Any], rows: Sequence[dict[str, Any]], path: Path) -> None:
    """study.png: `depth_figure`."""
    depth_figure(summary, rows).savefig(path, dpi=100)


def depth_figure(summary: dict[str, Any], rows: Sequence[dict[str, Any]]):
    """Each statistic against depth, units as dots, layer mean ± SEM as error bars, of the values its Spearman ρ
    is computed on (|ratio − 1| for the RBF max/min)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = summary["layers"]
    cols = 3
    fig = Figure(figsize=(4 * cols, 3 * math.ceil(len(STATISTICS) / cols) + 0.5))
    FigureCanvasAgg(fig)
    for idx, (key, label, *_) in enumerate(STATISTICS):
        ax = fig.add_subplot(math.ceil(len(STATISTICS) / cols), cols, idx + 1)
        values = {layer: trend_values(key, finite_values(r.get(key) for r in rows if r["layer"] == layer))
                  for layer in layers}
        for depth, layer in enumerate(layers):
            ax.plot(np.full(values[layer].size, depth), values[layer], "o", color="0.6", ms=3)
        stats = [mean_sem(values[layer]) for layer in layers]
        ax.errorbar(range(len(layers)), [s["mean"] for s in stats],
                    yerr=[0 if not np.isfinite(s["sem"]) else s["sem"] for s in stats], color="C0", marker="s",
                    capsize=3)
        t = summary["spearman"][key]
        if t["n"] == 0:
            empty = t["verdict"] if t["verdict"].startswith("not run") else "undefined at every unit"
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", color="0.5")
        shown = "|max/min − 1| " if key == "max_min_ratio" else ""
        trend = f"ρ = {t['rho']:.2f} (p = {t['p']:.2g})" if np.isfinite(t["rho"]) else "ρ undefined"
        ax.set_title(f"{label}\n{shown}{trend}", fontsize=9)
        ax.set_xticks(range(len(layers)), layers, rotation=30, fontsize=7)
    fig.suptitle(f"Landscape statistics by depth ({len(rows)} units; grey: units, blue: layer mean ± SEM; "
                 "ρ: Spearman with depth over units)", fontsize=10)
    fig.supxlabel("layer, shallow to deep", fontsize=9)
    fig.tight_layout()
    return fig


def _write_json(path: Path, settings: StudySettings, rows: Sequence[dict[str, Any]],
                summary: dict[str, Any] | None = None) -> None:
    doc = {"actmax_version": package_version(), "settings": asdict(settings), "units": list(rows), "summary": summary}
    path.write_text(json.dumps(json_safe(doc), indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(analyses) -> argparse.ArgumentParser:
    """Add ``study`` to the ``actmax analyze`` subparsers; the parser added."""
    parser = analyses.add_parser(
        "study", help="in-silico tuning-landscape study of EfficientNet-Lite0 units by depth",
        description="Evolve EfficientNet-Lite0 centre units at several depths with DCGAN faces (CMA-ES), map "
        "each on the PC1-PC2-PC3 hemisphere, and report the level-set signature, axis ratio, Kent fit and RBF "
        "ratios by depth: study.json, study.md (mean ± SEM per layer, Spearman ρ with depth), study.png and "
        "maps/. One Dask task per unit; rerunning into --out resumes. Unset options come from the default preset "
        "or --quick.")
    d = StudySettings()
    parser.add_argument("--layers", nargs="+", help=f"layers, shallow to deep (default {' '.join(d.layers)})")
    parser.add_argument("--units-per-layer", type=int, help=f"units per layer (default {d.units_per_layer})")
    parser.add_argument("--generations", type=int, help=f"CMA-ES generations (default {d.generations})")
    parser.add_argument("--population", type=int, help=f"images per generation (default {d.population})")
    parser.add_argument("--grid", type=int, choices=sorted(GRIDS), dest="grid_step",
                        help=f"grid step in degrees: 9 = 21 x 21, 18 = 11 x 11 (default {d.grid_step})")
    parser.add_argument("--screen-samples", type=int, help=f"DCGAN samples for screening (default {d.screen_samples})")
    parser.add_argument("--rbf", action=argparse.BooleanOptionalAction, help="run the RBF probe (default on)")
    parser.add_argument("--rbf-levels", nargs="+", type=float,
                        help=f"RBF target fractions of the peak (default {' '.join(map(str, d.rbf_levels))})")
    parser.add_argument("--rbf-n", type=int, help=f"RBF samples per level (default {d.rbf_n}; the published study: 40)")
    parser.add_argument("--rbf-steps", type=int, help="Adam steps of the min probe; max x1.5, max_abinit x2 "
                        f"(default {d.rbf_steps}; the published study: 50)")
    parser.add_argument("--distance", choices=("perceptual", "mse"),
                        help="RBF image distance: EfficientNet-Lite0 features (LPIPS stand-in) or pixel MSE "
                        "(default perceptual)")
    parser.add_argument("--examples-per-layer", type=int, help="example map PNGs per layer (default 2)")
    parser.add_argument("--seed", type=non_negative_int, help="seed (default 0)")
    parser.add_argument("--device", help="torch device (default cpu)")
    parser.add_argument("--quick", action="store_true", help="~7-minute preset on 2 cores: 1 unit per layer, 15 x 20 "
                        "evolution, 11 x 11 grid, small RBF probe")
    parser.add_argument("--out", type=Path, default=Path("actmax-study"),
                        help="output folder (default actmax-study); rerunning into it resumes")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (e.g. from dask-jobqueue); "
                        "default: a LocalCluster on this machine")
    parser.add_argument("--workers", type=int, default=1, help="LocalCluster worker processes (default 1)")
    parser.add_argument("--threads", action="store_true", help="LocalCluster workers as threads, not processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> StudySettings:
    """StudySettings from parsed arguments: set options override the preset (--quick or default)."""
    names = ("units_per_layer", "generations", "population", "grid_step", "screen_samples", "rbf", "rbf_n",
             "rbf_levels",
             "rbf_steps", "distance", "examples_per_layer", "seed", "device")
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "rbf_levels" in overrides:
        overrides["rbf_levels"] = tuple(overrides["rbf_levels"])
    if args.layers:
        overrides["layers"] = tuple(part for item in args.layers for part in item.split(",") if part)
    return StudySettings.quick(**overrides) if args.quick else replace(StudySettings(), **overrides)


def run(args: argparse.Namespace) -> int:
    """``actmax analyze study``: run, write the outputs, print the trend verdicts."""
    from generators.base import resolve_device

    settings = settings_from_args(args)
    if args.workers < 1:
        raise StudyError(f"--workers must be >= 1, got {args.workers}")
    settings = replace(settings, device=str(resolve_device(settings.device)))  # a clear error before any work
    rows, summary = run_study(settings, args.out, scheduler=args.scheduler, n_workers=args.workers,
                              processes=not args.threads, progress=not args.no_progress)
    print(f"{len(rows)} units; trend with depth (Spearman ρ over units):")
    for key, label, *_ in STATISTICS:
        t = summary["spearman"][key]
        rho = f"{t['rho']:+6.2f}" if np.isfinite(t["rho"]) else f"{'—':>6}"
        print(f"  {label:28s} ρ {rho}  expected {t['expected']:28s} {t['verdict']}")
    print(f"written to {args.out}/ (study.md, study.json, study.png, maps/)")
    return 0
