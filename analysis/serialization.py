"""Strict JSON from analysis results: the one NaN-safe conversion the store, reports and studies share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with NaN/±inf as None, numpy scalars and arrays as Python numbers and lists, and
    tuples as lists, recursively, so ``json.dumps`` writes strict JSON (no ``NaN`` tokens)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
