"""``actmax export nwb|parquet|csv``: a finished session out of the store, as one NWB file or tidy tables."""

from __future__ import annotations

import argparse
import sys
import tempfile
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
                         help="output file (.nwb), in an existing folder" if name == "nwb" else
                         "output folder (made if missing, in an existing folder), one file per table")
        sub.add_argument("--force", action="store_true", help="replace an existing output")
        subject = sub.add_argument_group("subject metadata", "set or correct the session config's, for this export")
        subject.add_argument("--subject-id", help="subject identifier (default: config subject_id, else animal)")
        subject.add_argument("--species", help='Latin binomial, e.g. "Macaca mulatta" (DANDI requires it)')
        subject.add_argument("--sex", help="M, F, U (unknown) or O (other)")
        subject.add_argument("--age", help='ISO 8601 duration, e.g. "P6Y", or a range "P5Y/P7Y"')
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from server.analyze import stored_settings
    from server.export import load_session_tables, nwb_writer, write_tables
    from server.export.tables import CLI_HINTS, dandi_warning, require_presentations, subject_overrides
    from server.store.archive import ImageArchive

    write_nwb = nwb_writer() if args.format == "nwb" else None
    subject = subject_overrides(subject_id=args.subject_id, species=args.species, sex=args.sex, age=args.age)
    check_out(args.out, args.format, args.force)
    settings = stored_settings(args)
    tables = load_session_tables(settings.database_url, args.session, subject)
    if write_nwb is None:
        if tables.presentations.empty:
            warn(f"session {args.session} has no presentations: its presentations table is empty")
        for path in write_tables(tables, args.out, args.format):
            print(path)
        return 0

    require_presentations(tables, CLI_HINTS)
    if (warning := dandi_warning(tables, CLI_HINTS)) is not None:
        warn(warning)
    print(f"preparing the NWB file: {len(tables.stimuli)} images, {len(tables.presentations)} presentations "
          "(a minute or so for a long session)", file=sys.stderr, flush=True)
    bar = None

    def on_image() -> None:  # the bar starts with the first image, so its rate and time left are the images'
        nonlocal bar
        if bar is None:
            bar = tqdm(total=len(tables.stimuli), unit="image", desc="images")
        bar.update()
    try:
        write_nwb(tables, ImageArchive(settings.data_dir), args.out, on_image=on_image, hints=CLI_HINTS)
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.out}: {len(tables.presentations)} presentations of {len(tables.stimuli)} images, "
          f"{len(tables.generations)} generations in {len(tables.threads)} thread(s)")
    return 0


def check_out(out: Path, fmt: str, force: bool) -> None:
    """Refuse an ``--out`` that cannot be written, or that exists without ``--force``, before reading the
    session (``ValueError`` saying what to give instead)."""
    from server.export.tables import table_paths

    if fmt == "nwb" and out.suffix != ".nwb":
        raise ValueError(f"--out {out}: an NWB file name ends in .nwb")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if fmt == "nwb" and out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the NWB file's name, e.g. {out / 'session.nwb'}")
    if fmt != "nwb" and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; {fmt} export writes one file per table into a folder: give a folder")
    existing = [str(path) for path in ([out] if fmt == "nwb" else table_paths(out, fmt)) if path.exists()]
    if existing and not force:
        raise ValueError(f"--out {out}: {', '.join(existing)} would be replaced; give --force to replace it, or "
                         "another --out")
    folder = out if out.is_dir() else out.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write in {folder} ({error.strerror or error}); choose another "
                         "folder") from None


def warn(message: str) -> None:
    print(f"actmax export: warning: {message}", file=sys.stderr)
