"""The REST port's connections: uvicorn's HTTP/1.1 protocol with the two limits it lacks, and a log filter.

uvicorn's own ``limit_concurrency`` answers 503 only to a request that has arrived in full, so clients that
never finish their headers pile up until the process runs out of open files (and the rigs' ZeroMQ socket
with it). Here a connection over the limit is answered 503 and closed at once, before its request is read,
and a connection gets ``request_timeout_s`` to send each request in full (headers and body); one still
sending then is closed. A request that has arrived (a live stream, an export) is never cut short.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
REFUSED = "REST connection refused"  # the start of the log line of a connection over the limit


class HttpConfig(uvicorn.Config):
    """uvicorn's config served by ``LimitedH11Protocol``: ``limit_concurrency`` is the most connections open at
    once, ``request_timeout_s`` the time each request has to arrive in full."""

    def __init__(self, app, *, request_timeout_s: float, **options) -> None:
        super().__init__(app, http=LimitedH11Protocol, **options)
        self.request_timeout_s = request_timeout_s


class LimitedH11Protocol(H11Protocol):
    """One REST connection (see the module's docstring)."""

    def __init__(self, config: HttpConfig, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Counted when a connection opens, not when its request is complete (which uvicorn's check would do).
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None
        self.request_timeout_s = config.request_timeout_s
        self.request_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self._refuse()
        else:
            self._await_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request()  # the next request on this connection, if any, gets its own time

    def connection_lost(self, exc: Exception | None) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
        super().connection_lost(exc)

    def _await_request(self) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
        self.request_timer = self.loop.call_later(self.request_timeout_s, self._request_overdue)

    def _request_overdue(self) -> None:
        self.request_timer = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()  # no request yet, or one whose headers or body are still coming

    def _refuse(self) -> None:
        body = (b'{"detail":"the server has too many REST connections open (ACTMAX_HTTP_MAX_CONNECTIONS); '
                b'retry shortly"}')
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()
        log.warning("%s: %d open, the most ACTMAX_HTTP_MAX_CONNECTIONS allows", REFUSED, self.max_connections)


class OncePerPeriod(logging.Filter):
    """Lets a log record whose message starts with ``prefix`` through at most once per ``period_s``, as one line
    (no traceback) ending with ``hint`` and how many such records were held back since the last one.

    For errors that repeat per connection, such as asyncio's "socket.accept() out of system resource" with
    its traceback at every try, which would fill the disk the logs are kept on.
    """

    def __init__(self, prefix: str, hint: str = "", period_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix, self.hint, self.period_s, self.clock = prefix, hint, period_s, clock
        self.held = 0
        self.next_at = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        now = self.clock()
        if now < self.next_at:
            self.held += 1
            return False
        error = record.exc_info[1] if record.exc_info else None
        parts = [message.splitlines()[0] + (f" ({type(error).__name__}: {error})" if error else "")]
        parts += [self.hint] if self.hint else []
        parts += [f"{self.held} more like it since the last such line, not logged"] if self.held else []
        record.msg, record.args, record.exc_info, record.exc_text = "; ".join(parts), (), None, None
        self.held, self.next_at = 0, now + self.period_s
        return True
