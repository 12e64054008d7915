"""What an installed user gets: the version that names a build, the sdist and wheel that `python -m build` makes,
install hints they can paste, and the data folder the server logs. Real builds, processes and git repositories."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.server.test_migrations import stop, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def python(program: str, *, path: Path, cwd: Path) -> str:
    """What ``program`` prints, run by this interpreter in ``cwd`` with ``path`` first on its import path."""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(path)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def version_of(copy: Path, cwd: Path) -> str:
    """`rig_client.version.package_version()` of the package under ``copy``, in a fresh process."""
    file, version = python("from rig_client import version; print(version.__file__); print(version.package_version())",
                           path=copy, cwd=cwd).splitlines()
    assert Path(file).resolve() == (copy / "rig_client" / "version.py").resolve()  # this copy, not the installed one
    return version


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org",
                           "-c", "commit.gpgsign=false", *args],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


@needs_git
def test_version_of_this_checkout_names_its_commit(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    version = version_of(ROOT, cwd=tmp_path)
    assert re.fullmatch(rf"{re.escape(VERSION)}\+g([0-9a-f]{{4,}})(\.dirty)?", version), version
    assert git(ROOT, "rev-parse", "HEAD").startswith(version.split("+g")[1].removesuffix(".dirty"))


@needs_git
def test_version_of_a_source_copy_follows_its_git_state(tmp_path):
    """Outside git the plain version; committed, its commit; with a changed tracked file, ".dirty"; and a copy
    inside someone else's repository does not take that repository's commit."""
    source = tmp_path / "actmax"
    shutil.copytree(ROOT / "rig_client", source / "rig_client", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    assert version_of(source, cwd=tmp_path) == VERSION

    git(source, "init", "-q")
    git(source, "add", ".")
    git(source, "commit", "-q", "-m", "copy")
    commit = git(source, "rev-parse", "HEAD")
    version = version_of(source, cwd=tmp_path)
    assert version.startswith(f"{VERSION}+g") and commit.startswith(version.split("+g")[1]), version
    (source / "untracked.txt").write_text("not a change to the code")
    assert version_of(source, cwd=tmp_path) == version
    with (source / "rig_client" / "version.py").open("a") as file:
        file.write("# changed\n")
    assert version_of(source, cwd=tmp_path) == f"{version}.dirty"

    outer = tmp_path / "lab-scripts"
    shutil.copytree(source, outer / "vendored" / "actmax", ignore=shutil.ignore_patterns(".git"))
    git(outer, "init", "-q")
    git(outer, "add", ".")
    git(outer, "commit", "-q", "-m", "lab")
    assert version_of(outer / "vendored" / "actmax", cwd=tmp_path) == VERSION


def test_an_installed_copy_gives_the_installed_version(tmp_path):
    """No pyproject.toml beside the package (site-packages): the version pip recorded."""
    copy = tmp_path / "site-packages"
    shutil.copytree(ROOT / "rig_client", copy / "rig_client", ignore=shutil.ignore_patterns("__pycache__"))
    installed = python("from importlib.metadata import version\ntry:\n    print(version('actmax'))\n"
                       "except Exception:\n    print('unknown')", path=copy, cwd=tmp_path)
    assert version_of(copy, cwd=tmp_path) == installed


def test_sdist_and_wheel_build_without_warnings_and_hold_the_license_and_docs(tmp_path):
    source = tmp_path / "src"  # a checkout's files, without its environments, caches and results
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, source)
    for folder in (*PACKAGES, "docs", "tests", "bench"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    dist = tmp_path / "dist"

    def build(kind: str, folder: Path) -> None:  # what `python -m build` runs, with this environment's setuptools
        program = f"import sys\nfrom setuptools import build_meta\nbuild_meta.build_{kind}(sys.argv[1])"
        result = subprocess.run([sys.executable, "-W", "always", "-c", program, str(dist)], cwd=folder,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not re.search(r"deprecat|did not match", result.stdout + result.stderr, re.I), result.stderr[-3000:]

    build("sdist", source)
    sdist_name, wheel_name = f"actmax-{VERSION}.tar.gz", f"actmax-{VERSION}-py3-none-any.whl"
    with tarfile.open(dist / sdist_name) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        sdist.extractall(tmp_path / "unpacked", filter="data")
    build("wheel", tmp_path / "unpacked" / f"actmax-{VERSION}")  # as `python -m build` does: from the sdist
    assert sorted(p.name for p in dist.iterdir()) == [wheel_name, sdist_name]
    linked = set(re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()))
    assert len(linked) > 10 and linked <= names, linked - names  # README's links and image work in the sdist
    assert {"LICENSE", "docs/monkeylogic/README.md", "rig_client/monkeylogic/actmax_userloop.m"} <= names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]

    with zipfile.ZipFile(dist / wheel_name) as wheel:
        info = f"actmax-{VERSION}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        assert "MIT License" in wheel.read(f"{info}/licenses/LICENSE").decode()
        wheel.extractall(tmp_path / "installed")
    assert "License-Expression: MIT" in metadata.splitlines() and f"Version: {VERSION}" in metadata.splitlines()
    # A rig PC with the wheel alone gets MonkeyLogic's side from `actmax rig matlab-files`.
    where = python(f"from rig_client import bridge\nbridge.write_matlab_files(__import__('pathlib').Path("
                   f"{str(tmp_path / 'ml')!r}))\nprint(bridge.__file__)", path=tmp_path / "installed", cwd=tmp_path)
    assert Path(where).is_relative_to(tmp_path / "installed")
    shipped = sorted((ROOT / "rig_client" / "monkeylogic").glob("*.m"))
    assert len(shipped) == 7 and [(p.name, p.read_bytes()) for p in shipped] == [
        (p.name, p.read_bytes()) for p in sorted((tmp_path / "ml").iterdir())]


def test_install_hints_quote_their_extras():
    """`pip install actmax[x]` unquoted is a glob to zsh ("no matches found"): every hint is quoted."""
    unquoted = re.compile(r"pip install [^\s'\"`]*\[")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(f for p in PACKAGES for f in (ROOT / p).rglob("*.py"))]
    assert not [f"{f.relative_to(ROOT)}: {m}" for f in files for m in unquoted.findall(f.read_text(encoding="utf-8"))]
    hint = python("import sys\nsys.modules['pytorch_pretrained_biggan'] = None  # as if it were not installed\n"
                  "from generators.biggan import _biggan\ntry:\n    _biggan()\nexcept Exception as e:\n    print(e)",
                  path=ROOT, cwd=ROOT)
    assert "`pip install 'actmax[biggan]'`" in hint, hint


def test_the_rig_side_imports_none_of_the_servers_heavy_packages():
    """docs/rigs.md: a rig PC installs the whole distribution, but the bridge and the client load none of it."""
    loaded = python("import sys, rig_client.bridge, rig_client.client\nprint(sorted(m for m in ('torch', 'fastapi', "
                    "'dask', 'sqlalchemy', 'pandas', 'server') if m in sys.modules))", path=ROOT, cwd=ROOT)
    assert loaded == "[]"


@pytest.mark.slow
def test_serve_logs_the_data_folder_as_an_absolute_path(tmp_path):
    """A relative --data-dir (the default is ./actmax-data) is logged resolved: under systemd or cron the working
    folder is not obvious."""
    from server.launch import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", "actmax-data", "--port", str(port),
         "--zmq-endpoint", f"tcp://127.0.0.1:{free_port()}", "--device", "cpu"], cwd=tmp_path,
        env={**os.environ, "ACTMAX_TOKEN": "t" * 32, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}")
    finally:
        stop(process)
    log = process.stderr.read()
    data = tmp_path.resolve() / "actmax-data"
    assert f"created a new, empty database in {data}: " in log, log
    assert re.search(rf"serving REST on .* data in {re.escape(str(data))}$", log, re.M), log
