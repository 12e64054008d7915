"""Pure ASGI middleware in front of the REST app: the token is checked from the headers, before
any body is read, and a body over the size limit is refused while it streams in (never parsed).
Every response carries headers that keep browsers from sniffing its type, framing it or sending its
address on; the dashboard's files also carry a content security policy that lets the page run only
its own scripts and talk only to this server (a script smuggled into the page by data it shows does
not run).

The API description (``/docs``, ``/redoc``, ``/openapi.json``) and ``/health`` are open: they hold
no data, describe an open-source API, and a browser cannot send a bearer token to load them.

An error no handler of the app answers is a 500 here, logged with its traceback: a clean answer on a connection
the client may go on using (raised past the app instead, uvicorn dropped the connection after the 500).
"""

from __future__ import annotations

import hmac
import json
import logging

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# The dashboard's static files and the API docs' bundled assets: code, no data (the page logs in itself).
OPEN_PREFIXES = ("/ui", "/assets/docs/")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
# Inline styles stay allowed: the charts and image grids size themselves with style attributes.
DASHBOARD_POLICY = (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self' "
                    b"'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                    b"form-action 'self'; frame-ancestors 'none'")


class RequestGuard:
    """401 without ``Authorization: Bearer <token>``; 413 for bodies over ``max_body_bytes``; 500 for an error the
    app did not answer; the security headers on every response."""

    def __init__(self, app, *, token: str, max_body_bytes: int) -> None:
        self.app = app
        self.expected = token.encode()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send, dashboard=scope["path"].startswith("/ui"))
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if not _is_open(scope["path"]) and not (  # the scheme's case does not matter (RFC 9110)
                scheme.lower() == b"bearer" and hmac.compare_digest(token, self.expected)):
            await _reply(send, 401, "missing or wrong bearer token: send 'Authorization: Bearer "
                         "<ACTMAX_TOKEN>'", [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body_bytes:
            await _reply(send, 413, self._too_large())
            return
        received, refused, started = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes and not refused:  # chunked bodies declare no length
                refused = True
                await _reply(send, 413, self._too_large())
            return {"type": "http.disconnect"} if refused else message

        async def guarded_send(message):
            nonlocal started
            if not refused:  # the app's answer to the cut-off body is dropped
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception as exc:
            if started or refused:  # an answer is under way: nothing better than to drop the connection
                raise
            log.error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
            await _reply(send, 500, f"internal error ({type(exc).__name__}); the server logged the cause")

    def _too_large(self) -> str:
        return (f"request body over {self.max_body_bytes} bytes (ACTMAX_MAX_BODY_BYTES); session "
                "configs are small: check what is being sent")


def _with_security_headers(send, *, dashboard: bool):
    added = [*SECURITY_HEADERS, DASHBOARD_POLICY] if dashboard else SECURITY_HEADERS

    async def secured(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return secured


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _reply(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
