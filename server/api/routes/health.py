"""``GET /health``: liveness, database and disk check, open without a token."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DBSession

from rig_client.version import package_version
from server.api.deps import DB
from server.api.schemas import Health

router = APIRouter(tags=["health"])
LOW_DISK_BYTES = 100 * 2**20  # less free space on the data folder's disk: degraded
RECENT_ERROR_S = 60.0  # a database or disk error met by a request keeps health degraded this long


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request, db: DB, response: Response) -> Health:
    """``ok`` with 200 if the database can be read and written, its disk and the image archive's have room and no
    thread is stalled on storage; else ``degraded`` with 503 and the problem."""
    state = request.app.state
    db_problems = list(filter(None, [_database_problem(db), _recent_error(state.storage_error)]))
    stalled = state.engine.storage_problem() if state.engine is not None else None
    problems = list(filter(None, [*db_problems, stalled, *map(disk_problem, _disks(state.settings.data_dir))]))
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="degraded" if problems else "ok", version=package_version(), db=not db_problems,
                  problem="; ".join(problems) or None)


def _disks(data_dir: Path) -> list[Path]:
    """The data folder, and its image archive when that is on another disk (a mount or a symlink)."""
    images = data_dir / "images"
    try:
        apart = images.exists() and images.stat().st_dev != data_dir.stat().st_dev
    except OSError:
        apart = False
    return [data_dir, images] if apart else [data_dir]


def disk_problem(folder: Path) -> str | None:
    """Says so when the disk of ``folder`` has less than ``LOW_DISK_BYTES`` free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError as error:
        return f"cannot check the free space of {folder}: {error.strerror}"
    if free < LOW_DISK_BYTES:
        return f"the disk of {folder} is (nearly) full: {free / 2**20:.0f} MiB free; free space there"
    return None


def _database_problem(db: DBSession) -> str | None:
    try:
        db.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError as error:
        return f"the database cannot be read: {getattr(error, 'orig', None) or error}"
    url = db.get_bind().url
    if url.get_backend_name() == "sqlite" and url.database and not os.access(url.database, os.W_OK):
        return f"the database {url.database} cannot be written (read-only)"
    return None


def _recent_error(error: tuple[float, str] | None) -> str | None:
    """The last database or disk error a request met (``(monotonic time, message)``), if recent."""
    if error is None or (ago := time.monotonic() - error[0]) > RECENT_ERROR_S:
        return None
    return f"a request failed {ago:.0f} s ago: {error[1]}"
