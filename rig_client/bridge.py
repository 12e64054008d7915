"""``actmax rig bridge --folder DIR``: hand batches to a folder-based rig (MonkeyLogic, XDream).

For every BATCH the bridge writes a folder ``DIR/batch-NNNNNN/`` at once (built under a temporary
name, then renamed): the images ``0001.png ...`` in presentation order and the manifest as
``manifest.json`` and ``manifest.csv``. The rig shows them and writes ``responses.mat``,
``responses.csv`` or ``responses.json`` into that folder (write it under another name, then rename).
The bridge reads the file once its size and modification time have held for ``--settle`` seconds (so a
file written in place is not read half-written) and validates it: on bad input it renames it to ``responses.rejected-K.EXT`` and
explains in ``responses.error.txt``, then waits for a corrected file; on good input it sends
RESULTS and writes ``ack.json``. A batch the server closed gets ``closed.json``, one it re-sent or
moved past gets ``superseded.json`` (`FolderBridge`). docs/monkeylogic/README.md describes the files
field by field. ``actmax rig matlab-files DIR`` writes the MonkeyLogic side (``rig_client/monkeylogic/*.m``)
into ``DIR`` (`write_matlab_files`).
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rig_client import RigError
from rig_client.client import results_messages
from rig_client.connection import (
    add_connection_arguments,
    connection_keys,
    non_negative,
    positive,
    positive_int,
    rig_setup,
)
from rig_client.protocol import MAX_ONSET, ErrorCode, ProtocolError
from rig_client.trials import TrialPresentation, to_send

log = logging.getLogger(__name__)

RESPONSE_FILES = ("responses.mat", "responses.csv", "responses.json")
MAX_RESPONSE_BYTES = 64 * 2**20
MIN_ONSET = 946_684_800.0  # 2000-01-01 in unix seconds: an onset before it is on another clock
SETTLE_S = 0.5  # default --settle: how long a responses file must stay unchanged before it is read
_PRESENTATION_IDS = uuid.UUID("6f1d7a52-4d0e-4b8e-9a43-0c1f3b2e9d11")  # uuid5 namespace


class BridgeError(RigError):
    """A responses file the bridge cannot send; the message names the row and field to fix."""


# --- the batch folder ----------------------------------------------------------------------------


MANIFEST_KEYS = ("batch_id", "session_id", "thread_id", "generation", "response_window_ms", "channels", "stimuli")


def read_manifest(path: Path) -> dict | None:
    """The manifest ``path`` (a batch folder's ``manifest.json``), or None, with a warning naming the file, when
    it is not one the bridge wrote (damaged, or a stray folder): the bridge then leaves that folder alone."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        problem = "it is not a JSON object" if not isinstance(manifest, dict) else next(
            (f"it has no {key!r}" for key in MANIFEST_KEYS if key not in manifest), None)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError too
        problem = f"it cannot be read ({exc})"
    if problem is None:
        return manifest
    log.warning("%s is not a batch manifest the bridge wrote (%s): the bridge skips that folder; move it out of "
                "%s (or restore the file)", path, problem, path.parent.parent)
    return None


def write_batch(folder: Path, batch, channel_labels: Sequence[str]) -> Path:
    """The folder of ``batch`` (created atomically), or the one already written for it, its manifest updated to
    ``channel_labels`` (a bridge restarted with other channels gets its open batches again)."""
    channels = {"channels": len(channel_labels), "channel_labels": list(channel_labels)}
    for existing in sorted(folder.glob("batch-*/manifest.json")):
        if (manifest := read_manifest(existing)) is not None and manifest["batch_id"] == batch.batch_id:
            if {key: manifest.get(key) for key in channels} != channels:
                log.info("%s: channels %s updated to the bridge's %s", existing, manifest.get("channel_labels"),
                         channels["channel_labels"])
                _write_atomic(existing, json.dumps({**manifest, **channels}, indent=1))
            return existing.parent
    numbers = [int(p.name[6:]) for p in folder.glob("batch-*") if p.name[6:].isdigit()]
    final = folder / f"batch-{max(numbers, default=0) + 1:06d}"
    tmp = folder / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    stimuli = []
    for order, stimulus in enumerate(batch.stimuli, start=1):
        name = f"{order:04d}.png"
        (tmp / name).write_bytes(stimulus.data)
        stimuli.append({"order": order, "stimulus_id": stimulus.stimulus_id,
                        "kind": stimulus.kind, "file": name})
    manifest = {"batch_id": batch.batch_id, "session_id": batch.session_id,
                "thread_id": batch.thread_id, "generation": batch.generation,
                "response_window_ms": list(batch.response_window_ms),
                "channels": len(channel_labels), "channel_labels": list(channel_labels),
                "stimuli": stimuli}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["order", "stimulus_id", "kind", "file"])
        writer.writeheader()
        writer.writerows(stimuli)
    tmp.rename(final)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --- reading responses ---------------------------------------------------------------------------


FIELDS = ("stimulus_id", "onset", "rates", "window_ms", "fixation_broken", "dropped_frames",
          "photodiode_onset", "baseline_rates", "baseline_window_ms", "presentation_id")


CSV_COLUMNS = ("stimulus_id", "onset", "rate_{}", "window_start_ms", "window_end_ms", "fixation_broken",
               "dropped_frames", "photodiode_onset", "baseline_{}", "baseline_window_start_ms",
               "baseline_window_end_ms", "presentation_id")  # "{}": one column per channel, 1..N


def _check_names(names, known: Sequence[str], what: str, shown: Sequence[str] = ()) -> None:
    """A misspelt field would be silently dropped: name it instead."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise BridgeError(f"unknown {what} {', '.join(map(repr, unknown[:5]))}; expected some of "
                          f"{', '.join(shown or known)} (docs/monkeylogic/README.md)")


_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))  # UTF-32 LE starts as UTF-16 LE


def _text(path: Path, data: bytes) -> str:
    """The text of a JSON or CSV responses file ``path`` (its bytes ``data``): UTF-8, with or without a
    byte-order mark (as C# and Windows PowerShell write it); BridgeError for any other encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.end == len(data) and exc.reason == "unexpected end of data":  # cut inside a character
            raise BridgeError(f"{path.name} cannot be read: it ends inside a character. "
                              f"{_still_writing(path)}") from None
        line = data.count(b"\n", 0, exc.start) + 1
        why = next((f"it starts with a {name} byte-order mark" for bom, name in _OTHER_BOMS
                    if data.startswith(bom)), f"byte 0x{data[exc.start]:02x} in line {line}")
        excel = " (in Excel: Save As, CSV UTF-8)" if path.suffix == ".csv" else ""
        raise BridgeError(f"{path.name} is not UTF-8 text ({why}): save it as UTF-8{excel}") from None


def _rows_json(path: Path, data: bytes) -> list[dict]:
    document = json.loads(_text(path, data), parse_constant=_reject_constant)
    rows = document.get("presentations") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise BridgeError('a JSON responses file is {"presentations": [{...}, ...]}')
    for row in rows:
        _check_names(row, FIELDS, "field")
    return rows


def _reject_constant(name: str):
    raise BridgeError(f"{name} is not valid JSON; leave out a presentation that was not measured")


def _numbered(row: dict, prefix: str, channels: int, where: str) -> list[str] | None:
    """Values of columns prefix1..prefixN (all present) or None (none present)."""
    names = [f"{prefix}{i}" for i in range(1, channels + 1)]
    present = [n for n in names if row.get(n) not in (None, "")]
    if not present:
        return None
    if len(present) != channels:
        missing = sorted(set(names) - set(present))
        raise BridgeError(f"{where}: columns {prefix}1..{prefix}{channels} must all be filled; "
                          f"missing {', '.join(missing[:5])}")
    return [row[n] for n in names]


def _rows_csv(path: Path, data: bytes, channels: int) -> list[dict]:
    """The rows of a CSV file; each keeps its line number as ``_line`` for the error messages."""
    columns, shown = [], []
    for name in CSV_COLUMNS:
        numbered = [name.format(i) for i in range(1, channels + 1)] if "{}" in name else [name]
        columns += numbered
        shown.append(f"{numbered[0]}..{numbered[-1]}" if len(numbered) > 1 else numbered[0])
    reader = csv.DictReader(io.StringIO(_text(path, data), newline=""))
    if not reader.fieldnames:
        raise BridgeError(f"{path.name} has no header line; write the column names first "
                          "(docs/monkeylogic/README.md)")
    if any(";" in name for name in reader.fieldnames):
        raise BridgeError("the separator must be a comma; this file uses ';' (as Excel writes in a German "
                          "locale): save it with commas, decimals with a point (docs/monkeylogic/README.md)")
    table = [(reader.line_num, row) for row in reader]
    _check_names(reader.fieldnames, columns, "column", shown)
    if repeated := [name for name, count in Counter(reader.fieldnames).items() if count > 1]:
        raise BridgeError(f"column {repeated[0]!r} appears more than once in the header; name each column once "
                          "(docs/monkeylogic/README.md)")
    rows = []
    for line, row in table:
        where = f"line {line}"
        if None in row:  # DictReader's key for the fields past the header's
            raise BridgeError(f"{where}: {len(reader.fieldnames) + len(row[None])} fields but the "
                              f"header names {len(reader.fieldnames)} columns; remove the extra "
                              "fields or name their columns in the header")
        out: dict[str, Any] = {k: v for k, v in row.items()
                               if k in ("stimulus_id", "onset", "fixation_broken", "dropped_frames",
                                        "photodiode_onset", "presentation_id") and v != ""}
        out["_line"] = line
        out["rates"] = _numbered(row, "rate_", channels, where)
        baseline = _numbered(row, "baseline_", channels, where)
        if baseline is not None:
            out["baseline_rates"] = baseline
        for key in ("window", "baseline_window"):
            start, end = row.get(f"{key}_start_ms", ""), row.get(f"{key}_end_ms", "")
            if start or end:
                out[f"{key}_ms"] = [start, end]
        rows.append(out)
    return rows


def _rows_mat(path: Path, data: bytes, channels: int) -> list[dict]:
    import scipy.io

    try:
        data = scipy.io.loadmat(io.BytesIO(data), simplify_cells=True)
    except Exception as exc:  # scipy raises many kinds on a damaged file
        raise BridgeError(f"not a MATLAB .mat file scipy can read ({exc!r}); save it with "
                          f"save(file, ..., '-v7'). {_still_writing(path)}") from None
    _check_names([k for k in data if not k.startswith("__")], FIELDS, "variable")
    for key in ("stimulus_id", "onset", "rates"):
        if key not in data:
            raise BridgeError(f"the .mat file has no variable {key!r}")
    ids = data["stimulus_id"]
    ids = [ids] if isinstance(ids, str) else list(np.asarray(ids, dtype=object).reshape(-1))
    n = len(ids)
    if not n:
        return []

    def column(key: str, width: int) -> np.ndarray:
        """Variable ``key`` as n rows of ``width`` values: n×width, or a vector or scalar where n or width is 1
        (loadmat drops dimensions of 1, so a vector's orientation is not known)."""
        try:
            value = np.asarray(data[key], dtype=float)
        except (TypeError, ValueError):
            raise BridgeError(f"variable {key!r} must be numeric") from None
        if value.shape != tuple(d for d in (n, width) if d != 1):
            found = {0: "a single value", 1: f"a vector of {value.size} values"}.get(
                value.ndim, "×".join(map(str, value.shape)))
            swapped = f" (transposed: save {key}' instead)" if value.shape == (width, n) else ""
            raise BridgeError(f"variable {key!r} is {found}{swapped}; expected {n}×{width} (one row per "
                              f"presentation, as stimulus_id{', one column per channel' if width > 1 else ''})")
        return value.reshape(n, width)

    rows = [{"stimulus_id": s} for s in ids]
    for key, width in (("onset", 1), ("rates", channels), ("fixation_broken", 1),
                       ("dropped_frames", 1), ("photodiode_onset", 1), ("baseline_rates", channels)):
        if key in data:
            for row, value in zip(rows, column(key, width)):
                if key == "photodiode_onset" and np.isnan(value[0]):
                    continue  # NaN: no photodiode on this trial
                row[key] = value.tolist() if key.endswith("rates") else value[0].item()  # rates: a list, even of 1
    for key in ("window_ms", "baseline_window_ms"):
        if key in data:
            window = np.asarray(data[key], dtype=float).reshape(-1).tolist()
            for row in rows:
                row[key] = window
    return rows


def read_responses(path: Path, manifest: dict) -> list[TrialPresentation]:
    """The presentations in a responses file, checked against the batch's manifest. BridgeError for a file to
    correct; OSError (FileNotFoundError: deleted or renamed meanwhile) for one that cannot be read."""
    with open(path, "rb") as f:  # read once: the rig may replace or delete it meanwhile
        data = f.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise BridgeError(f"{path.name} is over {MAX_RESPONSE_BYTES} bytes")
    if not data:
        raise BridgeError(f"{path.name} is empty: write the whole file under another name, "
                          f"then rename it to {path.name}")
    channels = manifest["channels"]
    try:
        rows = {".json": lambda: _rows_json(path, data), ".csv": lambda: _rows_csv(path, data, channels),
                ".mat": lambda: _rows_mat(path, data, channels)}[path.suffix]()
    except (ValueError, csv.Error) as exc:  # truncated JSON, a quote left open...
        raise BridgeError(f"{path.name} cannot be read: {exc}. {_still_writing(path)}") from None
    except RecursionError:
        raise BridgeError(f"{path.name} is nested too deeply to be a responses file") from None
    if not rows:
        raise BridgeError(f"{path.name} has no presentations: write one row per presentation shown, or no file "
                          "while there is none (the batch waits for one)")
    wanted = {s["stimulus_id"] for s in manifest["stimuli"]}
    presentations = [_presentation(row, i, manifest, wanted)
                     for i, row in enumerate(rows, start=1)]
    try:  # checked as `RigClient.send_results` sends them: in as many RESULTS as the size limit asks
        results_messages(manifest["batch_id"], [p.to_json() for p in presentations], True)
    except ProtocolError as exc:
        raise BridgeError(exc.message) from None
    return presentations


def _still_writing(path: Path) -> str:
    """The advice for a file that cannot be parsed: perhaps the bridge read it while it was being written."""
    return (f"Was it still being written? Write the whole file under another name, then rename it to "
            f"{path.name} (as actmax_write_responses does)")


def _presentation(row: dict, i: int, manifest: dict, wanted: set[str]) -> TrialPresentation:
    line = f"line {row['_line']}, " if "_line" in row else ""  # a CSV row
    where = f"{line}presentation {i} ({row.get('stimulus_id', 'no stimulus_id')})"

    def number(key: str, value, kind=float):
        try:
            x = kind(value) if kind is float else _integer(value)
        except (TypeError, ValueError):
            raise BridgeError(f"{where}: {key} must be a number; got {value!r}") from None
        if kind is float and not math.isfinite(x):
            raise BridgeError(f"{where}: {key} must be finite; got {value!r} (leave out a "
                              "presentation that was not measured)")
        return x

    def unix_time(key: str) -> float:
        x = number(key, row[key])
        if not 0 <= x <= MAX_ONSET:
            raise BridgeError(f"{where}: {key} must be unix time in seconds (not milliseconds); "
                              f"got {row[key]!r}")
        if x < MIN_ONSET:  # another clock: a datenum (MATLAB's now), GetSecs, trial time
            when = datetime.fromtimestamp(x, UTC).strftime("%Y-%m-%d %H:%M:%S")
            raise BridgeError(f"{where}: {key} {row[key]!r} is {when} UTC as unix time: "
                              "give unix time in seconds (MATLAB: posixtime(datetime('now', 'TimeZone', 'UTC')); "
                              "its now is a datenum, GetSecs counts from boot)")
        return x

    def numbers(key: str, width: int):
        values = row[key]
        if not isinstance(values, list | tuple) or len(values) != width:
            raise BridgeError(f"{where}: {key} must have {width} values; got {values!r}")
        return [number(key, v) for v in values]

    def flag(key: str) -> bool:
        if (x := number(key, row.get(key, 0), int)) not in (0, 1):
            raise BridgeError(f"{where}: {key} must be true or false (1 or 0); got {row[key]!r}")
        return bool(x)

    for key in ("stimulus_id", "onset", "rates"):
        if row.get(key) is None:
            raise BridgeError(f"{where}: {key} is required")
    stimulus_id = str(row["stimulus_id"])
    if stimulus_id not in wanted:
        raise BridgeError(f"{where}: stimulus_id {stimulus_id!r} is not in this batch's manifest")
    fields: dict[str, Any] = {
        "stimulus_id": stimulus_id,
        "onset": unix_time("onset"),
        "rates": numbers("rates", manifest["channels"]),
        "window_ms": tuple(numbers("window_ms", 2) if "window_ms" in row
                           else manifest["response_window_ms"]),
        "presentation_id": str(row.get("presentation_id") or uuid.uuid5(
            _PRESENTATION_IDS, f"{manifest['batch_id']}/{i}/{stimulus_id}")),
        "fixation_broken": flag("fixation_broken"),
        "dropped_frames": number("dropped_frames", row.get("dropped_frames", 0), int),
    }
    if row.get("photodiode_onset") is not None:
        fields["photodiode_onset"] = unix_time("photodiode_onset")
    if "baseline_rates" in row or "baseline_window_ms" in row:
        if "baseline_rates" not in row or "baseline_window_ms" not in row:
            raise BridgeError(f"{where}: give baseline rates and baseline_window_ms together")
        fields["baseline_rates"] = numbers("baseline_rates", manifest["channels"])
        fields["baseline_window_ms"] = tuple(numbers("baseline_window_ms", 2))
    return TrialPresentation(**fields)


def _integer(value) -> int:
    """An integer from JSON/CSV/MATLAB (``1``, ``"1"``, ``1.0``, ``true``); ValueError otherwise."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        value = value.strip().lower()
        if value in ("true", "false"):
            return int(value == "true")
    x = float(value)
    if not x.is_integer():
        raise ValueError(value)
    return int(x)


# --- the bridge ----------------------------------------------------------------------------------


CLOSED_CODES = (ErrorCode.BATCH_CLOSED, ErrorCode.UNKNOWN_BATCH)  # refusals no corrected file fixes


def _finished(path: Path) -> bool:
    """The server stored the folder's results (``ack.json``) or closed the batch (``closed.json``)."""
    return (path / "ack.json").exists() or (path / "closed.json").exists()


def _responses(path: Path) -> Path | None:
    """The responses file the rig wrote into batch folder ``path``, if any."""
    return next((path / name for name in RESPONSE_FILES if (path / name).exists()), None)


class FolderBridge:
    """Runs batches through ``folder``: writes each batch as it arrives, watches every open folder
    for responses, validates and sends them, and marks the folder done.

    A folder is open until it has ``ack.json`` (the server stored its results) or ``closed.json``
    (the server answered ``batch_closed``, having stored them unscored, or refused them as ``unknown_batch``:
    no file can change either); responses
    the server could not store (ERROR ``internal``) the client sends again until it does. A new
    batch of a thread supersedes the thread's open folders of its generation or an earlier one that
    have no responses yet (the server re-sent their unanswered stimuli, or moved on): they get
    ``superseded.json``, which the user loop skips, and stay watched, because a user loop that had
    begun one may still answer it. Open folders already there at start are watched too; a folder whose
    ``manifest.json`` the bridge did not write is skipped (`read_manifest`).

    A folder the bridge cannot read or write (permissions, a folder where a file goes) is logged and
    tried again at every poll while the others go on; an upload the server answered stays here until
    its ``ack.json`` is written, so it is not sent again meanwhile.

    Flagged presentations (broken fixation, dropped frames) go to a server that speaks protocol
    1.1, which stores them with their trial facts and applies the session's flagged-trial policy.
    A 1.0 server would score them, so for one they stay in the folder and are not sent: the server
    shows those stimuli again (docs/protocol.md §4.4.1).

    A responses file is read once its size and modification time have stayed the same for ``settle_s``
    (0: at first sight): a rig that writes the file in place, or a slow share, is not read half-way.
    """

    def __init__(self, client, folder: Path, channel_labels: Sequence[str], *, poll_s: float = 0.2,
                 settle_s: float = SETTLE_S):
        self.client, self.folder, self.labels = client, Path(folder), list(channel_labels)
        self.poll_s, self.settle_s = poll_s, settle_s
        self.seen: dict[Path, tuple[tuple[int, int], float]] = {}  # responses file -> (size, mtime), since when
        self.stop = threading.Event()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.open = {m.parent: manifest for m in sorted(self.folder.glob("batch-*/manifest.json"))  # folder -> manifest
                     if not _finished(m.parent) and (manifest := read_manifest(m)) is not None}
        self.uploads: dict[Path, tuple] = {}  # folder -> (ACK future, responses file, ack.json counts)
        self.failing: dict[Path, str] = {}  # folder -> the error last logged for it

    def run(self) -> None:
        while not self.stop.is_set():
            batch = self.client.next_batch(timeout=self.poll_s)
            if batch is not None:
                try:
                    self.add(batch)
                except OSError as exc:
                    log.error("batch %s could not be written (%s): make %s writable for the user the bridge "
                              "runs as; the server sends its stimuli again after its batch timeout",
                              batch.batch_id, exc, self.folder)
            self.check()

    def add(self, batch) -> Path:
        """Write ``batch``'s folder and mark the open folders of its thread that it supersedes."""
        path = write_batch(self.folder, batch, self.labels)
        if path in self.open:  # written before: a restarted bridge got it again, perhaps with other channels
            self.open[path] = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if path in self.open or _finished(path):
            return path
        log.info("batch %s (%d stimuli) written to %s", batch.batch_id, len(batch.stimuli), path)
        for other, manifest in self.open.items():
            if (manifest["session_id"], manifest["thread_id"]) == (batch.session_id, batch.thread_id) \
                    and manifest["generation"] <= batch.generation and _responses(other) is None \
                    and not (other / "superseded.json").exists():
                try:
                    _write_atomic(other / "superseded.json", json.dumps({
                        "superseded_by": batch.batch_id, "folder": path.name, "generation": batch.generation}))
                except OSError as exc:
                    self._cannot_use(other, exc)
                    continue
                log.info("%s superseded by %s; the user loop skips it, its responses are still sent",
                         other, path.name)
        self.open[path] = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        return path

    def check(self) -> None:
        """Send the responses that appeared in open folders; settle the uploads the server answered."""
        for path, manifest in list(self.open.items()):
            try:
                if path in self.uploads:
                    if self.uploads[path][0].done():
                        self._settle(path, *self.uploads[path])
                        del self.uploads[path]
                elif (responses := _responses(path)) is not None and self._settled(responses):
                    self._send(path, responses, manifest)
            except OSError as exc:
                self._cannot_use(path, exc)
            else:
                self.failing.pop(path, None)

    def _cannot_use(self, path: Path, exc: OSError) -> None:
        """Log (once per error) that batch folder ``path`` cannot be read or written; it is tried again later."""
        if self.failing.get(path) != str(exc):
            log.error("%s: the bridge cannot use this batch folder (%s): make it readable and writable for the user "
                      "the bridge runs as, or move away what is in the way. It tries again, and goes on with the "
                      "other folders meanwhile", path, exc)
        self.failing[path] = str(exc)

    def _settled(self, responses: Path) -> bool:
        """Whether ``responses`` has had the same size and modification time for ``settle_s`` (then it is
        forgotten here: a file written after it is watched afresh)."""
        try:
            stat = responses.stat()
        except FileNotFoundError:  # renamed away since the folder was looked at
            return False
        state, now = (stat.st_size, stat.st_mtime_ns), time.monotonic()
        seen = self.seen.get(responses)
        if seen is None or seen[0] != state:
            self.seen[responses] = seen = (state, now)
        if now - seen[1] < self.settle_s:
            return False
        del self.seen[responses]
        return True

    def _send(self, path: Path, responses: Path, manifest: dict) -> None:
        try:
            presentations = read_responses(responses, manifest)
        except FileNotFoundError:  # deleted or renamed since it was seen: not there yet
            return
        except BridgeError as exc:
            log.warning("%s rejected (%s): %s", responses, self._reject(responses, str(exc)), exc)
            return
        flagged = [p for p in presentations if p.flagged]
        sent = to_send(presentations, self.client.minor)
        try:  # unanswered at a stop: a restarted bridge sends the file again, with the same ids
            future = self.client.send_results(manifest["batch_id"], sent, done=True)
        except ProtocolError as exc:  # refused before sending: too large, or another channel count
            self._refused(path, responses, exc)
            return
        self.uploads[path] = (future, responses, {"sent": len(sent), "flagged": len(flagged),
                                                  "flagged_not_sent": [p.stimulus_id for p in flagged
                                                                       if p not in sent]})

    def _settle(self, path: Path, future, responses: Path, counts: dict) -> None:
        try:
            ack = future.result()
        except ProtocolError as exc:
            self._refused(path, responses, exc)
            return
        (path / "responses.error.txt").unlink(missing_ok=True)
        _write_atomic(path / "ack.json", json.dumps({**ack, **counts}))
        del self.open[path]
        log.info("batch %s: %d presentations sent (%d flagged, %d of them kept back from a 1.0 "
                 "server), server accepted %d", ack["batch_id"], counts["sent"], counts["flagged"],
                 len(counts["flagged_not_sent"]), ack["accepted"])

    def _refused(self, path: Path, responses: Path, exc: ProtocolError) -> None:
        """A refusal no file can fix closes the folder (``closed.json``); any other awaits a new file."""
        reason = f"the server {'closed this batch' if exc.code == ErrorCode.BATCH_CLOSED else 'refused these results'}: {exc}"
        if exc.code not in CLOSED_CODES:
            log.warning("%s refused by the server (%s): %s", responses, self._reject(responses, reason), exc)
            return
        # closed.json first: the user loop must never see this folder without responses nor marker
        _write_atomic(path / "closed.json", json.dumps({"code": exc.code, "message": exc.message}))
        kept = self._reject(responses, reason, "This batch is closed (closed.json): there is "
                            "nothing to fix. The bridge no longer watches this folder and the "
                            "user loop skips it; stimuli still owed come in a newer batch folder.")
        batch_id = self.open.pop(path)["batch_id"]
        log.warning("%s: batch %s closed by the server, nothing to fix (%s; %s)", path, batch_id, exc, kept)

    @staticmethod
    def _reject(responses: Path, reason: str,
                then: str = "Write a corrected file; the bridge is waiting for it.") -> str:
        """Rename ``responses`` to ``responses.rejected-K.EXT`` and explain why in ``responses.error.txt``; what
        became of the file, for the log."""
        k = 1
        while (rejected := responses.with_name(f"responses.rejected-{k}{responses.suffix}")).exists():
            k += 1
        try:
            shutil.move(responses, rejected)
        except FileNotFoundError:  # deleted or renamed meanwhile: there is nothing to explain
            return "it is gone"
        _write_atomic(responses.with_name("responses.error.txt"),
                      f"{responses.name} was not sent (kept as {rejected.name}):\n{reason}\n{then}\n")
        return f"kept as {rejected.name}"


# --- CLI -----------------------------------------------------------------------------------------


def add_parser(rig_commands) -> None:
    bridge = rig_commands.add_parser(
        "bridge", help="exchange batches with a folder-based rig (MonkeyLogic, XDream)",
        description="Write every batch's images and manifest into a folder, wait for the rig's "
        "responses file (.mat, .csv or .json), validate it and send the results to the server. "
        "See docs/monkeylogic/README.md.")
    bridge.add_argument("--folder", type=Path, required=True, help="the folder the rig watches")
    add_connection_arguments(bridge, "rig")
    bridge.add_argument("--channels", type=positive_int,
                        help="recording channels (default: the number of --labels, else 1)")
    bridge.add_argument("--labels", help="comma-separated channel labels, e.g. elec1-u1,elec2-u1")
    bridge.add_argument("--poll", type=positive, default=0.2, metavar="SECONDS",
                        help="how often to look for a responses file (default 0.2)")
    bridge.add_argument("--settle", type=non_negative, default=SETTLE_S, metavar="SECONDS",
                        help="read a responses file once its size and modification time have not changed for "
                        f"this long, so a file still being written is not read (default {SETTLE_S:g}; 0: at once, "
                        "for rigs that write under another name and rename)")
    bridge.set_defaults(func=run)
    files = rig_commands.add_parser(
        "matlab-files", help="write the MonkeyLogic user loop and MATLAB helpers the bridge works with into a folder",
        description="Write the MATLAB files of the bridge's MonkeyLogic side (the user loop, the timing script, "
        "the helpers and actmax_count_spikes.m, the template you fill in) into FOLDER, the ones of this "
        "actmax version. A file there that differs (your settings in actmax_userloop.m, your recorder in "
        "actmax_count_spikes.m, or an older version's) is kept, with this version's beside it as NAME.m.new to "
        "compare, unless --force. See docs/monkeylogic/README.md.")
    files.add_argument("folder", type=Path, metavar="FOLDER", help="next to your MonkeyLogic task, or on MATLAB's path")
    files.add_argument("--force", action="store_true", help="replace files that differ (your edits are lost)")
    files.set_defaults(func=matlab_files)


def write_matlab_files(folder: Path, force: bool = False) -> dict[str, str]:
    """Copy ``rig_client/monkeylogic/*.m`` into ``folder`` (made if missing). A file there that differs from this
    version's (line endings aside) is kept unless ``force``, and this version's is written beside it as
    ``NAME.new``. Per file name: ``written``, ``up to date`` or ``kept``."""
    from importlib.resources import files

    sources = sorted((s for s in files("rig_client").joinpath("monkeylogic").iterdir() if s.name.endswith(".m")),
                     key=lambda s: s.name)
    if folder.exists() and not folder.is_dir():
        raise BridgeError(f"{folder} is a file: give the folder to write the MATLAB files into")
    if blocked := [str(folder / s.name) for s in sources if (folder / s.name).is_dir()]:
        raise BridgeError(f"{', '.join(blocked)}: a folder where a MATLAB file goes; move it away first")
    folder.mkdir(parents=True, exist_ok=True)
    done = {}
    for source in sources:
        target, text = folder / source.name, source.read_bytes()
        there = target.read_bytes() if target.exists() else None
        if there is not None and there.replace(b"\r\n", b"\n") == text.replace(b"\r\n", b"\n"):
            done[source.name] = "up to date"
        elif there is not None and not force:
            target.with_name(target.name + ".new").write_bytes(text)
            done[source.name] = "kept"
        else:
            target.write_bytes(text)
            done[source.name] = "written"
    return done


def matlab_files(args: argparse.Namespace) -> int:
    done = write_matlab_files(args.folder, args.force)
    print(f"MATLAB files of actmax's MonkeyLogic side in {args.folder}:")
    for name, what in done.items():
        print(f"  {name:<26} {what}" + (f": it differs from this actmax version's (your settings or recorder code?), "
                                       f"which is beside it as {name}.new to compare; --force replaces it"
                                       if what == "kept" else ""))
    return 0


def channel_labels(channels: int | None, labels: str | None) -> list[str]:
    names = [x.strip() for x in labels.split(",")] if labels else []
    n = channels or len(names) or 1
    if names and len(names) != n:
        raise BridgeError(f"--labels names {len(names)} channels, but the rig has {n}")
    return names or [f"ch{i}" for i in range(1, n + 1)]


def run(args: argparse.Namespace) -> int:
    from rig_client.client import RigClient
    from rig_client.version import package_version

    labels = channel_labels(args.channels, args.labels)
    folder = Path(args.folder).absolute()
    if not folder.parent.is_dir() or folder.exists() and not folder.is_dir():  # before the rig connects
        problem = "it is a file" if folder.parent.is_dir() else \
            f"its parent {folder.parent} does not exist (a typo, or a share not mounted?)"
        raise BridgeError(f"--folder {args.folder}: {problem}; give the folder the rig's task reads (made if missing, "
                          "in a folder that exists)")
    setup = {"rig_program": f"actmax rig bridge {package_version()}",
             "via": "BATCH and responses files in a folder (MonkeyLogic's actmax_* functions, or the rig's own task)"}
    with RigClient(args.endpoint, args.rig, channels=len(labels), labels=labels if args.labels else None,
                   setup=rig_setup(args, setup), **connection_keys(args)) as client:
        bridge = FolderBridge(client, args.folder, labels, poll_s=args.poll, settle_s=args.settle)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: bridge.stop.set())
        log.info("bridge: rig %r, %d channels, folder %s (pid %d)", args.rig, len(labels),
                 args.folder, os.getpid())
        bridge.run()
    return 0
