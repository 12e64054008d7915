"""``actmax export nwb|parquet|csv``: a finished session out of the store, as one NWB file or tidy tables."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = {"nwb": "one NWB file (Neurodata Without Borders) with images, presentations and scores",
           "parquet": "one Parquet file per table, for pandas/R", "csv": "one CSV file per table"}


def add_parser(subcommands) -> None:
    parser = subcommands.add_parser("export", help="export a session as NWB, Parquet or CSV",
                                    description="Export a finished (or stopped) session; sessions with running or "
                                    "paused threads are refused. docs/export.md describes every table.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, help in FORMATS.items():
        sub = formats.add_parser(name, help=help, description=f"Write {help}.")
        sub.add_argument("--data-dir", help="server data folder (default: ACTMAX_DATA_DIR or ./actmax-data)")
        sub.add_argument("--session", type=int, required=True, help="session id (`actmax session list`)")
        sub.add_argument("--out", type=Path, required=True,
                         help="output file (.nwb)" if name == "nwb" else "output folder, one file per table")
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from server.analyze import stored_settings
    from server.export import load_session_tables, nwb_writer, write_tables
    from server.store.archive import ImageArchive

    if args.format == "nwb":
        write_nwb = nwb_writer()
        if args.out.suffix != ".nwb":
            raise ValueError(f"--out {args.out}: an NWB file name ends in .nwb")
    settings = stored_settings(args)
    tables = load_session_tables(settings.database_url, args.session)
    if args.format != "nwb":
        for path in write_tables(tables, args.out, args.format):
            print(path)
        return 0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(tables.stimuli), unit="image", desc="images") as bar:
        write_nwb(tables, ImageArchive(settings.data_dir), args.out, on_image=bar.update)
    print(f"{args.out}: {len(tables.presentations)} presentations of {len(tables.stimuli)} images, "
          f"{len(tables.generations)} generations in {len(tables.threads)} thread(s)")
    return 0
