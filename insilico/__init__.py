"""In-silico experiments: evolutions against simulated units, outside the experiment server.

`insilico.evolve` runs one evolution in process; `insilico.study` is the by-depth landscape study
(`actmax analyze study`) and `insilico.bench` the optimizer benchmark (`actmax bench`); both run one
Dask task per unit or run (`insilico.runner`) and keep one Parquet file per task (`insilico.storage`).
This package builds on `optimizers`, `generators`, `analysis` and `rig_client`, never on `server`.
"""

from __future__ import annotations

from collections.abc import Iterable


class InsilicoError(ValueError):
    """Bad in-silico settings or results; the message says what to change."""


def check_layers(layers: Iterable[str], error: type[InsilicoError] = InsilicoError) -> None:
    """Raise `error` naming every one of `layers` that is not a spatial EfficientNet-Lite0 layer (`rig_client.cnn`);
    cheap (no weights), so commands call it before any work."""
    from rig_client.cnn import layer_shapes

    unknown = [layer for layer in layers if len(layer_shapes().get(layer, ())) != 3]
    if unknown:
        raise error(f"unknown or non-spatial layers {unknown}; use stem, blocks.N[.part] (N = 0..15, part: expand, "
                    "depthwise or project; block 0 has no expand) or head")
