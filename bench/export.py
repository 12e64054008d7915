"""Export time, file size and memory for a real session: 100 generations of 2 threads by default.

Records the session with `actmax serve` and `actmax rig sim` as separate processes on loopback (DCGAN
faces; CMA-ES and GA, 20 images + 10 references per generation each), or reuses one with --data-dir
and --session. Then times building the tables, the NWB file (images streamed from the archive) and
the Parquet tables. The baseline, measured in the same run, is reading and decoding every archived PNG
once: an export cannot do less. Memory: how far the process's resident size peaked above where it
was when the NWB write began (Linux: /proc/self/clear_refs resets the peak), against the bytes all
decoded images would take at once.

    python bench/export.py [--generations 100] [--population 20] [--data-dir DIR --session ID]
"""

from __future__ import annotations

import argparse
import io
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def record_session(data_dir: Path, generations: int, population: int) -> int:
    from server.launch import ServerProcess, server_with_sim_rig

    server = ServerProcess(data_dir, secrets.token_urlsafe(16))
    thread = {"generator": "dcgan-faces", "optimizer_params": {"population": population},
              "n_generations": generations}
    with server_with_sim_rig(server, "bench", ["blocks.6:67", "blocks.6:12"], data_dir / "rig.log",
                             noise_eps=0.1) as (api, rig):
        session = api.post("/sessions", {
            "name": "export bench", "rig": "bench", "species": "Macaca mulatta",
            "threads": [thread | {"name": "cma", "optimizer": "cma", "seed": 1, "objective": {"channels": [0]}},
                        thread | {"name": "ga", "optimizer": "ga", "seed": 2, "objective": {"channels": [1]}}]})
        start = time.perf_counter()
        while True:
            threads = api.get(f"/sessions/{session['id']}/threads")
            if all(t["status"] == "finished" for t in threads):
                break
            if rig.poll() is not None or server.process.poll() is not None:
                raise SystemExit(f"server or rig died; see {data_dir}")
            time.sleep(1)
        print(f"recorded {generations} generations x 2 threads in {time.perf_counter() - start:.0f} s")
        return session["id"]


def resident_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, help="reuse this server data folder (with --session)")
    parser.add_argument("--session", type=int, help="session id in --data-dir")
    args = parser.parse_args()

    from PIL import Image

    from server.export import load_session_tables, write_tables
    from server.export.nwb import write_nwb
    from server.store.archive import ImageArchive

    work = Path(tempfile.mkdtemp(prefix="actmax-export-bench-"))
    data_dir = args.data_dir or work / "data"
    session_id = args.session or record_session(data_dir, args.generations, args.population)
    archive = ImageArchive(data_dir)

    start = time.perf_counter()
    tables = load_session_tables(f"sqlite:///{data_dir / 'actmax.sqlite'}", session_id)
    t_tables = time.perf_counter() - start

    start = time.perf_counter()
    png_bytes = pixel_bytes = 0
    for digest in tables.stimuli["content_hash"]:
        png = archive.read(digest)
        png_bytes += len(png)
        pixel_bytes += np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).nbytes
    t_baseline = time.perf_counter() - start

    nwb = work / "session.nwb"
    Path("/proc/self/clear_refs").write_text("5")  # peak resident size := resident size now
    rss_before = resident_kib("VmRSS")
    start = time.perf_counter()
    write_nwb(tables, archive, nwb)
    t_nwb = time.perf_counter() - start
    peak_growth = (resident_kib("VmHWM") - rss_before) * 1024

    start = time.perf_counter()
    parquet = write_tables(tables, work / "parquet", "parquet")
    t_parquet = time.perf_counter() - start

    mib = 2**20
    print(f"session {session_id}: {len(tables.threads)} threads, {len(tables.generations)} generations, "
          f"{len(tables.stimuli)} images, {len(tables.presentations)} presentations")
    print(f"baseline, read + decode every PNG:  {t_baseline:6.2f} s   archive PNGs {png_bytes / mib:7.1f} MiB")
    print(f"tables from the store:              {t_tables:6.2f} s")
    print(f"NWB write:                          {t_nwb:6.2f} s   file {nwb.stat().st_size / mib:7.1f} MiB   "
          f"x{t_nwb / t_baseline:.1f} the baseline time, x{nwb.stat().st_size / png_bytes:.2f} the PNG bytes")
    print(f"NWB write, peak memory growth:      {peak_growth / mib:6.1f} MiB   "
          f"all decoded images: {pixel_bytes / mib:.1f} MiB")
    print(f"Parquet tables:                     {t_parquet:6.2f} s   "
          f"{sum(p.stat().st_size for p in parquet) / mib:7.1f} MiB")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
