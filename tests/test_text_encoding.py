"""Text files are read and written as UTF-8 whatever the locale: on a latin-1 or Windows code-page machine, a file
opened without ``encoding=`` fails on (or garbles) the non-ASCII names labs give sessions, threads and channels."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("analysis", "generators", "insilico", "optimizers", "rig_client", "server")


def text_opens_without_encoding(source: str) -> list[int]:
    """Lines of ``open(...)``, ``Path.open(...)``, ``read_text(...)`` and ``write_text(...)`` calls in text mode
    with no ``encoding=``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            lines.append(node.lineno)
        elif (isinstance(func, ast.Name) and func.id == "open") or (
                isinstance(func, ast.Attribute) and func.attr == "open" and not isinstance(func.value, ast.Name)):
            modes = [a for a in node.args[1 if isinstance(func, ast.Name) else 0:][:1]]
            modes += [k.value for k in node.keywords if k.arg == "mode"]
            mode = next((m.value for m in modes if isinstance(m, ast.Constant)), "r")
            if "b" not in mode:
                lines.append(node.lineno)
    return lines


def test_the_checker_sees_each_form() -> None:
    source = ("open(p)\nopen(p, 'rb')\nPath(p).open('w')\np.read_text()\np.write_text(s, encoding='utf-8')\n"
              "open(p, mode='a')\nsys.stdout.write(s)\n")
    assert text_opens_without_encoding(source) == [1, 3, 4, 6]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_text_file_is_opened_as_utf8(package: str) -> None:
    found = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / package).rglob("*.py"))
             for line in text_opens_without_encoding(path.read_text(encoding="utf-8"))]
    assert not found, f"give these encoding='utf-8': {', '.join(found)}"
