"""The package dependency rule, checked on every import statement (module level or inside functions).

    analysis, optimizers, generators   import none of server, rig_client, insilico
    insilico                           imports no server
    server                             imports insilico only in its CLI wiring (server/cli.py, server/analyze.py)

So the lower packages stay usable on their own (pass a network or generator in as an argument), and the
experiment service and the in-silico experiments are two programs that share only those packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "analysis": {"server", "rig_client", "insilico"},
    "optimizers": {"server", "rig_client", "insilico"},
    "generators": {"server", "rig_client", "insilico"},
    "insilico": {"server"},
    "server": {"insilico"},
}
#: Modules allowed to break the rule: the CLI wiring that puts `actmax bench` and `actmax analyze study` on
#: the one `actmax` command.
CLI_WIRING = {"server/cli.py", "server/analyze.py"}


def imported_packages(source: str) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`, at any depth of the tree."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in CLI_WIRING:
            continue
        for line, imported in sorted(imported_packages(path.read_text())):
            if imported in FORBIDDEN[package]:
                out.append(f"{name}:{line} imports {imported}")
    return out


def test_the_checker_sees_imports_inside_functions() -> None:
    source = "import numpy\ndef f():\n    from server.engine import Engine\n    import rig_client.cnn as cnn\n"
    assert imported_packages(source) == {(1, "numpy"), (3, "server"), (4, "rig_client")}
    assert imported_packages("from . import base\nfrom .cma import CMA\n") == set()  # relative: same package


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_dependency_rule(package: str) -> None:
    assert list((ROOT / package).rglob("*.py")), f"no modules found under {package}/"
    assert violations(package) == [], f"{package} must not import {sorted(FORBIDDEN[package])}"
