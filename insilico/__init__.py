"""In-silico experiments: evolutions against simulated units, outside the experiment server.

`insilico.evolve` runs one evolution in process; `insilico.study` is the by-depth landscape study
(`actmax analyze study`) and `insilico.bench` the optimizer benchmark (`actmax bench`); both run one
Dask task per unit or run (`insilico.runner`) and keep one Parquet file per task (`insilico.storage`).
This package builds on `optimizers`, `generators`, `analysis` and `rig_client`, never on `server`.
"""


class InsilicoError(ValueError):
    """Bad in-silico settings or results; the message says what to change."""
