"""Schemathesis against the live OpenAPI document of a real uvicorn server: no request is a 5xx.

Valid and invalid requests (schemathesis' positive and negative modes) for every operation, each
sent with the token (three in four) or without it. Bounded for CI; run longer with e.g.
``ACTMAX_FUZZ_EXAMPLES=5000 pytest tests/server/test_fuzz_api.py``.
"""

from __future__ import annotations

import collections
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from tests.server.conftest import TOKEN, LiveServer

FUZZ_EXAMPLES = int(os.environ.get("ACTMAX_FUZZ_EXAMPLES", "200"))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_is_a_server_error(live_server: LiveServer, mode):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    statuses: collections.Counter[int] = collections.Counter()

    @given(case=schema.as_strategy(mode), with_token=st.sampled_from([True, True, True, False]))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case, with_token):
        headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else {}
        if case.path == "/live":  # an endless stream: its status is the answer, then hang up (no 10 s timeout)
            # (requests, as schemathesis sends them: httpx refuses some generated headers, e.g. "Bearer ")
            with requests.get(f"{live_server.url}/live", params=case.query, headers={**(case.headers or {}), **headers},
                              stream=True, timeout=10) as response:
                statuses[response.status_code] += 1
                assert response.status_code < 500, (case.query, response.status_code)
            return
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    print(f"{mode.value}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= FUZZ_EXAMPLES // 2 and not any(s >= 500 for s in statuses)
