"""In-silico optimizer benchmark at scale: the grid, its Dask runner, per-run storage, the CLI.

`actmax bench` is wired through `add_parser(subparsers)` (argparse) or `cli_main(argv)`.
"""

from insilico.bench.cli import add_parser, cli_main
from insilico.bench.errors import BenchError

__all__ = ["BenchError", "add_parser", "cli_main"]
