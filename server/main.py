"""Builds the FastAPI app: routers, dependencies' state, and the database migration at startup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from server.api.deps import EngineWaker, require_token
from server.api.routes import export, generations, health, manifold, sessions, stimuli, threads
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
    app.state.settings = settings
    app.state.token = token
    app.state.sessionmaker = db.make_sessionmaker(database)
    app.state.archive = ImageArchive(settings.data_dir)
    app.state.engine = engine

    app.include_router(health.router)
    for resource in (sessions, threads, generations, stimuli, manifold, export):
        app.include_router(
            resource.router, dependencies=[Depends(require_token)], responses={401: {"model": ErrorDetail}}
        )
    return app
