"""Session export: the whole session as one NWB file, written to a temporary file and streamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from server.api.deps import DB, Archive, Id
from server.api.schemas import ErrorDetail
from server.export import ExportError, NwbUnavailable, SessionRunning, nwb_writer, session_tables

router = APIRouter(prefix="/sessions", tags=["export"])
NWB_MEDIA_TYPE = "application/x-nwb"


@router.get(
    "/{session_id}/export.nwb",
    response_model=None,
    response_class=FileResponse,
    responses={
        200: {"content": {NWB_MEDIA_TYPE: {}}, "description": "The session as an NWB 2 (HDF5) file (docs/export.md)."},
        404: {"model": ErrorDetail, "description": "No such session."},
        409: {"model": ErrorDetail, "description": "The session has running or paused threads; stop them or wait."},
        501: {"model": ErrorDetail, "description": "This server lacks pynwb (pip install 'actmax[nwb]')."},
    },
)
def export_nwb(session_id: Id, db: DB, archive: Archive) -> FileResponse:
    """Every image, presentation, rate and score of a finished session, in one NWB file."""
    try:
        write_nwb = nwb_writer()
    except NwbUnavailable as error:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, str(error)) from None
    try:
        tables = session_tables(db, session_id)
    except SessionRunning as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except ExportError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    # In the data folder, not /tmp: exports can be large, and /tmp may be memory.
    fd, name = tempfile.mkstemp(dir=archive.root, prefix=f".export-session-{session_id}-", suffix=".nwb")
    os.close(fd)
    path = Path(name)
    try:
        write_nwb(tables, archive, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(path, media_type=NWB_MEDIA_TYPE, filename=f"actmax-session-{session_id}.nwb",
                        background=BackgroundTask(path.unlink, missing_ok=True))
