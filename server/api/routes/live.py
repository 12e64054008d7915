"""The live stream: Server-Sent Events of what happens (events, batches), for dashboards.

Read it with ``fetch`` and the ``Authorization`` header (the browser's ``EventSource`` cannot send
one). Each message is ``event: <kind>`` with a JSON ``data`` line (see ``server.live.Hub.publish``);
a ``dropped`` message says this reader fell behind and lost items (reload over REST); a comment
line every ``KEEPALIVE_S`` keeps proxies from closing an idle stream. The stream ends when the server stops.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from server import live
from server.api.deps import MAX_ID
from server.api.schemas import ErrorDetail

router = APIRouter(tags=["live"])
KEEPALIVE_S = 15.0


def _message(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/live", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 503: {"model": ErrorDetail}})
async def live_stream(session_id: int | None = Query(None, ge=0, le=MAX_ID, description="Only this session's items.")):
    """Server-Sent Events: generation completed, batch sent/answered, rig connected/lost, warnings."""
    try:
        subscription = live.hub.subscribe(session_id)
    except ValueError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None

    async def stream() -> AsyncIterator[str]:
        dropped = 0
        try:
            yield ": connected\n\n"
            while not subscription.ended:
                items = await subscription.get(KEEPALIVE_S)
                if subscription.dropped != dropped:
                    dropped = subscription.dropped
                    yield _message("dropped", {"dropped": dropped})
                if not items:
                    yield ": keepalive\n\n"
                for item in items:
                    yield _message(item["kind"], item)
        finally:
            subscription.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
