"""`actmax analyze study` names a damaged units.json and what to do about it, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from insilico import InsilicoError, storage
from server.cli import main
from tests.insilico.test_study import TINY


def test_a_damaged_units_file_is_named_with_the_fix(tmp_path: Path, capsys) -> None:
    (tmp_path / "units.json").write_text('{"key": {"layers": ["blocks.1"], "see', encoding="utf-8")
    with pytest.raises(InsilicoError, match="units.json is damaged .*; delete it to screen the units again"):
        storage.load_units(tmp_path, {"layers": ["blocks.1"]})
    assert main(["analyze", "study", *TINY, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"actmax analyze: {tmp_path / 'units.json'} is damaged (Unterminated string")
    assert err.endswith("; delete it to screen the units again, or give another --out\n") and err.count("\n") == 1
