"""Session export: the whole session as one NWB file, built once for the session's data and kept while newer exports
leave it room, so a download tool's HEAD and the GET after it get the same file."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse

from rig_client.version import package_version
from server.api.deps import DB, Archive, Id
from server.api.schemas import ErrorDetail
from server.export import ExportError, NwbUnavailable, SessionRunning, nwb_writer, session_tables
from server.export.tables import (
    MissingImage,
    NoPresentations,
    SessionTables,
    dandi_warning,
    require_presentations,
    subject_overrides,
)

router = APIRouter(prefix="/sessions", tags=["export"])
NWB_MEDIA_TYPE = "application/x-nwb"
WARNING_HEADER = "X-Actmax-Warning"  # subject metadata DANDI requires that the file lacks (docs/export.md)
EXPORTS_FOLDER = "exports"  # under the data folder: the NWB files sent last, each sent again while its data is unchanged
MAX_KEPT_EXPORTS = 4  # files kept there; the least recently sent goes first
_BUILDING = f".building-{os.getpid()}-"  # this process's files being written there (others: left by a crash)
_kept = threading.Lock()  # a kept file is found, published or removed by one request at a time


def subject_query(
    subject_id: str | None = Query(None, description="Subject identifier, over the session config's."),
    species: str | None = Query(None, description='Latin binomial such as "Macaca mulatta", over the config\'s.'),
    sex: str | None = Query(None, description="M, F, U (unknown) or O (other), over the config's."),
    age: str | None = Query(None, description='ISO 8601 duration such as "P6Y", over the config\'s.'),
) -> dict[str, str]:
    """Subject metadata given for this export (``subject_overrides``); a ``422`` naming each malformed one."""
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


Tables = Annotated[SessionTables, Depends(nwb_tables)]


class WholeFile(FileResponse):
    """A file sent whole, to a ``Range`` request too (``200``; ``_headers`` say ``Accept-Ranges: none``): the file kept
    for a session is replaced by a new build, whose bytes differ, once its data changes or newer exports push it out,
    so a download resumed with a range could splice two files."""

    async def __call__(self, scope, receive, send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


def _headers(session_id: int, tables: SessionTables) -> dict[str, str]:
    headers = {"Content-Disposition": f'attachment; filename="actmax-session-{session_id}.nwb"',
               "Accept-Ranges": "none"}  # see WholeFile
    if (warning := dandi_warning(tables)) is not None:
        headers[WARNING_HEADER] = warning.encode("ascii", "backslashreplace").decode()  # header text is latin-1
    return headers


def tables_key(tables: SessionTables) -> str:
    """A digest of everything an NWB file is written from: the tables (images by their hashes, the subject given
    at export included) and the actmax and pynwb that write them. Equal tables pickle to equal bytes, and pickling
    takes a fraction of the time of the tables' text."""
    digest = hashlib.sha256(f"actmax {package_version()}, pynwb {metadata.version('pynwb')}".encode())
    digest.update(pickle.dumps(tables.items(), protocol=5))
    return digest.hexdigest()[:32]


def nwb_file(session_id: int, tables: SessionTables, archive: Archive) -> Path:
    """The session's NWB file of ``tables``: the one kept from an earlier request with equal tables, else built now
    (in the data folder, not /tmp: exports can be large, and /tmp may be memory) and kept. A length and an ETag are
    known only once the file is written, so a HEAD builds it too, and the GET after it sends the same file."""
    folder = archive.root / EXPORTS_FOLDER
    path = folder / f"session-{session_id}-{tables_key(tables)}.nwb"
    with _kept:
        if _sent(path):
            return path
    folder.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=_BUILDING, suffix=".nwb")
    os.close(fd)
    built = Path(name)
    try:
        nwb_writer()(tables, archive, built)
        with _kept:
            if not _sent(path):  # else another request built it meanwhile: that file stays, it may be being sent
                os.replace(built, path)
                _sent(path)
            _forget_old(folder)
    except MissingImage as error:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(error)) from None
    finally:
        built.unlink(missing_ok=True)
    return path


def _sent(path: Path) -> bool:
    """Mark a kept file sent now (its access time; its modification time, ``Last-Modified``, stays when it was
    built); False when there is none."""
    try:
        os.utime(path, (time.time(), path.stat().st_mtime))
    except FileNotFoundError:
        return False
    return True


def _forget_old(folder: Path) -> None:
    """Keep the ``MAX_KEPT_EXPORTS`` files sent last, and no file a crash left half-written."""
    kept = sorted(folder.glob("session-*.nwb"), key=lambda path: path.stat().st_atime, reverse=True)
    left = [path for path in folder.glob(".building-*") if not path.name.startswith(_BUILDING)]
    for path in kept[MAX_KEPT_EXPORTS:] + left:
        path.unlink(missing_ok=True)


@router.get(
    "/{session_id}/export.nwb",
    response_model=None,
    response_class=WholeFile,
    responses={
        200: {"content": {NWB_MEDIA_TYPE: {}}, "description": "The session as an NWB 2 (HDF5) file (docs/export.md), "
              f"always whole; a {WARNING_HEADER} header names subject metadata DANDI requires that the file lacks. "
              "The file built for the session's data is kept and sent again (the same ETag) while it is unchanged."},
        404: {"model": ErrorDetail, "description": "No such session."},
        409: {"model": ErrorDetail, "description": "The session has running or paused threads (stop them or wait), "
              "or no presentations."},
        501: {"model": ErrorDetail, "description": "This server lacks pynwb (pip install 'actmax[nwb]')."},
    },
)
def export_nwb(session_id: Id, tables: Tables, archive: Archive) -> WholeFile:
    """Every image, presentation, rate and score of a finished session, in one NWB file, sent whole (a ``Range``
    header is ignored); the query parameters set or correct the session config's subject metadata. HEAD answers
    the same status and headers (its length and ETag too: it builds the file, and the GET after it sends that)."""
    return WholeFile(nwb_file(session_id, tables, archive), media_type=NWB_MEDIA_TYPE,
                     headers=_headers(session_id, tables))


@router.head("/{session_id}/export.nwb", include_in_schema=False)
def probe_export_nwb(session_id: Id, tables: Tables, archive: Archive) -> WholeFile:
    """GET's status and headers (download tools probe first); the file is built, or found kept, for its length."""
    return export_nwb(session_id, tables, archive)
