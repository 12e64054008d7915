"""``GET /health``: liveness and database check, open without a token."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from server.api.deps import DB
from server.api.schemas import Health

router = APIRouter(tags=["health"])


def package_version() -> str:
    try:
        return version("actmax")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(db: DB, response: Response) -> Health:
    """``ok`` with 200 if the database answers, else ``degraded`` with 503."""
    try:
        db.execute(text("SELECT 1"))
        db_ok = True
    except SQLAlchemyError:
        db_ok = False
    if not db_ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if db_ok else "degraded", version=package_version(), db=db_ok)
