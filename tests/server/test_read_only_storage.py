"""Read-only storage, named for what it is: a read-only database is refused at start, and a storage fault's advice
names the highest folder (or file) under the data folder that cannot be written. Real files, made really read-only
(for root, read-only bind mounts), a real `actmax serve` process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rig_client.protocol import encode_png
from server.engine import storage_advice
from server.launch import free_port
from server.settings import Settings
from server.store import db
from server.store.archive import ImageArchive
from tests.server.test_faults import read_only


def make_database(data_dir) -> str:
    """A migrated, closed actmax database in ``data_dir``; its path."""
    db_engine = db.make_db_engine(f"sqlite:///{data_dir / 'actmax.sqlite'}")
    db.upgrade(db_engine)
    db_engine.dispose()
    return str(data_dir / "actmax.sqlite")


def test_a_read_only_database_is_refused_at_start_in_one_line(tmp_path):
    """Before, the server served, its threads read `running` with no error and nothing moved."""
    data = tmp_path / "data"
    database = make_database(data)
    with read_only(data / "actmax.sqlite"):
        served = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data), "--port", str(free_port()),
             "--zmq-endpoint", f"tcp://127.0.0.1:{free_port()}", "--device", "cpu"],
            env={**os.environ, "ACTMAX_TOKEN": "t" * 32, "PYTHONPATH": os.getcwd()}, capture_output=True, text=True,
            timeout=60)
    assert served.returncode == 2
    assert served.stderr.splitlines()[-1] == (
        f"actmax serve: the database {database} cannot be written (actmax.sqlite is read-only): make it writable "
        "(chmod u+w; chattr -i if it is immutable), or copy the data folder to a writable place and pass that "
        "--data-dir")


def test_a_database_that_became_read_only_is_called_so_not_a_full_disk(tmp_path):
    """The advice of the engine's log lines and of a stalled thread's last_error (before: "free disk space")."""
    database = make_database(tmp_path)
    with read_only(tmp_path / "actmax.sqlite"), contextlib.closing(sqlite3.connect(database)) as connection:
        with pytest.raises(sqlite3.OperationalError) as failure:
            connection.execute("DELETE FROM sessions")
        advice = storage_advice(failure.value, Settings(data_dir=tmp_path, token="t"))  # while it is read-only
    assert advice == f"attempt to write a readonly database. Make {database} writable"


def test_the_advice_names_the_read_only_folder_not_the_subfolder_of_the_file_that_failed(tmp_path):
    """``images/`` is read-only (a read-only mount, say): the write of a PNG in ``images/e0`` fails, and the advice
    is to make ``images`` writable (before: ``images/e0``, and a lab engineer would fix only that one)."""
    archive = ImageArchive(tmp_path)
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    target = archive.path(archive.address(png).content_hash)
    target.parent.mkdir(parents=True)
    with read_only(tmp_path / "images"):
        with pytest.raises(OSError) as failure:
            archive.save(png)
        advice = storage_advice(failure.value, Settings(data_dir=tmp_path, token="t"))  # while it is read-only
    assert str(target.parent) in failure.value.filename
    assert advice.endswith(f"Make {tmp_path / 'images'} writable")


def test_the_advice_names_the_read_only_folder_with_a_relative_data_dir(tmp_path, monkeypatch):
    """``--data-dir data`` (the default ``./actmax-data`` is relative too): the failing file's path is absolute, and the
    advice still names ``images``, in full (before: the subfolder of the file that failed)."""
    monkeypatch.chdir(tmp_path)
    archive = ImageArchive(Path("data"))
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    archive.path(archive.address(png).content_hash).parent.mkdir(parents=True)
    with read_only(tmp_path / "data" / "images"):
        with pytest.raises(OSError) as failure:
            archive.save(png)
        advice = storage_advice(failure.value, Settings(data_dir=Path("data"), token="t"))  # while it is read-only
    assert Path(failure.value.filename).is_absolute()
    assert advice.endswith(f"Make {tmp_path / 'data' / 'images'} writable")
