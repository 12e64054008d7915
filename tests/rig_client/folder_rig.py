"""A stand-in for a MonkeyLogic rig, run by test_bridge.py as its own process.

It watches the bridge folder like the MATLAB user loop (rig_client/monkeylogic/): for every new batch it
reads manifest.csv and the PNGs, "records" rates (image brightness per colour channel), and writes
responses.mat. Its first answer is deliberately wrong (an unknown stimulus) to exercise the
bridge's error file; on every full-size batch the second presentation has a broken fixation.
Every row it writes is appended to a JSON-lines log for the test to compare with the database.

usage: folder_rig.py FOLDER LOG FULL_BATCH_SIZE
"""

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

folder, log_path, full_size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
answered: set[str] = set()
first = True


def save_mat(path: Path, rows: list[dict], manifest: dict) -> None:
    tmp = path.with_name("writing.mat")
    scipy.io.savemat(tmp, {
        "stimulus_id": np.array([r["stimulus_id"] for r in rows], dtype=object),
        "onset": np.array([r["onset"] for r in rows]),
        "rates": np.array([r["rates"] for r in rows]),
        "fixation_broken": np.array([r["fixation_broken"] for r in rows], dtype=np.uint8),
        "dropped_frames": np.zeros(len(rows)),
        "photodiode_onset": np.array([r["onset"] + 0.012 for r in rows]),
        "baseline_rates": np.full((len(rows), manifest["channels"]), 3.0),
        "baseline_window_ms": np.array([-100.0, 0.0]),
    }, format="5")
    os.replace(tmp, path)


while True:
    for batch in sorted(folder.glob("batch-*")):
        if batch.name in answered or (batch / "ack.json").exists():
            continue
        manifest = json.loads((batch / "manifest.json").read_text())
        with open(batch / "manifest.csv", newline="") as f:
            order = list(csv.DictReader(f))
        assert [r["stimulus_id"] for r in order] == [s["stimulus_id"] for s in manifest["stimuli"]]
        rows = []
        for i, row in enumerate(order):
            pixels = np.asarray(Image.open(batch / row["file"]).convert("RGB"), dtype=float)
            rows.append({"stimulus_id": row["stimulus_id"], "onset": time.time() + 0.3 * i,
                         "rates": (pixels.mean(axis=(0, 1)) / 2.55)[: manifest["channels"]].tolist(),
                         "fixation_broken": int(len(order) == full_size and i == 1)})
        if first:  # a wrong file first: the bridge must reject it and wait for a corrected one
            save_mat(batch / "responses.mat", [{**rows[0], "stimulus_id": "not-in-batch"}], manifest)
            while not (batch / "responses.error.txt").exists():
                time.sleep(0.05)
            log_path.with_suffix(".error").write_text((batch / "responses.error.txt").read_text())
            first = False
        save_mat(batch / "responses.mat", rows, manifest)
        answered.add(batch.name)
        with open(log_path, "a") as log:
            for row in rows:
                log.write(json.dumps({"batch": batch.name, **row}) + "\n")
    time.sleep(0.1)
