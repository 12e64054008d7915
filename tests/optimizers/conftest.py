"""The ``name`` fixture: every registered optimizer."""

from __future__ import annotations

import pytest

import optimizers


@pytest.fixture(params=optimizers.available())
def name(request) -> str:
    return request.param
