"""Stimuli: provenance metadata and the PNG itself."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from server.api.deps import DB, Archive, StimulusId, get_or_404
from server.api.schemas import ErrorDetail, StimulusRead
from server.store.models import Stimulus

router = APIRouter(prefix="/stimuli", tags=["stimuli"], responses={404: {"model": ErrorDetail}})


@router.get("/{stimulus_id}", response_model=StimulusRead)
def get_stimulus(stimulus_id: StimulusId, db: DB) -> Stimulus:
    return get_or_404(db, Stimulus, stimulus_id)


@router.get(
    "/{stimulus_id}/png",
    response_model=None,
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG exactly as sent to the rig."}},
)
def get_stimulus_png(stimulus_id: StimulusId, db: DB, archive: Archive) -> FileResponse:
    stimulus = get_or_404(db, Stimulus, stimulus_id)
    path = archive.path(stimulus.content_hash)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, archive.lost(f"the image of stimulus {stimulus_id!r} "
                                                                    f"({stimulus.png_path})"))
    return FileResponse(path, media_type="image/png")
