"""Builds the FastAPI app: routers, error handlers and the state its dependencies read."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from importlib.resources import files

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException

from rig_client.version import package_version
from server.api.deps import EngineWaker, bearer_scheme, declared_query
from server.api.guard import RequestGuard
from server.api.routes import (
    export,
    generations,
    generators,
    health,
    live,
    manifold,
    monitor,
    sessions,
    stimuli,
    threads,
)
from server.api.schemas import ErrorDetail
from server.session_config import clip, problem_message
from server.settings import Settings
from server.store.archive import ImageArchive
from server.weights import GeneratorCache

log = logging.getLogger(__name__)
MAX_PROBLEMS = 50  # items of a 422: a body with thousands of bad keys gets the first ones and a count
SERVER_ERRORS = {  # status -> its description in the OpenAPI document, declared on every operation
    "500": "An unexpected failure; the server logged its cause.",
    "503": "The database or disk failed (`detail` says what to do), or the server has ACTMAX_HTTP_MAX_CONNECTIONS "
           "connections open.",
}
QUERY_ERROR = "A query parameter the operation does not take (each named, with those it takes)."
_STORAGE_HINTS = (  # words in a database or disk error -> what to do ({data_dir} and {free} filled in)
    (("is full", "no space", "quota"), "free space on the disk of {data_dir} ({free:.0f} MiB free now) and retry"),
    (("readonly", "read-only"), "make {data_dir} and its files writable again and retry"),
    (("locked", "busy"), "another process holds the database; retry later"),
    (("malformed", "not a database", "i/o error", "input/output"),
     "the database file may be damaged: stop the server (it checks the file as it starts) and see README.md, "
     "'Operating the server'"),
)


def create_app(settings: Settings, db_sessions: sessionmaker[DBSession], *,
               engine: EngineWaker | None = None) -> FastAPI:
    """The REST app on ``db_sessions`` (a migrated database; the caller owns its database engine).
    ``engine`` (see ``EngineWaker``) is woken after every change of intent.

    Raises ``ServerError`` when ``settings.token`` is unset: the API never runs open.
    """
    token = settings.require_token()
    app = FastAPI(title="actmax", version=package_version(), docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, token=token, max_body_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for storage in (SQLAlchemyError, sqlite3.Error, OSError):
        app.add_exception_handler(storage, _storage_error)
    app.state.settings = settings
    app.state.sessionmaker = db_sessions
    app.state.archive = ImageArchive(settings.data_dir)
    app.state.engine = engine
    app.state.storage_error = None  # (monotonic time, message) of the last database or disk error; see /health
    app.state.generators = getattr(engine, "generators", None) or GeneratorCache(
        settings.device, settings.weights_dir, settings.precision)

    app.include_router(health.router)  # open, and lenient: an uptime monitor may add a cache-buster
    for resource in (sessions, threads, generations, stimuli, manifold, monitor, live, export, generators):
        app.include_router(
            resource.router, dependencies=[Depends(bearer_scheme), Depends(declared_query)],
            responses={401: {"model": ErrorDetail}, 413: {"model": ErrorDetail}},
        )
    _add_pages(app)
    app.openapi = lambda: app.openapi_schema or _complete_openapi(FastAPI.openapi(app))
    return app


def _complete_openapi(document: dict) -> dict:
    """FastAPI's OpenAPI document with what it leaves out for client generators: a binary schema for each file
    response (PNG, NWB), on every operation but /health the 422 (a query parameter it does not take:
    ``declared_query``), and on all the 500 and 503 (a database or disk failure, or one connection too many) that any request may get."""
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for response in operation["responses"].values():
                for media_type, content in response.get("content", {}).items():
                    if "json" not in media_type and not media_type.startswith("text/"):
                        content.setdefault("schema", {"type": "string", "format": "binary"})
            if path != "/health":  # open and lenient (see create_app)
                operation["responses"].setdefault("422", {"description": QUERY_ERROR, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}})
            for code, description in SERVER_ERRORS.items():
                operation["responses"].setdefault(code, {"description": description, "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorDetail.__name__}"}}}})
    return document


def _add_pages(app: FastAPI) -> None:
    """The dashboard at /ui and the API docs at /docs and /redoc, every asset served from the package (offline)."""
    import fastapi_offline

    assets = files(fastapi_offline) / "static"
    # ReDoc's sidebar shows Redocly's logo from their CDN: point it at the local favicon instead.
    redoc_js = (assets / "redoc.standalone.js").read_text(encoding="utf-8").replace(
        "https://cdn.redoc.ly/redoc/logo-mini.svg", "/assets/docs/favicon.png")

    @app.get("/assets/docs/redoc.standalone.js", include_in_schema=False)
    def redoc_script() -> Response:
        return Response(redoc_js, media_type="text/javascript")

    app.mount("/ui", StaticFiles(directory=str(files("server") / "web"), html=True), name="ui")
    app.mount("/assets/docs", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title="actmax API", swagger_js_url="/assets/docs/swagger-ui-bundle.js",
            swagger_css_url="/assets/docs/swagger-ui.css", swagger_favicon_url="/assets/docs/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title="actmax API", with_google_fonts=False,
                              redoc_js_url="/assets/docs/redoc.standalone.js",
                              redoc_favicon_url="/assets/docs/favicon.png")


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each problem (a misspelt key with the closest allowed ones), without echoing the input (it may
    be huge, deep, or NaN): messages and keys are clipped, and at most ``MAX_PROBLEMS`` are listed; a body that
    is not read as JSON says which Content-Type to send."""
    body = getattr(request.scope.get("route"), "body_field", None)
    model = body.field_info.annotation if body is not None else None
    errors = exc.errors()
    detail = [{"loc": [clip(part, 100) if isinstance(part, str) else part for part in e["loc"]],
               "msg": problem_message(e, model), "type": e["type"]} for e in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        detail.append({"loc": ["body"], "msg": f"{len(errors) - MAX_PROBLEMS} more problems not listed; fix these "
                       "first", "type": "value_error"})
    content_type = request.headers.get("content-type", "")
    for problem in detail:
        if problem["loc"] == ["body"] and "json" not in content_type:
            problem["msg"] += (f" (the body was sent as {content_type or 'no Content-Type'}; send JSON with "
                               "Content-Type: application/json)")
    return JSONResponse({"detail": detail}, status_code=422)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """FastAPI's answer, but a JSON body nested deeper than Python's parser goes (FastAPI's 400 "There was an error
    parsing the body") is the 422 of any other JSON that cannot be read."""
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        return JSONResponse({"detail": [{"loc": ["body"], "type": "json_invalid", "msg": (
            "JSON decode error: the body nests too deep to be read (a session config nests a few levels)")}]},
            status_code=422)
    return await http_exception_handler(request, exc)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    """503 naming a database or disk failure (a full or read-only disk, a damaged file) and what to do, logged in
    one line (with the traceback when it is none of those); ``/health`` reports it for a while."""
    reason = str(getattr(exc, "orig", None) or exc)
    data_dir = request.app.state.settings.data_dir
    hint = next((hint for words, hint in _STORAGE_HINTS if any(word in reason.lower() for word in words)), None)
    if hint is not None:
        hint = hint.format(data_dir=data_dir, free=shutil.disk_usage(data_dir).free / 2**20)
    message = f"the database or disk failed: {reason}; {hint or 'the server logged the cause'}"
    request.app.state.storage_error = time.monotonic(), reason
    log.error("%s %s: %s", request.method, request.url.path, message, exc_info=hint is None)
    return JSONResponse({"detail": message}, status_code=503)

