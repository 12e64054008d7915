"""`actmax analyze geometry` refuses bad input before it leaves anything behind."""

from pathlib import Path

import pytest

from server.cli import main


@pytest.mark.parametrize("args, message", [
    (["dcgan-face"], "unknown generator 'dcgan-face'"),
    (["dcgan-faces", "--positions", "1"], "--positions must be >= 2"),
    (["dcgan-faces", "--k", "0"], "--k must be >= 1, got 0"),
])
def test_refused_input_leaves_no_folder(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "nested"
    assert main(["analyze", "geometry", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_k_beyond_the_latent_size_is_refused_and_leaves_no_folder(tmp_path: Path, capsys) -> None:
    import generators

    try:
        generators.load("dcgan-faces", device="cpu")
    except generators.GeneratorError as exc:
        pytest.skip(f"dcgan-faces unavailable: {exc}")
    out = tmp_path / "g"
    argv = ["analyze", "geometry", "dcgan-faces", "--method", "hvp_fd", "--k", "200", "--positions", "2",
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "k = 200 eigenpairs: method hvp_fd gives 1 to 99 at latent size 100; use method 'bp' for all 100" in err
    assert not out.exists()


def test_an_existing_folder_is_kept(tmp_path: Path) -> None:
    assert main(["analyze", "geometry", "dcgan-face", "--out", str(tmp_path)]) == 2
    assert tmp_path.is_dir()
