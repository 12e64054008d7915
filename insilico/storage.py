"""In-silico results on disk (benchmark runs, study units): one Parquet file per task, written atomically, plus consolidated tables.

Layout of a results directory:

    runs/<run_id>.parquet   one row: the run's columns and its per-generation trace as list columns
    results.parquet         every run, one row each (no trace columns)     } rewritten by `consolidate`
    traces.parquet          one row per (run, generation)                  }
    units.json              the screened units the grid was built from

A run file appears under its final name only once complete (temporary name + `os.replace`), so a
killed benchmark leaves either a whole run or none; stray temporary files are removed on resume.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from insilico import InsilicoError

RUNS = "runs"
TRACE_PREFIX = "trace_"
_TMP = ".tmp-"


def runs_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / RUNS


def write_run(out_dir: str | Path, row: dict[str, Any], trace: dict[str, list]) -> Path:
    """Write one run atomically as `runs/<row['run_id']>.parquet`; `trace` values are per-generation lists."""
    folder = runs_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{row['run_id']}.parquet"
    tmp = folder / f"{final.name}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    columns = {k: [v] for k, v in row.items()}
    columns.update({TRACE_PREFIX + k: [list(v)] for k, v in trace.items()})
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, final)
    return final


def remove_partial(out_dir: str | Path) -> int:
    """Delete temporary files left by killed writers; returns how many."""
    folder = runs_dir(out_dir)
    stale = list(folder.glob(f"*{_TMP}*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def completed_ids(out_dir: str | Path) -> set[str]:
    """Run ids already on disk."""
    folder = runs_dir(out_dir)
    return {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()


def load_runs(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, traces) from the per-run files: one row per run, one row per (run, generation)."""
    files = sorted(runs_dir(out_dir).glob("*.parquet")) if runs_dir(out_dir).is_dir() else []
    if not files:
        raise InsilicoError(f"no run files under {runs_dir(out_dir)}; run `actmax bench` or `actmax analyze study` first")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    frame = table.to_pandas()
    trace_cols = [c for c in frame.columns if c.startswith(TRACE_PREFIX)]
    results = frame.drop(columns=trace_cols)
    traces = frame[["run_id", *trace_cols]].explode(trace_cols, ignore_index=True)
    traces = traces.rename(columns={c: c[len(TRACE_PREFIX):] for c in trace_cols})
    for col in traces.columns.drop("run_id"):
        traces[col] = pd.to_numeric(traces[col])
    return results, traces


def consolidate(out_dir: str | Path) -> tuple[Path, Path]:
    """Rewrite `results.parquet` and `traces.parquet` from the per-run files; returns their paths."""
    results, traces = load_runs(out_dir)
    paths = []
    for name, frame in (("results.parquet", results), ("traces.parquet", traces)):
        path = Path(out_dir) / name
        tmp = path.with_name(f"{name}{_TMP}{uuid.uuid4().hex[:8]}")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def save_units(out_dir: str | Path, key: dict[str, Any], units: list[dict[str, Any]]) -> None:
    """Record the screened units with the screening settings (`key`) that produced them."""
    path = Path(out_dir) / "units.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"units.json{_TMP}{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"key": key, "units": units}, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_units(out_dir: str | Path, key: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The units saved for exactly these screening settings, else None; `InsilicoError` if the file is damaged."""
    path = Path(out_dir) / "units.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8: a damaged file
        raise InsilicoError(f"{path} is damaged ({error}); delete it to screen the units again, or give another "
                            "--out") from None
    return saved["units"] if saved.get("key") == key else None
