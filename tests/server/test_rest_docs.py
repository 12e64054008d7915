"""docs/rest_api.md documents exactly the routes the app serves (whatever routes exist)."""

from __future__ import annotations

import re
from pathlib import Path

from server.main import create_app
from tests.server.conftest import make_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "rest_api.md"


def normalise(route: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", route)


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path):
    app = create_app(make_settings(tmp_path), db_sessions=None)
    served = {normalise(f"{method.upper()} {path}") for path, operations in app.openapi()["paths"].items()
              for method in operations}
    documented = {normalise(route) for route in re.findall(r"^\| `((?:GET|POST|PUT|PATCH|DELETE) /[^`]*)`",
                                                            DOC.read_text(), flags=re.M)}
    assert served - documented == set(), "routes missing from docs/rest_api.md"
    assert documented - served == set(), "docs/rest_api.md documents routes the app does not serve"
