"""Generations: one generation with its stimulus ids and scores."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import DB, Id, get_or_404
from server.api.schemas import ErrorDetail, GenerationRead, GenerationSummary
from server.store.models import Generation
from server.store.queries import rig_latencies

router = APIRouter(prefix="/generations", tags=["generations"], responses={404: {"model": ErrorDetail}})


@router.get("/{generation_id}", response_model=GenerationRead)
def get_generation(generation_id: Id, db: DB) -> GenerationRead:
    generation = get_or_404(db, Generation, generation_id)
    summary = GenerationSummary.model_validate(generation)
    return GenerationRead(**summary.model_dump(exclude={"rig_latency_s"}),
                          rig_latency_s=rig_latencies(db, generation.thread_id).get(generation.id),
                          stimulus_ids=[stimulus.id for stimulus in generation.stimuli])
