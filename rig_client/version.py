"""actmax's version, for everything that records it: the server (WELCOME, exports, ``thread.runtime`` events), the
rig side and the in-silico tools (their results). It lives here, in the lowest package that both the server and
the in-silico tools may import."""

import functools
from pathlib import Path


@functools.cache
def package_version() -> str:
    """actmax's version, naming the exact build when it runs from a git checkout: "0.16.0+g1a2b3c4" (a PEP 440
    local version; ".dirty" when tracked files have changes). A source tree outside git gives pyproject.toml's
    version, an installed copy the installed one ("unknown" if neither). Computed once, on first use."""
    from importlib.metadata import PackageNotFoundError, version

    if (source := _source_version(Path(__file__).resolve().parent.parent)) is not None:
        return source
    try:
        return version("actmax")
    except PackageNotFoundError:
        return "unknown"


def _source_version(root: Path) -> str | None:
    """The version of the actmax source tree at ``root``, with its commit when ``root`` is the top of a git
    checkout; None when ``root`` holds no actmax pyproject.toml (an installed copy). No git, or a git that
    fails, gives the plain version."""
    import subprocess
    import tomllib

    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        if project["name"] != "actmax":
            return None
        base = str(project["version"])
    except (OSError, ValueError, KeyError):
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        top, commit = git("rev-parse", "--show-toplevel", "--short", "HEAD").splitlines()
        if Path(top).resolve() != root:  # an unpacked source archive inside another repository
            return base
        dirty = ".dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    except (OSError, ValueError, subprocess.SubprocessError):
        return base
    return f"{base}+g{commit}{dirty}"
