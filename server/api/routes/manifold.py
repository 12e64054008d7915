"""Manifold tuning maps: the analysis of a manifold thread as JSON and as figures."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Response, status

from analysis import MAX_RESAMPLES, AnalysisError
from server import ServerError
from server.api.deps import DB, MAX_ID, Id, get_or_404
from server.api.schemas import ErrorDetail, ManifoldPlaneRead
from analysis.manifold import analyze, summary
from server.manifold import manifold_data, plot_plane
from server.store.models import Thread

router = APIRouter(prefix="/threads", tags=["manifold"],
                   responses={404: {"model": ErrorDetail}, 409: {"model": ErrorDetail}})


def _data(db, thread_id: int):
    get_or_404(db, Thread, thread_id)
    try:
        return manifold_data(db, thread_id)
    except ServerError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from error


def _analyze(data, **options) -> list[dict]:
    """`analyze`; a map it cannot analyse (e.g. a grid point still without trials) is a 409."""
    try:
        return analyze(data, **options)
    except AnalysisError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the map cannot be analysed: {error}") from error


@router.get("/{thread_id}/manifold", response_model=list[ManifoldPlaneRead])
def get_manifold(thread_id: Id, db: DB, reliability: bool = Query(False),
                 n_boot: int | None = Query(None, ge=10, le=MAX_RESAMPLES, description="bootstrap resamples of "
                                            "reliability=true (default 50)")) -> list[dict]:
    """Level-set signature, mesh persistence and isotropy of each plane; with ``reliability=true`` also
    split-half and bootstrap reliability (hundreds of spline fits: seconds to minutes), a ``409`` when a
    plane has one trial per grid point."""
    if n_boot is not None and not reliability:
        raise HTTPException(422, [{"type": "value_error", "loc": ["query", "n_boot"], "msg": "n_boot sets the "
                                   "bootstrap of reliability=true; add reliability=true, or leave n_boot out"}])
    data = _data(db, thread_id)
    unrepeated = data.unrepeated_planes()
    if reliability and unrepeated:
        raise HTTPException(status.HTTP_409_CONFLICT, f"reliability=true: plane(s) {', '.join(unrepeated)} of "
                            f"thread {thread_id} have one trial per grid point (repeats: 1), and reliability needs "
                            "repeated trials; ask without reliability, or record the map with repeats >= 2")
    return summary(_analyze(data, n_boot=n_boot or 50, reliability=reliability))


@router.get("/{thread_id}/manifold.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "Smoothed map with its level sets."}})
def get_manifold_png(thread_id: Id, db: DB, plane: int = Query(0, ge=0, le=MAX_ID)) -> Response:
    data = _data(db, thread_id)
    if plane >= len(data.planes):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"plane {plane}: this map has {len(data.planes)} plane(s)")
    data = _restrict(data, plane)
    (result,) = _analyze(data, reliability=False)
    return Response(plot_plane(data, result, f"thread {thread_id}, plane {data.planes[0]}"), media_type="image/png")


def _restrict(data, plane: int):
    from dataclasses import replace

    return replace(data, planes=[data.planes[plane]], trials=[data.trials[plane]])
