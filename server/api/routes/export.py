"""Session export: the whole session as one NWB file, written to a temporary file and streamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from server.api.deps import DB, Archive, Id
from server.api.schemas import ErrorDetail

if TYPE_CHECKING:
    from server.export.tables import SessionTables

# server.export.tables is imported in each request, not here: it brings pandas, 0.3 s of every server start (and so of
# every restart after a crash, bench/recovery.py).

router = APIRouter(prefix="/sessions", tags=["export"])
NWB_MEDIA_TYPE = "application/x-nwb"
WARNING_HEADER = "X-Actmax-Warning"  # subject metadata DANDI requires that the file lacks (docs/export.md)


def subject_query(
    subject_id: str | None = Query(None, description="Subject identifier, over the session config's."),
    species: str | None = Query(None, description='Latin binomial such as "Macaca mulatta", over the config\'s.'),
    sex: str | None = Query(None, description="M, F, U (unknown) or O (other), over the config's."),
    age: str | None = Query(None, description='ISO 8601 duration such as "P6Y", over the config\'s.'),
) -> dict[str, str]:
    """Subject metadata given for this export (``subject_overrides``); a ``422`` naming each malformed one."""
    from server.export.tables import ExportError, subject_overrides

    given = {"subject_id": subject_id, "species": species, "sex": sex, "age": age}
    problems = []
    for field, value in given.items():
        try:
            subject_overrides(**{field: value})
        except ExportError as error:
            problems.append({"type": "value_error", "loc": ["query", field], "msg": str(error)})
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)
    return subject_overrides(**given)


Subject = Annotated[dict[str, str], Depends(subject_query)]


def nwb_tables(session_id: Id, db: DB, subject: Subject) -> SessionTables:
    """The session's tables for an NWB file, or the HTTP error saying why there is none."""
    from server.export import ExportError, NwbUnavailable, SessionRunning, nwb_writer, session_tables
    from server.export.tables import NoPresentations, require_presentations

    try:
        nwb_writer()
    except NwbUnavailable as error:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, str(error)) from None
    try:
        tables = session_tables(db, session_id, subject=subject)
        require_presentations(tables)
    except (SessionRunning, NoPresentations) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except ExportError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    return tables


Tables = Annotated[Any, Depends(nwb_tables)]  # SessionTables (imported at the first export)


class WholeFile(FileResponse):
    """A file sent whole, to a ``Range`` request too (``200``; ``_headers`` say ``Accept-Ranges: none``): each export
    is a new build whose bytes differ, so a download resumed with a range would splice two files."""

    async def __call__(self, scope, receive, send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


def _headers(session_id: int, tables: SessionTables) -> dict[str, str]:
    from server.export.tables import dandi_warning

    headers = {"Content-Disposition": f'attachment; filename="actmax-session-{session_id}.nwb"',
               "Accept-Ranges": "none"}  # see WholeFile
    if (warning := dandi_warning(tables)) is not None:
        headers[WARNING_HEADER] = warning.encode("ascii", "backslashreplace").decode()  # header text is latin-1
    return headers


@router.get(
    "/{session_id}/export.nwb",
    response_model=None,
    response_class=WholeFile,
    responses={
        200: {"content": {NWB_MEDIA_TYPE: {}}, "description": "The session as an NWB 2 (HDF5) file (docs/export.md), "
              f"always whole (each export is a new build); a {WARNING_HEADER} header names subject metadata DANDI "
              "requires that the file lacks."},
        404: {"model": ErrorDetail, "description": "No such session."},
        409: {"model": ErrorDetail, "description": "The session has running or paused threads (stop them or wait), "
              "or no presentations."},
        501: {"model": ErrorDetail, "description": "This server lacks pynwb (pip install 'actmax[nwb]')."},
    },
)
def export_nwb(session_id: Id, tables: Tables, archive: Archive) -> WholeFile:
    """Every image, presentation, rate and score of a finished session, in one NWB file, sent whole (a ``Range``
    header is ignored); the query parameters set or correct the session config's subject metadata. HEAD answers
    the same status and headers without writing the file."""
    from server.export import nwb_writer
    from server.export.tables import MissingImage

    # In the data folder, not /tmp: exports can be large, and /tmp may be memory.
    fd, name = tempfile.mkstemp(dir=archive.root, prefix=f".export-session-{session_id}-", suffix=".nwb")
    os.close(fd)
    path = Path(name)
    try:
        nwb_writer()(tables, archive, path)
    except BaseException as error:
        path.unlink(missing_ok=True)
        if isinstance(error, MissingImage):
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(error)) from None
        raise
    return WholeFile(path, media_type=NWB_MEDIA_TYPE, headers=_headers(session_id, tables),
                     background=BackgroundTask(path.unlink, missing_ok=True))


@router.head("/{session_id}/export.nwb", include_in_schema=False)
def probe_export_nwb(session_id: Id, tables: Tables) -> Response:
    """GET's status and headers, without writing the file (so without its length): download tools probe first."""
    response = Response(media_type=NWB_MEDIA_TYPE, headers=_headers(session_id, tables))
    del response.headers["content-length"]
    return response
