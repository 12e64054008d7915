"""``json_safe``: what the store, reports and studies write is strict JSON."""

from __future__ import annotations

import json

import numpy as np

from analysis.serialization import json_safe


def test_non_finite_numbers_become_null_and_numpy_becomes_python():
    value = {"a": [1.5, float("nan"), (np.float32(2.5), np.inf)], "b": np.int64(3), "c": np.array([1.0, -np.inf]),
             "d": {"e": np.bool_(True), "f": "text", "g": None}}
    safe = json_safe(value)
    assert safe == {"a": [1.5, None, [2.5, None]], "b": 3, "c": [1.0, None], "d": {"e": True, "f": "text", "g": None}}
    assert type(safe["b"]) is int and type(safe["d"]["e"]) is bool
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
