"""A session as one NWB file (pynwb), written from its tidy tables; images streamed from the archive.

Layout (docs/export.md has the reading side):
- ``stimulus_templates/stimulus_images``: ``Images``, one ``RGBImage`` per stimulus, named by stimulus id,
  in the order of the stimuli table (``order_of_images``);
- ``stimulus/stimuli``: the stimuli table; ``stimulus/presentation_order``: ``IndexSeries`` over the images;
- ``intervals/presentations``: ``TimeIntervals``, one row per presentation on the rig's clock;
- ``processing/evolution``: the ``threads``, ``generations``, ``channels`` and ``events`` tables (the session's
  event log: times as ISO 8601 text on the server's clock, like the other tables' times, not seconds on the rig's);
- the ``session`` table becomes the file's and its ``Subject``'s metadata; ``source_script`` names the actmax
  that exported the file and the software the threads ran with (``threads.software``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from hdmf.backends.hdf5 import H5DataIO
from hdmf.common import DynamicTable, VectorData, VectorIndex
from hdmf.data_utils import AbstractDataChunkIterator, DataChunk
from PIL import Image
from pynwb import NWBHDF5IO, NWBFile, ProcessingModule
from pynwb.base import ImageReferences, Images
from pynwb.epoch import TimeIntervals
from pynwb.file import Subject
from pynwb.image import IndexSeries, RGBImage

from rig_client.version import package_version
from server.export.tables import (
    DESCRIPTIONS,
    REST_HINTS,
    TRIAL_FACT_DESCRIPTION,
    MissingImage,
    SessionTables,
    iso_text,
    replace_file,
    require_presentations,
    software_text,
)
from server.store.archive import ImageArchive


class PngPixels(AbstractDataChunkIterator):
    """An archived PNG's RGB pixels, read only when the file writer asks for them (one image in memory)."""

    def __init__(self, path: Path, stimulus_id: str, on_read: Callable[[], None] | None = None) -> None:
        self.path, self.stimulus_id = path, stimulus_id
        try:
            with Image.open(path) as image:  # reads the header only
                self.shape = (image.height, image.width, 3)
        except FileNotFoundError:
            raise MissingImage(f"stimulus {stimulus_id}: its image {path} is missing; export from the data folder "
                               "the server wrote, with its images/ folder (a copy must include it)") from None
        self.on_read = on_read
        self._done = False

    def __iter__(self):
        return self

    def __next__(self) -> DataChunk:
        if self._done:
            raise StopIteration
        self._done = True
        try:
            with Image.open(self.path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except OSError as error:  # truncated or overwritten since it was archived: PIL names no file
            raise MissingImage(f"stimulus {self.stimulus_id}: its image {self.path} is damaged ({error}); restore the "
                               "data folder's images/ from a backup (README 'Backups')") from None
        if self.on_read is not None:
            self.on_read()
        return DataChunk(data=pixels, selection=np.s_[:, :, :])

    def recommended_chunk_shape(self) -> tuple[int, ...]:
        return self.shape

    def recommended_data_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def maxshape(self) -> tuple[int, ...]:
        return self.shape


def write_nwb(tables: SessionTables, archive: ImageArchive, path: str | Path,
              on_image: Callable[[], None] | None = None, hints: dict[str, str] = REST_HINTS) -> None:
    """Write ``tables`` (and the archived images they name) to ``path``, replacing it whole (``replace_file``);
    ``on_image`` is called per image written. ``NoPresentations`` (saying what to do with ``hints``) for a
    session without presentations, ``MissingImage`` for a PNG not in the archive."""
    require_presentations(tables, hints)
    meta = tables.session.iloc[0].map(lambda value: _text(value) if isinstance(value, str) else value)
    said = f" (its setup, as it said: {json.dumps(meta['rig_setup'], ensure_ascii=False)})" if meta["rig_setup"] else ""
    start = meta["session_start_time"].to_pydatetime()
    # Times are seconds on the rig's clock from the reference time, which is never after the first onset.
    reference = min(start, datetime.fromtimestamp(tables.presentations["onset"].min(), start.tzinfo))
    nwbfile = NWBFile(
        session_description=f"actmax closed-loop image evolution {meta['session_name']!r}: images from generative "
        "networks optimised online for the recorded channels' spike rates, interleaved with reference images.",
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, f"actmax/{meta['session_id']}/{meta['created_at'].isoformat()}")),
        session_start_time=start,
        timestamps_reference_time=reference,
        session_id=str(meta["session_id"]),
        experimenter=[meta["experimenter"]] if meta["experimenter"] else None,
        lab=meta["lab"] or None,
        notes=meta["notes"] or None,
        keywords=["activation maximization", "closed-loop", "image synthesis", "generative network",
                  "visual neurophysiology"],
        experiment_description=f"rig {meta['rig']}{said}, array {meta['array'] or 'not given'}, response window "
        f"{meta['response_window_ms']} ms after onset",
        subject=Subject(subject_id=meta["subject_id"], species=meta["species"] or None,
                        sex=meta["sex"], age=meta["age"],
                        description=f"animal {meta['animal'] or 'not given'}"),
        source_script=source_script(tables), source_script_file_name="actmax",
    )

    images = [RGBImage(name=sid, data=H5DataIO(PngPixels(archive.root / png, sid, on_image), compression="gzip"),
                       description=f"{kind} stimulus, sha256 {digest}")
              for sid, kind, png, digest in tables.stimuli[["stimulus_id", "kind", "png_path", "content_hash"]]
              .itertuples(index=False)]
    container = Images(name="stimulus_images", images=images, description="Every image shown, synthetic and reference, "
                       "in the order of the stimuli table.",
                       order_of_images=ImageReferences(name="order_of_images", data=images))
    nwbfile.add_stimulus_template(container)
    nwbfile.add_stimulus(_table("stimuli", tables.stimuli, "One row per image of stimulus_images, same order: "
                                "provenance, latent code and score."))

    presentations = tables.presentations
    start_time = (presentations["onset"] - reference.timestamp()).to_numpy(dtype=float)
    stop_time = start_time + presentations["window_end_ms"].to_numpy(dtype=float) / 1000
    nwbfile.add_stimulus(IndexSeries(
        name="presentation_order", data=presentations["stimulus_index"].to_numpy(dtype=np.uint32),
        indexed_images=container, timestamps=start_time, unit="N/A",
        description="Index into stimulus_images of the image shown at each onset."))
    intervals = _table("presentations", presentations, "One row per presentation: the counting window on the rig's "
                       "clock (start_time = onset, stop_time = end of the spike-counting window), the image, "
                       "the rates per channel and whether they were scored.", TimeIntervals,
                       extra={"start_time": start_time, "stop_time": stop_time})
    nwbfile.add_time_intervals(intervals)

    evolution = ProcessingModule(name="evolution", description="Optimizer threads, their per-generation scores and "
                                 "state, the recorded channels, and the session's event log.")
    threads = tables.threads.assign(software=[
        "; ".join(_key_value_text(record) for record in json.loads(cell)) if cell else ""
        for cell in tables.threads["software"]])
    for name, frame in (("threads", threads), ("generations", tables.generations), ("channels", tables.channels),
                        ("events", tables.events)):
        if not frame.empty:  # a session without events: nwbinspector refuses a table of no rows
            evolution.add(_table(name, frame, f"actmax {name} table (docs/export.md)."))
    nwbfile.add_processing_module(evolution)

    def write(tmp: Path) -> None:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)

    replace_file(path, write)


def source_script(tables: SessionTables) -> str:
    """The file's ``source_script``: the actmax that exported it and the versions its threads ran with, e.g.
    ``exported by actmax 0.16.0; recorded with actmax 0.16.0 (python 3.11.9, torch 2.5.1, numpy 2.1.0)``."""
    recorded = dict.fromkeys(software_text(record) for cell in tables.threads["software"] if cell
                             for record in json.loads(cell))
    return (f"exported by actmax {package_version()}; recorded with "
            f"{'; '.join(recorded) or 'software versions not recorded'}")


def _table(name: str, frame: pd.DataFrame, description: str, cls: type[DynamicTable] = DynamicTable,
           extra: dict | None = None) -> DynamicTable:
    """A DynamicTable (or ``cls``) holding ``frame``'s columns; lists become ragged or 2-D columns."""
    descriptions = {"start_time": "Start of the interval, s from the reference time.",
                    "stop_time": "End of the interval, s from the reference time."} | DESCRIPTIONS[name]
    columns = []
    for column, values in [*(extra or {}).items(), *frame.items()]:
        text = descriptions.get(column, TRIAL_FACT_DESCRIPTION)
        data, index = _column_data(pd.Series(values), fact=column not in descriptions)
        vector = VectorData(name=column, description=text, data=data)
        columns.append(vector)
        if index is not None:
            columns.append(VectorIndex(name=f"{column}_index", data=index, target=vector))
    return cls(name=name, description=description, columns=columns, id=np.arange(len(frame)))


def _text(value: str) -> str:
    """Text HDF5 can store: each NUL character (which it cannot hold, and which a note or a config may) as ␀."""
    return value.replace("\x00", "\u2400")


def _key_value_text(values: dict) -> str:
    """``key=value, ...`` (values as JSON, a nested dict in parentheses, also in a list): no dict in a text cell,
    which NWB best practice (nwbinspector's check_table_values_for_dict) asks to unpack."""
    return ", ".join(f"{k}={_value_text(v)}" for k, v in values.items())


def _value_text(value) -> str:
    if isinstance(value, dict):
        return f"({_key_value_text(value)})"
    if isinstance(value, list):
        return f"[{', '.join(_value_text(v) for v in value)}]"
    return json.dumps(value)


def _column_data(values: pd.Series, fact: bool = False) -> tuple[np.ndarray | list, np.ndarray | None]:
    """HDF5-storable data for a column (``fact``: a trial fact), and the ragged index when its cells are lists
    of unequal length."""
    sample = next((v for v in values if v is not None and v is not pd.NA), None)
    if isinstance(sample, list):
        cells = [[] if v is None else v for v in values]  # an optional list fact (baseline_rates): empty where absent
        flat = [x for v in cells for x in v]
        if any(isinstance(x, str | datetime) for x in flat):  # labels and their times (channels): ragged text
            text = [iso_text(x) if isinstance(x, datetime) else _text(x) for x in flat]
            return text, np.cumsum([len(v) for v in cells])
        dtype = np.int64 if flat and all(isinstance(x, int) for x in flat) else float
        lengths = {len(v) for v in cells}
        if len(lengths) == 1 and lengths != {0}:
            return np.array(cells, dtype=dtype), None
        return np.array(flat, dtype=dtype), np.cumsum([len(v) for v in cells])
    if isinstance(sample, dict):
        return [_text(_key_value_text(d or {})) for d in values], None
    if pd.api.types.is_datetime64_any_dtype(values) or isinstance(sample, datetime):
        return [iso_text(v) for v in values], None
    if isinstance(values.dtype, pd.BooleanDtype | pd.Int64Dtype):  # nullable: empty is NaN in a fact, else -1
        if fact and values.isna().any():
            return values.to_numpy(dtype=float, na_value=np.nan), None
        return values.to_numpy(dtype=bool if isinstance(values.dtype, pd.BooleanDtype) else np.int64,
                               na_value=-1), None
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(), None
    if all(v is None or isinstance(v, (bool, int, float, np.number)) for v in values):  # optional numeric facts
        return np.array([np.nan if v is None else float(v) for v in values]), None
    return ["" if v is None else _text(str(v)) for v in values], None
