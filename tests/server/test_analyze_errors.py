"""`actmax analyze` refuses what it cannot do in one line, before the long work: counts too large for memory, an
``--out`` that is a file or cannot be written, and archived images that are missing or damaged."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from analysis import MAX_RESAMPLES
from server.analyze import MAX_POSITIONS
from server.cli import build_parser
from server.store.archive import ImageArchive, LostImage
from tests.server.test_manifold_analysis import in_process, record_map
from tests.server.test_report import png, record_session
from tests.server.test_upgrades import read_only


def test_bootstrap_resamples_are_capped_as_over_rest(tmp_path, capsys):
    largest = build_parser().parse_args(["analyze", "manifold", "1", "--n-boot", str(MAX_RESAMPLES)])
    assert largest.n_boot == MAX_RESAMPLES == 1000  # as REST's n_boot
    code, err = in_process(capsys, "manifold", "1", "--n-boot", "100000000000", "--out", str(tmp_path / "out"))
    assert code == 2 and "--n-boot: 100000000000: at most 1000 resamples; ask for fewer" in err
    assert not (tmp_path / "out").exists()


def test_geometry_positions_are_capped(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = in_process(capsys, "geometry", "dcgan-faces", "--positions", "1000000000", "--out", str(out))
    assert code == 2 and f"--positions must be <= {MAX_POSITIONS}" in err and "ask for fewer" in err
    assert err.count("\n") == 1 and not out.exists()


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr("server.analyze.run_session", lambda args: np.empty(2**62, dtype=np.uint8))
    code, err = in_process(capsys, "session", "1")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("actmax analyze: ran out of memory (Unable to allocate") and "ask for less" in err


def test_geometry_checks_its_output_folder_can_be_written_before_the_work(tmp_path, monkeypatch, capsys):
    def work(*args, **kwargs):
        raise AssertionError("the Hessians started")

    monkeypatch.setattr("server.geometry.report", work)
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        code, err = in_process(capsys, "geometry", "dcgan-faces", "--positions", "2", "--out", str(out))
    assert code == 2 and err.startswith(f"actmax analyze: cannot use {out}: ") and err.count("\n") == 1


@pytest.mark.parametrize("analysis", ["session", "manifold", "geometry", "study"])
def test_a_file_as_out_is_refused_before_the_work(db_sessions, settings, tmp_path, capsys, analysis):
    thread_id = record_map(db_sessions, settings.data_dir, repeats=1)
    given = {"session": ["1", "--data-dir", str(settings.data_dir)],
             "manifold": [str(thread_id), "--data-dir", str(settings.data_dir)],
             "geometry": ["dcgan-faces"], "study": []}[analysis]
    file = tmp_path / "afile"
    file.write_text("")
    code, err = in_process(capsys, analysis, *given, "--out", str(file))
    assert code == 2 and err == f"actmax analyze: --out {file} is a file; give a folder\n"


def test_reading_a_missing_or_damaged_image_names_it_and_the_fix(tmp_path):
    archive = ImageArchive(tmp_path)
    image = archive.save(png(10))
    path = archive.path(image.content_hash)
    path.write_bytes(png(10)[:20])
    with pytest.raises(LostImage, match=rf"lost {path}, which is damaged \(truncated") as damaged:
        archive.read(image.content_hash)
    assert f"restore {tmp_path / 'images'}/ from a backup" in str(damaged.value)
    assert archive.read_intact(image.content_hash) is None
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"lost {path}, which is missing: .*give its data/ subfolder"):
        archive.read(image.content_hash)
    assert archive.read_intact(image.content_hash) is None


@pytest.mark.parametrize("loss", ["truncated", "missing"])
def test_a_session_report_names_a_lost_image_and_the_fix(db_sessions, settings, tmp_path, capsys, loss):
    session_id, _, _ = record_session(db_sessions, settings)
    images = settings.data_dir / "images"
    if loss == "missing":
        shutil.rmtree(images)
    else:
        for path in images.glob("*/*.png"):
            path.write_bytes(path.read_bytes()[:40])
    code, err = in_process(capsys, "session", str(session_id), "--data-dir", str(settings.data_dir),
                           "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"actmax analyze: the image archive lost {images}/") and ".png, which is " in err
    assert "from a backup" in err and "check --data-dir" in err
