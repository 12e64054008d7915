"""FastAPI dependencies: settings, database session, bearer token check, query parameter check, archive, engine
wake-up and pagination."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from types import UnionType
from typing import Annotated, Any, Protocol, TypeVar, Union, get_args, get_origin

from fastapi import Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session as DBSession

from server.api.schemas import Page
from server.session_config import clip
from server.settings import Settings
from server.store.archive import ImageArchive
from server.store.models import Thread
from server.weights import GeneratorCache

Model = TypeVar("Model")


class EngineWaker(Protocol):
    """What ``create_app(engine=...)`` needs from the experiment engine.

    ``wake()`` is called after the API has committed a change of intent (a session created; a
    thread paused, resumed or stopped). It must return at once and be safe to call from any thread
    (sync endpoints run in a worker pool), e.g. ``loop.call_soon_threadsafe(self._wakeup.set)``.
    The engine then re-reads the database; the API hands it nothing else.
    """

    def wake(self) -> None: ...

    def rig_channel_count(self, rig: str) -> int | None:
        """The channels a connected rig announced in HELLO; None when it is not connected."""

    def storage_problem(self) -> str | None:
        """The storage failure a thread is stalled on, if any (``/health``)."""


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[DBSession]:
    with request.app.state.sessionmaker() as db:
        yield db


def get_archive(request: Request) -> ImageArchive:
    return request.app.state.archive


def get_wake(request: Request) -> Callable[[], None]:
    """The engine's ``wake`` if the app has an engine, else a no-op."""
    engine: EngineWaker | None = request.app.state.engine
    return engine.wake if engine is not None else lambda: None


def get_rig_channels(request: Request) -> Callable[[str], int | None]:
    """The engine's ``rig_channel_count`` (no engine: no rig is connected)."""
    engine: EngineWaker | None = request.app.state.engine
    return engine.rig_channel_count if engine is not None else lambda rig: None


def get_generators(request: Request) -> GeneratorCache:
    return request.app.state.generators


_bearer = HTTPBearer(auto_error=False, description="The server's ACTMAX_TOKEN.")


def bearer_scheme(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Declares the bearer token in the OpenAPI document; `RequestGuard` checks it before the body is read."""


MAX_UNKNOWN_NAMED = 10  # unknown query parameters a 422 names one by one; more are counted


def declared_query(request: Request) -> None:
    """A ``422`` naming each query parameter the route does not take, with the closest one it takes and all of them:
    a misspelt filter (``?thread=3`` for ``thread_id``) would otherwise be ignored and answer everything; and each
    one that takes a single value given more than once (``?limit=1&limit=2`` read only the last)."""
    route = request.scope["route"]
    fields = query_fields(route.dependant)
    taken = list(fields)
    unknown = [name for name in request.query_params if name not in fields]
    repeated = [name for name in dict.fromkeys(request.query_params) if name in fields and not fields[name]
                and len(request.query_params.getlist(name)) > 1]
    if not unknown and not repeated:
        return
    takes = f"takes {', '.join(taken)}" if taken else "takes no query parameters"
    problems = []
    for name in unknown[:MAX_UNKNOWN_NAMED]:
        close = difflib.get_close_matches(name.lower(), taken, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append({"type": "extra_forbidden", "loc": ["query", clip(name, 100)],
                         "msg": f"unknown query parameter {clip(name, 100)!r}: {request.method} {route.path} {takes}"
                                f"{hint}"})
    if len(unknown) > MAX_UNKNOWN_NAMED:
        problems.append({"type": "extra_forbidden", "loc": ["query"],
                         "msg": f"{len(unknown) - MAX_UNKNOWN_NAMED} more unknown query parameters not listed"})
    problems += [{"type": "value_error", "loc": ["query", name],
                  "msg": f"{name} is given {len(request.query_params.getlist(name))} times: give it once"}
                 for name in repeated]
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


def query_fields(dependant: Dependant) -> dict[str, bool]:
    """The query parameters an endpoint takes, its dependencies' too, in the order they are declared: whether each
    takes several values (a list)."""
    fields = {field.alias: _takes_many(field.field_info.annotation) for field in dependant.query_params}
    for dependency in dependant.dependencies:
        fields |= {name: many for name, many in query_fields(dependency).items() if name not in fields}
    return fields


def _takes_many(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return origin in (Union, UnionType) and any(_takes_many(arg) for arg in get_args(annotation))


def get_or_404(db: DBSession, model: type[Model], id: Any) -> Model:
    """The row of ``model`` with primary key ``id``, or a 404 naming it (e.g. "thread 7 not found")."""
    row = db.get(model, id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{model.__name__.lower()} {id!r} not found")
    return row


def paginate(db: DBSession, query: Select, order_by: Any, schema: type[BaseModel], offset: int, limit: int) -> Page:
    """One page of ``query`` in ``order_by`` order, with the total row count, as a ``Page[schema]``."""
    total = db.scalar(select(func.count()).select_from(query.subquery()))
    rows = db.scalars(query.order_by(order_by).offset(offset).limit(limit))
    return Page[schema](items=[schema.model_validate(row) for row in rows], total=total, offset=offset, limit=limit)


AppSettings = Annotated[Settings, Depends(get_settings)]
DB = Annotated[DBSession, Depends(get_db)]
MAX_ID = 2**63 - 1  # SQLite's INTEGER; larger values are 422, not an OverflowError
Id = Annotated[int, Path(ge=0, le=MAX_ID)]
StimulusId = Annotated[str, Path(min_length=1, max_length=128)]  # the protocol's id
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Archive = Annotated[ImageArchive, Depends(get_archive)]
Wake = Annotated[Callable[[], None], Depends(get_wake)]
RigChannels = Annotated[Callable[[str], int | None], Depends(get_rig_channels)]
Generators = Annotated[GeneratorCache, Depends(get_generators)]


def refuse(problems: list) -> None:
    """A 422 shaped like FastAPI's own (``detail``: one item per problem, with its field path)."""
    if problems:
        raise HTTPException(422, [problem.to_json() for problem in problems])


def check_generations(thread: Thread, last: int, loc: tuple[str, ...] = ("body", "generations")) -> None:
    """A ``422`` at ``loc`` unless the thread can have generation ``last``: it runs ``n_generations``, numbered
    from 0."""
    if last >= thread.n_generations:
        raise HTTPException(422, [{"type": "value_error", "loc": list(loc), "msg": (
            f"thread {thread.id} {thread.name!r} has no generation {last}: it runs {thread.n_generations} "
            f"generation(s), numbered from 0, so its last is {thread.n_generations - 1}")}])


CLIENTS = {"cli": "the CLI", "dashboard": "the dashboard"}  # X-Actmax-Client values, as an action's event names them


def get_via(x_actmax_client: Annotated[str | None, Header(
        description="Who sends the request, for the event of an action it takes: `cli` (actmax's CLI), `dashboard`; "
        "none or another value: a script (the event says `via REST`).")] = None) -> str:
    """How an action reached the server, as its event says it: ``the CLI``, ``the dashboard`` or ``REST``."""
    return CLIENTS.get(x_actmax_client or "", "REST")


Via = Annotated[str, Depends(get_via)]
