"""Builds the FastAPI app: routers, dependencies' state, and the database migration at startup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.api.deps import EngineWaker, bearer_scheme
from server.api.guard import RequestGuard
from server.api.routes import generations, health, manifold, sessions, stimuli, threads
from server.api.routes.health import package_version
from server.api.schemas import ErrorDetail
from server.settings import Settings
from server.store import db
from server.store.archive import ImageArchive


def create_app(settings: Settings, *, engine: EngineWaker | None = None) -> FastAPI:
    """The REST app. ``engine`` (see ``EngineWaker``) is woken after every change of intent.

    Raises ``ServerError`` when ``settings.token`` is unset: the API never runs open.
    """
    token = settings.require_token()
    database = db.make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        db.upgrade(settings.database_url)
        yield
        database.dispose()

    app = FastAPI(title="actmax", version=package_version(), lifespan=lifespan)
    app.add_middleware(RequestGuard, token=token, max_body_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.settings = settings
    app.state.sessionmaker = db.make_sessionmaker(database)
    app.state.archive = ImageArchive(settings.data_dir)
    app.state.engine = engine

    app.include_router(health.router)
    for resource in (sessions, threads, generations, stimuli, manifold):
        app.include_router(
            resource.router, dependencies=[Depends(bearer_scheme)],
            responses={401: {"model": ErrorDetail}, 413: {"model": ErrorDetail}},
        )
    return app


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each problem, without echoing the input (it may be huge, deep, or NaN)."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)
