"""Builds the FastAPI app: routers and the state its dependencies read."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

from server.api.deps import EngineWaker, require_token
from server.api.routes import export, generations, health, manifold, sessions, stimuli, threads
from server.api.routes.health import package_version
from server.api.schemas import ErrorDetail
from server.settings import Settings
from server.store.archive import ImageArchive


def create_app(settings: Settings, db_sessions: sessionmaker[DBSession], *,
               engine: EngineWaker | None = None) -> FastAPI:
    """The REST app on ``db_sessions`` (a migrated database; the caller owns its database engine).
    ``engine`` (see ``EngineWaker``) is woken after every change of intent.

    Raises ``ServerError`` when ``settings.token`` is unset: the API never runs open.
    """
    token = settings.require_token()
    app = FastAPI(title="actmax", version=package_version())
    app.state.settings = settings
    app.state.token = token
    app.state.sessionmaker = db_sessions
    app.state.archive = ImageArchive(settings.data_dir)
    app.state.engine = engine

    app.include_router(health.router)
    for resource in (sessions, threads, generations, stimuli, manifold, export):
        app.include_router(
            resource.router, dependencies=[Depends(require_token)], responses={401: {"model": ErrorDetail}}
        )
    return app
