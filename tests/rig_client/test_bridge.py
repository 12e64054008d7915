"""The folder bridge: responses files in every format, their validation, and a whole session
with `actmax serve`, `actmax rig bridge` and a stand-in MonkeyLogic rig as three processes."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from sqlalchemy import select

from rig_client.bridge import BridgeError, FolderBridge, read_responses, write_batch
from rig_client.client import Batch, RigClient, Stimulus
from rig_client.protocol import encode_png
from server.store.models import Presentation as PresentationRow
from tests.rig_client.conftest import run_session, storage_fails

MANIFEST = {"batch_id": "b-1", "channels": 2, "response_window_ms": [50, 200],
            "stimuli": [{"order": 1, "stimulus_id": "st-a", "kind": "synthetic", "file": "0001.png"},
                        {"order": 2, "stimulus_id": "ref-1", "kind": "reference", "file": "0002.png"}]}
ONSETS = [1764250000.5, 1764250001.25]


@contextlib.contextmanager
def running(bridge: FolderBridge) -> Iterator[FolderBridge]:
    """``bridge`` polling its folder on a thread of its own, stopped and joined on the way out."""
    runner = threading.Thread(target=bridge.run)
    runner.start()
    try:
        yield bridge
    finally:
        bridge.stop.set()
        runner.join(10)


def write_all_formats(folder: Path) -> list[Path]:
    scipy.io.savemat(folder / "responses.mat", {
        "stimulus_id": np.array(["st-a", "ref-1"], dtype=object), "onset": np.array(ONSETS),
        "rates": np.array([[10.0, 1.5], [20.0, 0.0]]), "fixation_broken": np.array([0, 1], np.uint8),
        "dropped_frames": np.array([0, 0]), "photodiode_onset": np.array([ONSETS[0] + 0.01, np.nan]),
        "baseline_rates": np.array([[2.0, 0.5], [1.0, 0.0]]), "baseline_window_ms": [-100, 0]})
    (folder / "responses.csv").write_text(
        "stimulus_id,onset,rate_1,rate_2,fixation_broken,dropped_frames,photodiode_onset,"
        "baseline_1,baseline_2,baseline_window_start_ms,baseline_window_end_ms\n"
        f"st-a,{ONSETS[0]},10,1.5,0,0,{ONSETS[0] + 0.01},2,0.5,-100,0\n"
        f"ref-1,{ONSETS[1]},20,0,1,0,,1,0,-100,0\n")
    (folder / "responses.json").write_text(json.dumps({"presentations": [
        {"stimulus_id": "st-a", "onset": ONSETS[0], "rates": [10, 1.5], "fixation_broken": False,
         "photodiode_onset": ONSETS[0] + 0.01, "baseline_rates": [2, 0.5],
         "baseline_window_ms": [-100, 0]},
        {"stimulus_id": "ref-1", "onset": ONSETS[1], "rates": [20, 0], "fixation_broken": True,
         "baseline_rates": [1, 0], "baseline_window_ms": [-100, 0]}]}))
    return [folder / f"responses.{ext}" for ext in ("mat", "csv", "json")]


def test_every_format_reads_the_same_presentations(tmp_path):
    read = [[p.to_json() for p in read_responses(path, MANIFEST)] for path in write_all_formats(tmp_path)]
    assert read[0] == read[1] == read[2]
    first, second = read[0]
    assert first["rates"] == [10.0, 1.5] and first["window_ms"] == [50.0, 200.0]
    assert first["photodiode_onset"] == pytest.approx(ONSETS[0] + 0.01)
    assert "photodiode_onset" not in second and second["fixation_broken"] is True
    assert second["baseline_rates"] == [1.0, 0.0] and second["baseline_window_ms"] == [-100.0, 0.0]
    assert first["presentation_id"] != second["presentation_id"]  # stable per batch and row


BAD_JSON = [
    ({"stimulus_id": "nope", "onset": 1.7e9, "rates": [1, 2]}, "not in this batch's manifest"),
    ({"stimulus_id": "st-a", "onset": 1.7e9, "rates": [1]}, "rates must have 2 values"),
    ({"stimulus_id": "st-a", "rates": [1, 2]}, "onset is required"),
    ({"stimulus_id": "st-a", "onset": "soon", "rates": [1, 2]}, "onset must be a number"),
    ({"stimulus_id": "st-a", "onset": 1.7e9, "rates": [1, 2], "dropped_frames": 1.5},
     "dropped_frames must be a number"),
    ({"stimulus_id": "st-a", "onset": 1.7e9, "rates": [1, 2], "baseline_rates": [0, 0]},
     "baseline rates and baseline_window_ms together"),
    ({"stimulus_id": "st-a", "onset": 1.7e9, "rates": [1, 2], "baseline_rates": [0, 0],
      "baseline_window_ms": [0, 100]}, "baseline_window_ms"),
    ({"stimulus_id": "st-a", "onset": -1.0, "rates": [1, 2]}, "onset must be unix time in seconds"),
    ({"stimulus_id": "st-a", "onset": 739953.5, "rates": [1, 2]},  # MATLAB's now, a datenum (days)
     r"onset 739953.5 is 1970-01-09 13:32:33 UTC as unix time: give unix time in seconds \(MATLAB: posixtime\("),
    ({"stimulus_id": "st-a", "onset": 12.5, "rates": [1, 2]}, "onset 12.5 is 1970-01-01 00:00:12 UTC"),  # trial time
    ({"stimulus_id": "st-a", "onset": 1.7e9, "rates": [1, 2], "photodiode_onset": 1764250000500},
     r"presentation 1 \(st-a\): photodiode_onset must be unix time in seconds \(not milliseconds\); "
     "got 1764250000500"),
]


@pytest.mark.parametrize("row, words", BAD_JSON)
def test_bad_rows_are_named(tmp_path, row, words):
    (tmp_path / "responses.json").write_text(json.dumps({"presentations": [row]}))
    with pytest.raises(BridgeError, match=words):
        read_responses(tmp_path / "responses.json", MANIFEST)


@pytest.mark.parametrize("name, content, words", [
    ("responses.json", "[1, 2]", "presentations"),
    ("responses.json", '{"presentations": [{"onset": NaN}]}', "NaN is not valid JSON"),
    ("responses.csv", "stimulus_id,onset,rate_1\nst-a,1700000000.0,5\n", "rate_1..rate_2 must all be filled"),
    ("responses.csv", "stimulus_id,onset,rate_1,rate_2,fixation_brokn\nst-a,1700000000,5,5,1\n",
     "unknown column 'fixation_brokn'"),
    ("responses.json", '{"presentations": [{"stimulus_id": "st-a", "rate": [1, 2]}]}', "unknown field 'rate'"),
    ("responses.mat", "MATLAB 5.0 MAT-file, garbage", "cannot be read|scipy can read"),
    ("responses.csv", "stimulus_id,onset,rate_1,rate_2\nst-a,1700000000.0,5,5,7\n",
     "line 2: 5 fields but the header names 4 columns"),
    ("responses.csv", "", "responses.csv is empty: write the whole file under another name"),
    ("responses.json", '{"presentations": [{"stimulus_id": "st', r"^responses.json cannot be read: Unterminated "
     r"string .*\. Was it still being written\? Write the whole file under another name, then rename it to "
     "responses.json"),
    ("responses.csv", "\n\n", "responses.csv has no header line"),
    ("responses.json", '{"presentations": []}', "^responses.json has no presentations: write one row per "
     r"presentation shown, or no file while there is none \(the batch waits for one\)$"),
    ("responses.csv", "stimulus_id,onset,rate_1,rate_2\r\n", "^responses.csv has no presentations"),
    ("responses.csv", f"stimulus_id,onset,rate_1,rate_2,rate_2\nst-a,{ONSETS[0]},5,5,6\n",
     r"^column 'rate_2' appears more than once in the header; name each column once \(docs/monkeylogic/README.md\)$"),
    ("responses.csv", f"stimulus_id,onset,onset,rate_1,rate_2\nst-a,{ONSETS[0]},{ONSETS[1]},5,5\n",
     "^column 'onset' appears more than once in the header"),
    ("responses.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("responses.csv", f"stimulus_id,onset,rate_1,rate_2\n\nst-a,{ONSETS[0]},5,5\nref-1,1764250001250,5,5\n",
     r"^line 4, presentation 2 \(ref-1\): onset must be unix time in seconds \(not milliseconds\)"),
])
def test_bad_files_are_named(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(BridgeError, match=words):
        read_responses(tmp_path / name, MANIFEST)


GERMAN_EXCEL = f"stimulus_id;onset;rate_1;rate_2\r\nst-a;{ONSETS[0]};10,5;1,5\r\n".replace(".", ",")


@pytest.mark.parametrize("name, content, message", [
    ("responses.csv", "stimulus_id,onset,rate_1,rate_2\n".encode("utf-16"),
     "responses.csv is not UTF-8 text (it starts with a UTF-16 byte-order mark): save it as UTF-8 "
     "(in Excel: Save As, CSV UTF-8)"),
    ("responses.json", codecs.BOM_UTF16_BE + '{"presentations": []}'.encode("utf-16-be"),
     "responses.json is not UTF-8 text (it starts with a UTF-16 byte-order mark): save it as UTF-8"),
    ("responses.json", '{"presentations": []}'.encode("utf-32"),
     "responses.json is not UTF-8 text (it starts with a UTF-32 byte-order mark): save it as UTF-8"),
    ("responses.csv", f"stimulus_id,onset,rate_1,rate_2\nGröße,{ONSETS[0]},5,5\n".encode("cp1252"),
     "responses.csv is not UTF-8 text (byte 0xf6 in line 2): save it as UTF-8 (in Excel: Save As, CSV UTF-8)"),
    ("responses.csv", GERMAN_EXCEL.encode("utf-8-sig"),
     "the separator must be a comma; this file uses ';' (as Excel writes in a German locale): save it with "
     "commas, decimals with a point (docs/monkeylogic/README.md)"),
])
def test_a_file_in_another_encoding_or_with_semicolons_is_refused_for_that(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BridgeError) as error:
        read_responses(tmp_path / name, MANIFEST)
    assert str(error.value) == message


def test_a_file_cut_inside_a_character_is_refused_as_perhaps_still_being_written(tmp_path):
    (tmp_path / "responses.csv").write_bytes("stimulus_id,onset,rate_1,rate_2\nGrö".encode()[:-1])
    with pytest.raises(BridgeError, match="^responses.csv cannot be read: it ends inside a character. "
                                          r"Was it still being written\?"):
        read_responses(tmp_path / "responses.csv", MANIFEST)


def test_a_utf8_byte_order_mark_and_crlf_are_read_in_json_as_in_csv(tmp_path):
    expected = [p.to_json() for p in read_responses(write_all_formats(tmp_path)[2], MANIFEST)]
    for path in write_all_formats(tmp_path)[1:]:  # as C# or Windows PowerShell 5 writes UTF-8
        path.write_bytes(codecs.BOM_UTF8 + path.read_bytes().replace(b"\n", b"\r\n"))
        assert [p.to_json() for p in read_responses(path, MANIFEST)] == expected


def test_the_bridge_writes_its_files_in_utf8_whatever_the_locale(tmp_path):
    """Under a Latin-1 locale (a Windows rig's code page is alike), a rejection naming a column '電極' is
    written to responses.error.txt in UTF-8, as the manifests are, rather than crashing the bridge."""
    (tmp_path / "responses.csv").write_text(f"stimulus_id,onset,電極\nst-a,{ONSETS[0]},5\n", encoding="utf-8")
    script = ("import json, locale, sys; from pathlib import Path; from rig_client.bridge import FolderBridge\n"
              "if locale.getpreferredencoding() != 'ISO-8859-1': sys.exit(77)\n"
              "folder = Path(sys.argv[1]); manifest = json.loads(sys.argv[2])\n"
              "FolderBridge(None, folder, ['ch1', 'ch2'])._send(folder, folder / 'responses.csv', manifest)\n")
    env = {**os.environ, "LC_ALL": "de_DE.ISO-8859-1", "PYTHONUTF8": "0", "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), json.dumps(MANIFEST)], env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace")
    if done.returncode == 77:
        pytest.skip("no de_DE.ISO-8859-1 locale here (localedef -i de_DE -f ISO-8859-1 de_DE.ISO-8859-1)")
    assert done.returncode == 0, done.stderr
    assert "unknown column '電極'" in (tmp_path / "responses.error.txt").read_text(encoding="utf-8")


def test_an_unknown_csv_column_is_answered_with_the_csv_columns(tmp_path):
    (tmp_path / "responses.csv").write_text("stimulus_id,onset,rate_1,rate_2,baseline_rates\n"
                                            f"st-a,{ONSETS[0]},5,5,1\n")
    with pytest.raises(BridgeError) as error:
        read_responses(tmp_path / "responses.csv", MANIFEST)
    assert str(error.value) == (
        "unknown column 'baseline_rates'; expected some of stimulus_id, onset, rate_1..rate_2, "
        "window_start_ms, window_end_ms, fixation_broken, dropped_frames, photodiode_onset, "
        "baseline_1..baseline_2, baseline_window_start_ms, baseline_window_end_ms, presentation_id "
        "(docs/monkeylogic/README.md)")


def test_a_file_too_deep_to_parse_is_rejected_like_any_bad_file(tmp_path):
    responses = tmp_path / "responses.json"
    responses.write_text('{"presentations": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bridge = FolderBridge(None, tmp_path, ["ch1", "ch2"])  # no client: nothing is sent
    bridge._send(tmp_path, responses, MANIFEST)
    assert not bridge.uploads
    assert not responses.exists() and (tmp_path / "responses.rejected-1.json").exists()
    assert "nested too deeply" in (tmp_path / "responses.error.txt").read_text()


def test_mat_with_wrong_shapes(tmp_path):
    scipy.io.savemat(tmp_path / "responses.mat", {"stimulus_id": np.array(["st-a"], dtype=object),
                                                  "onset": [1.0, 2.0], "rates": [[1.0, 2.0]]})
    with pytest.raises(BridgeError, match="'onset' is a vector of 2 values; expected 1×1"):
        read_responses(tmp_path / "responses.mat", MANIFEST)
    scipy.io.savemat(tmp_path / "responses.mat", {"stimulus_id": np.array(["st-a"], dtype=object),
                                                  "onset": [1.0], "rate": [[1.0, 2.0]]})
    with pytest.raises(BridgeError, match="unknown variable 'rate'"):
        read_responses(tmp_path / "responses.mat", MANIFEST)


THREE_ROWS = {"stimulus_id": np.array(["st-a", "ref-1", "st-a"], dtype=object),
              "onset": np.array([*ONSETS, ONSETS[1] + 1]), "rates": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
              "baseline_rates": np.array([[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]), "baseline_window_ms": [-100, 0]}


@pytest.mark.parametrize("key", ["rates", "baseline_rates"])
def test_a_transposed_mat_matrix_is_refused_naming_the_shape_found_and_wanted(tmp_path, key):
    """3 presentations of 2 channels saved as 2×3 have as many values as 3×2, but read row by row they would
    scramble presentations and channels: refused, naming both shapes; so is a flat vector of all 6."""
    scipy.io.savemat(tmp_path / "responses.mat", {**THREE_ROWS, key: THREE_ROWS[key].T})
    with pytest.raises(BridgeError) as error:
        read_responses(tmp_path / "responses.mat", MANIFEST)
    assert str(error.value) == (f"variable {key!r} is 2×3 (transposed: save {key}' instead); expected 3×2 (one "
                                "row per presentation, as stimulus_id, one column per channel)")
    scipy.io.savemat(tmp_path / "responses.mat", {**THREE_ROWS, key: THREE_ROWS[key].reshape(-1)})
    with pytest.raises(BridgeError, match=f"^variable {key!r} is a vector of 6 values; expected 3×2"):
        read_responses(tmp_path / "responses.mat", MANIFEST)


def test_mat_vectors_are_read_in_either_orientation_where_that_cannot_scramble(tmp_path):
    """n×channels as written; one value per presentation as 1×n or n×1; the rates of one presentation as
    1×channels or channels×1; the rates of one channel as 1×n (loadmat drops a dimension of 1 either way)."""
    path = tmp_path / "responses.mat"
    scipy.io.savemat(path, {**THREE_ROWS, "onset": THREE_ROWS["onset"].reshape(1, 3)})
    assert [(p.stimulus_id, p.onset, p.rates, p.baseline_rates) for p in read_responses(path, MANIFEST)] == [
        ("st-a", ONSETS[0], [1.0, 2.0], [0.5, 1.0]), ("ref-1", ONSETS[1], [3.0, 4.0], [1.5, 2.0]),
        ("st-a", ONSETS[1] + 1, [5.0, 6.0], [2.5, 3.0])]
    scipy.io.savemat(path, {"stimulus_id": np.array(["st-a"], dtype=object), "onset": ONSETS[0],
                            "rates": np.array([[7.0], [8.0]])})
    assert [p.rates for p in read_responses(path, MANIFEST)] == [[7.0, 8.0]]
    scipy.io.savemat(path, {**THREE_ROWS, "rates": np.array([[1.0, 2.0, 3.0]]), "baseline_rates": [0.5, 1, 2]})
    assert [(p.rates, p.baseline_rates) for p in read_responses(path, {**MANIFEST, "channels": 1})] == [
        ([1.0], [0.5]), ([2.0], [1.0]), ([3.0], [2.0])]


@pytest.mark.parametrize("value", [2, -1])
def test_fixation_broken_other_than_true_false_0_or_1_is_refused_in_every_format(tmp_path, value):
    """fixation_broken 2 or -1 (a trial error code, say) was read as true: refused, naming the row and value."""
    rows = [{"stimulus_id": "st-a", "onset": ONSETS[0], "rates": [1, 2], "fixation_broken": False},
            {"stimulus_id": "ref-1", "onset": ONSETS[1], "rates": [3, 4], "fixation_broken": value}]
    (tmp_path / "responses.json").write_text(json.dumps({"presentations": rows}))
    (tmp_path / "responses.csv").write_text(f"stimulus_id,onset,rate_1,rate_2,fixation_broken\nst-a,{ONSETS[0]},1,2,"
                                            f"false\nref-1,{ONSETS[1]},3,4,{value}\n")
    scipy.io.savemat(tmp_path / "responses.mat", {"stimulus_id": np.array(["st-a", "ref-1"], dtype=object),
                                                  "onset": ONSETS, "rates": [[1, 2], [3, 4]],
                                                  "fixation_broken": np.array([0, value], np.int8)})
    for ext, got, line in (("json", value, ""), ("csv", f"'{value}'", "line 3, "), ("mat", float(value), "")):
        with pytest.raises(BridgeError) as error:
            read_responses(tmp_path / f"responses.{ext}", MANIFEST)
        assert str(error.value) == f"{line}presentation 2 (ref-1): fixation_broken must be true or false (1 or 0); " \
                                   f"got {got}"
    (tmp_path / "responses.csv").write_text(f"stimulus_id,onset,rate_1,rate_2,fixation_broken\nst-a,{ONSETS[0]},1,2,"
                                            f"TRUE\nref-1,{ONSETS[1]},3,4,0\n")
    assert [p.fixation_broken for p in read_responses(tmp_path / "responses.csv", MANIFEST)] == [True, False]


def test_a_responses_file_that_vanishes_is_not_there_yet(tmp_path):
    """A rig that deletes or rewrites responses.json while the bridge (--settle 0) reads it: nothing is
    rejected for a file that is gone and the bridge does not stop; a file there is still checked."""
    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    path = write_batch(tmp_path, Batch("b-1", "s", "t", 0, (50.0, 200.0), [Stimulus("st-a", "synthetic", png)]),
                       ["ch1"])
    bridge = FolderBridge(None, tmp_path, ["ch1"], settle_s=0)  # no client: only bad files, never sent
    responses = path / "responses.json"
    bridge._send(path, responses, bridge.open[path])
    assert FolderBridge._reject(responses, "why") == "it is gone"
    assert sorted(p.name for p in path.iterdir()) == ["0001.png", "manifest.csv", "manifest.json"]

    def rewrite(stop: threading.Event) -> None:
        while not stop.is_set():
            (path / "writing.json").write_text('{"presentations": [{"stimulus_id": "st-a"}]}')  # no onset
            (path / "writing.json").replace(responses)
            responses.unlink(missing_ok=True)

    stop = threading.Event()
    rig = threading.Thread(target=rewrite, args=(stop,))
    rig.start()
    try:
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            bridge.check()
    finally:
        stop.set()
        rig.join(10)
    (path / "writing.json").write_text('{"presentations": [{"stimulus_id": "st-a"}]}')
    (path / "writing.json").replace(responses)
    bridge.check()
    assert "onset is required" in (path / "responses.error.txt").read_text() and not responses.exists()


def test_a_rejection_the_bridge_cannot_write_is_logged_and_the_other_folders_are_still_checked(tmp_path, caplog):
    """responses.error.txt cannot be written into one folder (a folder is in the way; a folder the bridge may not
    write into is alike): the bridge logs that once, naming the folder and the fix, and rejects the other
    folder's bad file as usual."""
    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    blocked, other = (write_batch(tmp_path, Batch(f"b-{i}", "s", f"t{i}", 0, (50.0, 200.0),
                                                  [Stimulus("st-a", "synthetic", png)]), ["ch1"]) for i in (1, 2))
    (blocked / "responses.error.txt").mkdir()
    for path in (blocked, other):
        (path / "responses.json").write_text('{"presentations": [{"stimulus_id": "st-a"}]}')  # no onset
    bridge = FolderBridge(None, tmp_path, ["ch1"], settle_s=0)  # no client: only bad files, never sent
    for _ in range(3):
        bridge.check()
    assert "onset is required" in (other / "responses.error.txt").read_text()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{blocked}: the bridge cannot use this batch folder ([Errno 21]")
    assert "make it readable and writable for the user the bridge runs as" in errors[0]


def test_a_damaged_or_stray_manifest_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    """A batch folder whose manifest.json is cut short, or is some other JSON file (no batch_id), stopped the
    bridge at its start or at its next batch: the bridge skips such a folder, saying so, and goes on."""
    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    good = write_batch(tmp_path, Batch("b-1", "s", "t", 0, (50.0, 200.0), [Stimulus("st-a", "synthetic", png)]),
                       ["ch1"])
    cut, stray = tmp_path / "batch-000002" / "manifest.json", tmp_path / "batch-000003" / "manifest.json"
    for manifest, text in ((cut, good.joinpath("manifest.json").read_text()[:40]), (stray, '{"stimuli": []}')):
        manifest.parent.mkdir()
        manifest.write_text(text)
    bridge = FolderBridge(None, tmp_path, ["ch1"])
    assert list(bridge.open) == [good]
    new = bridge.add(Batch("b-4", "s", "t", 1, (50.0, 200.0), [Stimulus("st-b", "synthetic", png)]))
    assert new.name == "batch-000004" and list(bridge.open) == [good, new]
    assert (good / "superseded.json").exists()
    cut_said, stray_said = sorted({r.getMessage() for r in caplog.records if r.levelname == "WARNING"})
    assert cut_said.startswith(f"{cut} is not a batch manifest the bridge wrote (it cannot be read (Expecting ")
    assert stray_said == f"{stray} is not a batch manifest the bridge wrote (it has no 'batch_id'): the bridge " \
                         f"skips that folder; move it out of {tmp_path} (or restore the file)"
    assert cut_said.endswith(stray_said.split("):", 1)[1])


def stored_presentations(process, rig: str) -> list[tuple]:
    """(presentation_id, stimulus_id, onset, rates, trial facts) of every presentation of ``rig``."""
    with sqlite3.connect(process.data_dir / "actmax.sqlite") as db:
        return [(pid, sid, onset, json.loads(rates), json.loads(facts) if facts else None)
                for pid, sid, onset, rates, facts in db.execute(
                    "SELECT presentation_id, stimulus_id, onset, rates_json, trial_json FROM presentations "
                    "WHERE rig = ? ORDER BY id", (rig,))]


def generation_statuses(process, thread_id: int) -> list[str]:
    with sqlite3.connect(process.data_dir / "actmax.sqlite") as db:
        return [s for (s,) in db.execute("SELECT status FROM generations WHERE thread_id = ?", (thread_id,))]


@pytest.mark.slow
def test_session_runs_to_completion_through_the_folder(tmp_path, actmax_server):
    from server.launch import stop
    from tests.server.test_end_to_end import wait_until

    process, api = actmax_server
    population, n_references, n_generations = 4, 1, 2
    folder, rows_log = tmp_path / "rig-folder", tmp_path / "rig-rows.jsonl"
    with open(tmp_path / "bridge.log", "wb") as bridge_log, open(tmp_path / "rig.log", "wb") as rig_log:
        bridge = subprocess.Popen([sys.executable, "-m", "server.cli", "rig", "bridge", "--folder", str(folder),
                                   "--endpoint", process.zmq_endpoint, "--rig", "ml-rig", "--channels", "2",
                                   "--labels", "elec1-u1,elec2-u1", "--poll", "0.05"],
                                  stdout=bridge_log, stderr=subprocess.STDOUT, env=os.environ)
        rig = subprocess.Popen([sys.executable, str(Path(__file__).with_name("folder_rig.py")), str(folder),
                                str(rows_log), str(population + n_references)],
                               stdout=rig_log, stderr=subprocess.STDOUT)
    processes = [(process.process, process.log_path), (bridge, tmp_path / "bridge.log"), (rig, tmp_path / "rig.log")]
    try:
        thread = run_session(api, "ml-rig", population=population, references=n_references,
                             generations=n_generations)
        wait_until(lambda: api.get(f"/threads/{thread['id']}")["status"] == "finished", 240,
                   "the thread to finish", processes)
        # the thread finishes when the server accepts the last RESULTS; the bridge acknowledges after
        wait_until(lambda: all((b / "ack.json").exists() for b in folder.glob("batch-*")), 30,
                   "the bridge to acknowledge every batch", processes)
    finally:
        for p in (rig, bridge):
            stop(p)

    written = [json.loads(line) for line in rows_log.read_text().splitlines()]
    flagged = [r for r in written if r["fixation_broken"]]
    assert len(flagged) == n_generations  # one broken fixation per full batch
    stored = stored_presentations(process, "ml-rig")
    assert generation_statuses(process, thread["id"]) == ["complete"] * n_generations
    assert len({pid for pid, *_ in stored}) == len(stored)  # each presentation stored once
    # every row the rig wrote, flagged ones included (the server speaks 1.1), stored once with its facts
    assert Counter((sid, round(onset, 6)) for _, sid, onset, _, _ in stored) == \
        Counter((r["stimulus_id"], round(r["onset"], 6)) for r in written)
    for r in written:
        (rates, facts), = [(rates, facts) for _, sid, onset, rates, facts in stored
                           if sid == r["stimulus_id"] and abs(onset - r["onset"]) < 1e-6]
        np.testing.assert_allclose(rates, r["rates"])
        assert facts["fixation_broken"] is bool(r["fixation_broken"]) and facts["dropped_frames"] == 0
        assert facts["baseline_rates"] == [3.0, 3.0] and facts["baseline_window_ms"] == [-100.0, 0.0]
        assert facts["photodiode_onset"] == pytest.approx(r["onset"] + 0.012)
    # each broken-fixation stimulus, and only it, was shown again next (a re-queue round), then scored
    batch_sizes = Counter(r["batch"] for r in written)
    for r in flagged:
        again = next(w for w in written[written.index(r) + 1:] if w["stimulus_id"] == r["stimulus_id"])
        assert batch_sizes[again["batch"]] == 1 and not again["fixation_broken"]
    scores = [g["scores"] for g in api.get(f"/threads/{thread['id']}/generations")["items"]]
    assert all(np.isfinite(s) for gen in scores for s in gen)
    assert api.get(f"/sessions/{thread['session_id']}")["channel_labels"] == ["elec1-u1", "elec2-u1"]
    batches = sorted(folder.glob("batch-*"))
    assert (batches[0] / "responses.rejected-1.mat").exists()  # the bad first answer, kept
    assert not (batches[0] / "responses.error.txt").exists()  # cleared by the corrected file
    error = rows_log.with_suffix(".error").read_text()
    assert "'not-in-batch' is not in this batch's manifest" in error and "responses.rejected-1.mat" in error


def batch_folders(folder: Path) -> list[tuple[Path, dict]]:
    return [(m.parent, json.loads(m.read_text())) for m in sorted(folder.glob("batch-*/manifest.json"))]


def answer_folder(path: Path, manifest: dict) -> None:
    """Responses for every stimulus of a batch folder, written as the README says (then renamed)."""
    (path / "writing.json").write_text(json.dumps({"presentations": [
        {"stimulus_id": s["stimulus_id"], "onset": time.time(), "rates": [5.0]} for s in manifest["stimuli"]]}))
    (path / "writing.json").rename(path / "responses.json")


@pytest.mark.slow
def test_the_bridge_writes_every_batch_and_closes_dead_ones(tmp_path, endpoint):
    """Against the engine with a 3 s batch timeout. A folder left from an earlier run names a batch
    the server never sent; generation 0 goes unanswered, so its re-queue round arrives while its
    first folder waits and supersedes it. The re-queue round is answered (the generation is scored
    and the next one written), then the first round late: stored unscored and answered batch_closed,
    that folder is closed, as is the leftover one (unknown_batch), and the rest goes on."""
    from tests.server.test_end_to_end import wait_until
    from tests.server.test_engine import RIG, LiveEngine

    folder = tmp_path / "rig-folder"
    folder.mkdir()
    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    leftover = write_batch(folder, Batch("never-sent", "s0", "t0", 0, (50.0, 200.0),
                                         [Stimulus("st-old", "synthetic", png)]), ["ch1"])
    with LiveEngine(tmp_path / "data", endpoint, batch_timeout_s=3.0) as live:
        live.create(n_generations=2)
        with RigClient(endpoint, RIG, channels=1) as client:
            bridge = FolderBridge(client, folder, ["ch1"], poll_s=0.05)
            with running(bridge):
                answer_folder(*batch_folders(folder)[0])
                (_, _), (first, gen0), (requeue, again) = wait_until(
                    lambda: len(found := batch_folders(folder)) >= 3 and found[:3], 60,
                    "the re-queue round of generation 0")
                assert (again["generation"], again["thread_id"]) == (0, gen0["thread_id"])
                assert {s["stimulus_id"] for s in again["stimuli"]} == {s["stimulus_id"] for s in gen0["stimuli"]}
                assert json.loads((first / "superseded.json").read_text()) == {
                    "superseded_by": again["batch_id"], "folder": requeue.name, "generation": 0}
                answer_folder(requeue, again)
                wait_until(lambda: (requeue / "ack.json").exists(), 30, "the re-queue round's ACK")
                _, (nxt, gen1) = wait_until(lambda: len(found := batch_folders(folder)) >= 4 and found[2:4], 60,
                                            "generation 1")
                assert gen1["generation"] == 1 and not (nxt / "superseded.json").exists()
                answer_folder(first, gen0)  # the user loop had begun it: too late
                wait_until(lambda: (first / "closed.json").exists(), 30, "the late round to be closed")
                with live.sessions() as db:  # the animal's trials of it are kept all the same
                    late = db.scalars(select(PresentationRow.stimulus_id)
                                      .where(PresentationRow.batch_id == gen0["batch_id"])).all()
                assert sorted(late) == sorted(s["stimulus_id"] for s in gen0["stimuli"])
    assert json.loads((first / "closed.json").read_text())["code"] == "batch_closed"
    assert (first / "responses.rejected-1.json").exists() and not (first / "ack.json").exists()
    error = (first / "responses.error.txt").read_text()
    assert "batch_closed" in error and "nothing to fix" in error and "corrected" not in error
    assert json.loads((leftover / "closed.json").read_text())["code"] == "unknown_batch"
    assert first not in bridge.open and leftover not in bridge.open and nxt in bridge.open


@pytest.mark.slow
def test_a_responses_file_written_in_two_halves_is_read_once_it_is_whole(tmp_path, endpoint):
    """A rig writes responses.json in place (not renamed), half of it at a time: the bridge reads the file
    only once it has stopped changing for ``settle_s``, and sends it whole; nothing is rejected."""
    from tests.server.test_end_to_end import wait_until
    from tests.server.test_engine import RIG, LiveEngine

    folder = tmp_path / "rig-folder"
    with LiveEngine(tmp_path / "data", endpoint) as live:
        live.create(n_generations=1)
        with RigClient(endpoint, RIG, channels=1) as client:
            bridge = FolderBridge(client, folder, ["ch1"], poll_s=0.05, settle_s=2.0)
            with running(bridge):
                (path, manifest), = wait_until(lambda: batch_folders(folder), 60, "the batch")
                text = json.dumps({"presentations": [{"stimulus_id": s["stimulus_id"], "onset": time.time(),
                                                      "rates": [5.0]} for s in manifest["stimuli"]]})
                with open(path / "responses.json", "w") as f:
                    f.write(text[:len(text) // 2])
                    f.flush()
                    deadline = time.monotonic() + 30
                    while path / "responses.json" not in bridge.seen:  # until the bridge has seen the half file
                        assert time.monotonic() < deadline, "the bridge never looked at the responses file"
                        time.sleep(0.01)
                    f.write(text[len(text) // 2:])
                ack = json.loads(wait_until(lambda: (path / "ack.json").exists() and (path / "ack.json").read_text(),
                                            60, "the ACK"))
    assert ack["accepted"] == len(manifest["stimuli"])
    assert sorted(p.name for p in path.glob("responses*")) == ["responses.json"]


@pytest.mark.slow
def test_results_the_server_could_not_store_reach_it_once_it_can(tmp_path, actmax_server):
    """The server's storage fails (a full disk) when the bridge sends a folder's responses: the shared
    RigClient sends them again until the server stores them. The folder waits and then gets ``ack.json``;
    the responses file is not rejected (there is nothing to correct)."""
    from tests.server.test_end_to_end import wait_until

    process, api = actmax_server
    run_session(api, "retry-ml-rig", population=4, references=1, generations=2)
    folder = tmp_path / "rig-folder"
    with RigClient(process.zmq_endpoint, "retry-ml-rig", channels=1, reconnect_max_s=0.2) as client:
        bridge = FolderBridge(client, folder, ["ch1"], poll_s=0.05)
        with running(bridge):
            (path, manifest), = wait_until(lambda: batch_folders(folder), 60, "the first batch")
            with storage_fails(process):
                answer_folder(path, manifest)
                wait_until(lambda: client.errors, 30, "the server's ERROR")
            ack = json.loads(wait_until(lambda: (path / "ack.json").exists() and (path / "ack.json").read_text(),
                                        60, "the ACK"))
            wait_until(lambda: len(batch_folders(folder)) == 2, 60, "generation 1")
    assert {e["code"] for e in client.errors} == {"internal"}
    assert (ack["accepted"], ack["duplicates"]) == (len(manifest["stimuli"]), 0)
    assert sorted(p.name for p in path.glob("responses*")) == ["responses.json"]


def test_a_384_channel_responses_file_over_the_message_limit_is_sent_and_stored_whole(tmp_path, endpoint):
    """A MonkeyLogic rig with 384 channels shows each of 60 images and 2 references four times and writes the
    spike counts over a 150 ms window (rates such as 13.333333333333334): 1.4 MB of responses, over the 1 MiB
    a RESULTS may hold. The bridge sends the file as it is (the client splits it), the folder gets ack.json,
    nothing is rejected, and the server stores every rate as written and scores the generation."""
    from server.store.models import Generation
    from tests.server.test_end_to_end import wait_until
    from tests.server.test_engine import RIG, LiveEngine

    folder, labels = tmp_path / "rig-folder", [f"imec0-ch{i:03d}" for i in range(384)]
    rng = np.random.default_rng(3)
    with LiveEngine(tmp_path / "data", endpoint) as live:
        thread_id = live.create(optimizer_params={"population": 60}, n_generations=1)
        with RigClient(endpoint, RIG, channels=384, labels=labels) as client:
            bridge = FolderBridge(client, folder, labels, poll_s=0.05, settle_s=0)
            with running(bridge):
                (path, manifest), = wait_until(lambda: batch_folders(folder), 60, "the batch")
                rows = [{"stimulus_id": s["stimulus_id"], "onset": time.time(),
                         "rates": (rng.poisson(10, 384) / 0.15).tolist()} for _ in range(4) for s in manifest["stimuli"]]
                (path / "writing.json").write_text(json.dumps({"presentations": rows}, separators=(",", ":")))
                assert (path / "writing.json").stat().st_size > 2**20
                (path / "writing.json").rename(path / "responses.json")
                wait_until(lambda: path not in bridge.open or (path / "responses.error.txt").exists(), 60,
                           "the ACK or a rejection")
        assert not (path / "responses.error.txt").exists(), (path / "responses.error.txt").read_text()
        ack = json.loads((path / "ack.json").read_text())
        with live.sessions() as db:
            stored = db.execute(select(PresentationRow.stimulus_id, PresentationRow.rates_json)).all()
            status = db.scalars(select(Generation.status).where(Generation.thread_id == thread_id)).one()
    assert (ack["accepted"], ack["duplicates"], ack["sent"]) == (len(rows), 0, len(rows))
    assert sorted(p.name for p in path.glob("responses*")) == ["responses.json"]
    assert sorted(map(tuple, stored)) == sorted((r["stimulus_id"], r["rates"]) for r in rows)
    assert status == "complete"


def test_files_in_other_encodings_are_refused_for_that_and_a_utf8_bom_json_is_stored(tmp_path, endpoint):
    """A rig on Windows writes a UTF-16 CSV (Excel's "Unicode text"), then a German Excel's CSV (';' and
    decimal commas): each is refused saying what is wrong with it, not that it was perhaps half-written,
    and the bridge waits on. Then responses.json with a UTF-8 byte-order mark and CRLF lines (as C# and
    Windows PowerShell 5 write it) is sent and stored."""
    from tests.server.test_end_to_end import wait_until
    from tests.server.test_engine import RIG, LiveEngine

    folder = tmp_path / "rig-folder"

    def write(path: Path, name: str, data: bytes) -> None:
        (path / "writing.tmp").write_bytes(data)
        (path / "writing.tmp").rename(path / name)

    def refusal(path: Path, k: int, ext: str) -> str:
        return wait_until(lambda: (path / f"responses.rejected-{k}.{ext}").exists() and f"rejected-{k}." in (
            text := (path / "responses.error.txt").read_text(encoding="utf-8")) and text, 30, f"rejection {k}")

    with LiveEngine(tmp_path / "data", endpoint) as live:
        live.create(n_generations=1)
        with RigClient(endpoint, RIG, channels=1) as client:
            bridge = FolderBridge(client, folder, ["ch1"], poll_s=0.05, settle_s=0)
            with running(bridge):
                (path, manifest), = wait_until(lambda: batch_folders(folder), 60, "the batch")
                ids, onset = [s["stimulus_id"] for s in manifest["stimuli"]], time.time()
                csv_text = "stimulus_id,onset,rate_1\r\n" + "".join(f"{i},{onset},12.5\r\n" for i in ids)
                write(path, "responses.csv", csv_text.encode("utf-16"))
                utf16 = refusal(path, 1, "csv")
                write(path, "responses.csv", csv_text.replace(",", ";").replace(".", ",").encode("utf-8-sig"))
                semicolons = refusal(path, 2, "csv")
                rows = [{"stimulus_id": i, "onset": onset, "rates": [12.5]} for i in ids]
                write(path, "responses.json", codecs.BOM_UTF8 + json.dumps({"presentations": rows}, indent=1)
                      .replace("\n", "\r\n").encode())
                ack = json.loads(wait_until(lambda: (path / "ack.json").exists() and (path / "ack.json").read_text(),
                                            30, "the ACK"))
        with live.sessions() as db:
            stored = db.execute(select(PresentationRow.stimulus_id, PresentationRow.rates_json)).all()
    assert "responses.csv is not UTF-8 text (it starts with a UTF-16 byte-order mark): save it as UTF-8" in utf16
    assert "the separator must be a comma; this file uses ';' (as Excel writes in a German locale): save it " \
           "with commas, decimals with a point" in semicolons
    assert "still being written" not in utf16 + semicolons and "the bridge is waiting for it" in semicolons
    assert ack["accepted"] == len(ids) and not (path / "responses.error.txt").exists()
    assert sorted(stored) == sorted((i, [12.5]) for i in ids)


def test_a_folder_the_bridge_cannot_write_is_logged_and_the_others_go_on(tmp_path, endpoint, caplog, monkeypatch):
    """ack.json cannot be written into generation 0's folder (a folder is where its temporary file goes; a
    permission problem is alike, but the tests may run as root): the bridge logs that once, naming the folder
    and the fix, does not send those responses again, and goes on: generation 1's folder is written and
    acknowledged. Restarted once the folder is writable, it sends them once more (the server counts them as
    duplicates) and writes ack.json."""
    from tests.server.test_end_to_end import wait_until
    from tests.server.test_engine import RIG, LiveEngine

    folder, sends = tmp_path / "rig-folder", Counter()

    def ack_of(path: Path) -> dict:
        return json.loads(wait_until(lambda: (path / "ack.json").exists() and (path / "ack.json").read_text(), 30,
                                     f"the ACK of {path.name}"))

    with LiveEngine(tmp_path / "data", endpoint) as live:
        live.create(n_generations=3)
        with RigClient(endpoint, RIG, channels=1) as client:
            send_results = client.send_results

            def counted(batch_id, *args, **kwargs):
                sends[batch_id] += 1
                return send_results(batch_id, *args, **kwargs)

            monkeypatch.setattr(client, "send_results", counted)  # a spy: every upload still goes out
            with running(FolderBridge(client, folder, ["ch1"], poll_s=0.05, settle_s=0)):
                (first, gen0), = wait_until(lambda: batch_folders(folder), 60, "generation 0")
                (first / ".ack.json.tmp").mkdir()
                answer_folder(first, gen0)
                _, (second, gen1) = wait_until(lambda: len(found := batch_folders(folder)) >= 2 and found[:2], 60,
                                               "generation 1")
                answer_folder(second, gen1)
                ack_of(second)
                time.sleep(0.5)  # ten more polls
            assert not (first / "ack.json").exists() and sends[gen0["batch_id"]] == 1
            (first / ".ack.json.tmp").rmdir()
            with running(FolderBridge(client, folder, ["ch1"], poll_s=0.05, settle_s=0)):
                ack = ack_of(first)
    assert sends[gen0["batch_id"]] == 2 and (ack["accepted"], ack["duplicates"]) == (0, len(gen0["stimuli"]))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "rig_client.bridge"]
    assert len(errors) == 1 and errors[0].startswith(f"{first}: the bridge cannot use this batch folder ([Errno 21] ")
    assert errors[0].endswith("make it readable and writable for the user the bridge runs as, or move away what "
                              "is in the way. It tries again, and goes on with the other folders meanwhile")


def test_a_bridge_restarted_with_other_channels_updates_the_manifest_of_the_batch_sent_again(tmp_path, endpoint):
    """The bridge wrote a batch folder for 2 channels and is restarted with 3: the server sends the open batch
    again, and the bridge updates that folder's manifest to 3 channels, so 3 rates are sent and stored (its old
    manifest made the bridge refuse 3 rates, and the server refused 2)."""
    from tests.server.test_end_to_end import wait_until
    from tests.server.test_engine import RIG, LiveEngine

    folder, labels = tmp_path / "rig-folder", ["e1", "e2", "e3"]
    with LiveEngine(tmp_path / "data", endpoint) as live:
        live.create(n_generations=1)
        with RigClient(endpoint, RIG, channels=2) as client, \
                running(FolderBridge(client, folder, labels[:2], poll_s=0.05, settle_s=0)):
            (path, manifest), = wait_until(lambda: batch_folders(folder), 60, "the batch")
        assert manifest["channels"] == 2
        with RigClient(endpoint, RIG, channels=3, labels=labels) as client, \
                running(FolderBridge(client, folder, labels, poll_s=0.05, settle_s=0)):
            wait_until(lambda: json.loads((path / "manifest.json").read_text())["channels"] == 3, 60,
                       "the batch sent again")
            (path / "writing.json").write_text(json.dumps({"presentations": [
                {"stimulus_id": s["stimulus_id"], "onset": time.time(), "rates": [1.0, 2.0, 3.0]}
                for s in manifest["stimuli"]]}))
            (path / "writing.json").rename(path / "responses.json")
            wait_until(lambda: (path / "ack.json").exists() or (path / "responses.error.txt").exists(), 30,
                       "the ACK or a rejection")
        with live.sessions() as db:
            stored = db.scalars(select(PresentationRow.rates_json)).all()
    assert not (path / "responses.error.txt").exists(), (path / "responses.error.txt").read_text()
    assert json.loads((path / "ack.json").read_text())["accepted"] == len(manifest["stimuli"])
    assert [m for _, m in batch_folders(folder)] == [{**manifest, "channels": 3, "channel_labels": labels}]
    assert stored == [[1.0, 2.0, 3.0]] * len(manifest["stimuli"])


HELPERS = Path(__file__).parents[2] / "rig_client" / "monkeylogic"


def octave(script: str, **env: str) -> str:
    """Run ``script`` in GNU Octave (standing in for MATLAB) with the helpers on its path; its output."""
    program = shutil.which("octave-cli")
    if program is None:
        pytest.skip("GNU Octave is not installed (apt-get install -y --no-install-recommends octave)")
    done = subprocess.run([program, "--no-gui", "--quiet", "--eval", f"addpath('{HELPERS}');\n{script}"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_matlab_files_writes_the_helpers_and_keeps_a_users_edits_unless_forced(tmp_path, capsys):
    """`actmax rig matlab-files` gives a rig PC MonkeyLogic's side; a second run, after the lab filled in its
    recorder and lost a helper, writes the helper back, keeps the recorder code and says so; --force replaces it."""
    from server.cli import main

    folder = tmp_path / "task" / "actmax"
    shipped = {p.name: p.read_bytes() for p in HELPERS.glob("*.m")}
    assert main(["rig", "matlab-files", str(folder)]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == shipped
    ours = b"function [rates, baseline] = actmax_count_spikes(onset, window_ms, baseline_ms)\n% the lab's\nend\n"
    (folder / "actmax_count_spikes.m").write_bytes(ours)
    (folder / "actmax_timing.m").unlink()
    capsys.readouterr()
    assert main(["rig", "matlab-files", str(folder)]) == 0
    said = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert said["actmax_timing.m"] == "written" and said["actmax_userloop.m"] == "up to date"
    assert said["actmax_count_spikes.m"].startswith("kept") and "--force" in said["actmax_count_spikes.m"]
    assert (folder / "actmax_count_spikes.m").read_bytes() == ours
    assert (folder / "actmax_count_spikes.m.new").read_bytes() == shipped["actmax_count_spikes.m"]  # to compare
    assert (folder / "actmax_timing.m").read_bytes() == shipped["actmax_timing.m"]
    (folder / "actmax_count_spikes.m.new").unlink()
    assert main(["rig", "matlab-files", str(folder), "--force"]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == shipped

    # A Windows checkout's copies (CRLF) are this version's: up to date, not kept as if edited.
    for name, text in shipped.items():
        (folder / name).write_bytes(text.replace(b"\n", b"\r\n"))
    capsys.readouterr()
    assert main(["rig", "matlab-files", str(folder)]) == 0
    assert all(line.endswith("up to date") for line in capsys.readouterr().out.splitlines()[1:])

    # A file where the folder goes, or a folder where a file goes: said before anything is written.
    (tmp_path / "not-a-folder").write_text("")
    assert main(["rig", "matlab-files", str(tmp_path / "not-a-folder")]) == 2
    assert "is a file: give the folder" in capsys.readouterr().err
    (tmp_path / "other" / "actmax_userloop.m").mkdir(parents=True)
    assert main(["rig", "matlab-files", str(tmp_path / "other")]) == 2
    assert "a folder where a MATLAB file goes" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["actmax_userloop.m"]


def test_matlab_helpers_in_octave(tmp_path):
    """The MATLAB helpers (rig_client/monkeylogic) read a real batch folder and write a .mat the
    bridge accepts; the next batch skips folders the bridge closed or superseded."""
    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    for batch_id, marker in (("b-5", "closed.json"), ("b-6", "superseded.json")):
        dead = write_batch(tmp_path, Batch(batch_id, "s", "t", 0, (50.0, 200.0),
                                           [Stimulus("st-z", "synthetic", png)]), ["e1", "e2"])
        (dead / marker).write_text("{}")
    batch = Batch("b-7", "s", "t", 0, (50.0, 200.0),
                  [Stimulus("st-a", "synthetic", png), Stimulus("ref-1", "reference", png)])
    path = write_batch(tmp_path, batch, ["e1", "e2"])
    octave(f"""
    folder = actmax_next_batch('{tmp_path}');
    assert(strcmp(folder, '{path}'));
    s = actmax_read_manifest(folder);
    assert(numel(s) == 2 && strcmp(s(2).kind, 'reference') && exist(s(1).file, 'file') == 2);
    R.stimulus_id = {{s(2).stimulus_id; s(1).stimulus_id}};
    R.onset = [1764250001.5; 1764250002.5];
    R.rates = [1 2; 3 4];
    R.fixation_broken = logical([0; 1]);
    R.photodiode_onset = [1764250001.51; NaN];
    R.baseline_rates = [0.5 0; 0 0.5];
    R.baseline_window_ms = [-100 0];
    actmax_write_responses(folder, R);
    assert(isempty(actmax_next_batch('{tmp_path}')));
    """)
    assert sorted(p.name for p in path.iterdir()) == ["0001.png", "0002.png", "manifest.csv",
                                                       "manifest.json", "responses.mat"]
    got = [p.to_json() for p in read_responses(path / "responses.mat", json.loads(
        (path / "manifest.json").read_text()))]
    assert [(p["stimulus_id"], p["rates"], p["fixation_broken"]) for p in got] == [
        ("ref-1", [1.0, 2.0], False), ("st-a", [3.0, 4.0], True)]
    assert got[0]["photodiode_onset"] == pytest.approx(1764250001.51) and "photodiode_onset" not in got[1]
    assert got[1]["baseline_rates"] == [0.0, 0.5] and got[1]["baseline_window_ms"] == [-100.0, 0.0]


def test_the_user_loop_leaves_a_batch_the_bridge_superseded_or_closed_between_trials(tmp_path):
    """actmax_userloop.m called as MonkeyLogic calls it, between trials: batch A is superseded after two
    trials (the server re-sent its stimuli after the batch timeout), so those two are written as A's responses
    and the next trial shows batch B; B is closed before any trial of it was shown, so nothing is written
    there and the loop goes on with C."""
    rig, stubs = tmp_path / "rig-folder", tmp_path / "stubs"
    rig.mkdir()
    stubs.mkdir()
    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    a, b, c = (write_batch(rig, Batch(f"b-{name}", "s", "t", 0, (50.0, 200.0),
                                      [Stimulus(f"st-{name}{i}", "synthetic", png) for i in range(n)]), ["e1", "e2"])
               for name, n in (("a", 3), ("b", 2), ("c", 1)))
    loop = (HELPERS / "actmax_userloop.m").read_text()
    assert "ACTMAX_FOLDER = 'C:\\actmax\\rig-folder';" in loop
    counted = "ACTMAX_WINDOW_MS = [60 250];"  # not the manifest's 50-200 ms: the responses say which was counted
    (stubs / "actmax_userloop.m").write_text(loop.replace("C:\\actmax\\rig-folder", str(rig))
                                             .replace("ACTMAX_WINDOW_MS = [50 200];", counted))
    (stubs / "actmax_count_spikes.m").write_text(
        "function [rates, baseline] = actmax_count_spikes(onset, window_ms, baseline_ms)\n"
        "assert(isequal(window_ms, [60 250]));\nrates = [7 8]; baseline = [1 2];\nend\n")
    octave(f"""
    addpath('{stubs}');
    T.User = struct(); T.TrialErrors = [];
    [C, timing] = actmax_userloop([], T);  % MonkeyLogic's first call only asks for the timing file
    assert(isempty(C) && strcmp(timing, 'actmax_timing.m'));
    C = actmax_userloop([], T);
    assert(strcmp(C{{2}}, 'pic({a / "0001.png"},0,0)'));
    T.User.onset_unix = 1764250001.5; T.User.dropped_frames = 0; T.TrialErrors(end + 1) = 0;
    C = actmax_userloop([], T);
    assert(strcmp(C{{2}}, 'pic({a / "0002.png"},0,0)'));
    fclose(fopen('{a / "superseded.json"}', 'w'));  % the bridge, meanwhile
    T.User.onset_unix = 1764250003.5; T.TrialErrors(end + 1) = 3;
    C = actmax_userloop([], T);
    assert(strcmp(C{{2}}, 'pic({b / "0001.png"},0,0)'));
    fclose(fopen('{b / "closed.json"}', 'w'));
    T.User.onset_unix = []; T.TrialErrors(end + 1) = 4;  % no fixation: the image was not shown
    C = actmax_userloop([], T);
    assert(strcmp(C{{2}}, 'pic({c / "0001.png"},0,0)'));
    """)
    got = [p.to_json() for p in read_responses(a / "responses.mat", json.loads((a / "manifest.json").read_text()))]
    assert [(p["stimulus_id"], p["onset"], p["rates"], p["fixation_broken"]) for p in got] == [
        ("st-a0", 1764250001.5, [7.0, 8.0], False), ("st-a1", 1764250003.5, [7.0, 8.0], True)]
    assert [p["window_ms"] for p in got] == [[60.0, 250.0]] * 2
    assert not list(b.glob("responses*")) and not list(c.glob("responses*"))


def test_the_timing_script_stores_onsets_in_utc(tmp_path):
    """actmax_timing.m under stand-ins for MonkeyLogic's functions, in New York: the onset is unix
    time (UTC), the flip 250 ms before the script read the clock."""
    stubs = {"editable": "editable(varargin)", "trialerror": "trialerror(varargin)",
             "eyejoytrack": "ok = eyejoytrack(varargin)\nok = true;",
             "toggleobject": "t = toggleobject(varargin)\nt = 1000;",  # the flip, at 1000 ms trial time
             "trialtime": "t = trialtime()\nt = 1250;"}
    for name, body in stubs.items():
        (tmp_path / f"{name}.m").write_text(f"function {body}\nend\n")
    before = time.time()
    out = octave(f"addpath('{tmp_path}'); run('{HELPERS / 'actmax_timing.m'}');\n"
                 "printf('%.3f\\n', TrialRecord.User.onset_unix);", TZ="America/New_York")
    assert before - 0.25 - 0.01 <= float(out.split()[-1]) <= time.time() - 0.25 + 0.01
