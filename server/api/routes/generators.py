"""``GET /generators``: every registered generator, where its weights are looked for, found or missing."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Generators
from server.api.schemas import GeneratorRead

router = APIRouter(prefix="/generators", tags=["generators"])


@router.get("", response_model=list[GeneratorRead])
def list_generators(cache: Generators) -> list[dict]:
    """Loads each generator once (cached for sessions) to say whether its weights load, and their sha256."""
    return [status.to_json() for status in cache.statuses()]
