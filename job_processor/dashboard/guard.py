"""The ASGI middleware in front of every page: allowed hosts, authentication, CSRF on POST,
read-only refusal, error pages (a 500 for an unexpected error, logged once)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from pymongo.errors import PyMongoError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import EventNotFoundError, JobNotFoundError, JobProcessorError
from ..core.log import describe
from ..storage.connect import said_plainly
from . import csrf
from .auth import Denied
from .state import Dashboard, route_path

Handler = Callable[[Request], Awaitable[Response]]

#: Paths served without authentication (probes and the static files).
OPEN_PATHS = ("/healthz", "/readyz")
OPEN_PREFIXES = ("/static/",)
BASIC_CHALLENGE = 'Basic realm="job-processor", charset="UTF-8"'
DENIED_TITLES = {401: "Not signed in", 403: "Access denied", 429: "Too many attempts"}
#: The largest form body read, and form field (a new job's payload: up to 15 MiB, and some).
MAX_FORM_BYTES = 17 * 2**20
#: Sent with every response (unless the route set its own): no page of another origin may
#: frame the dashboard (clickjacking: a same-site page, another port of localhost or a
#: sibling subdomain, gets the SameSite cookies and could lure clicks on Kill or Delete),
#: and no browser reads a response as another type than it says.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-content-type-options", b"nosniff"),
)


def _unavailable(d: Dashboard, request: Request, exc: PyMongoError) -> Response:
    """The 503 page (JSON under /api/) of a request MongoDB did not answer."""
    said = f"The database did not answer: {said_plainly(str(exc))}"
    return d.error_page(request, 503, "MongoDB unavailable", said)


class Guard:
    """ASGI middleware: allowed hosts, authentication, CSRF on POST, read-only refusal, error
    pages."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # an extra route's: the same host and auth checks
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: list[bool] = []  # the response's start sent (then no other can be)
        send = _with_security_headers(send, started)
        try:
            await self._http(scope, receive, send)
        except Exception as exc:  # a bug, a damaged document, an auth callable that raised
            await self._failed(scope, receive, send, exc, bool(started))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        d = self.dashboard
        path = route_path(scope)
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            if await _refuse_host(d, scope, receive, send):
                return
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        request = Request(scope, receive)
        try:
            verdict = await d.auth.check(request)
        except PyMongoError as exc:  # an auth callable that reads users from MongoDB
            scope["state"]["user"] = None
            await _unavailable(d, request, exc)(scope, receive, send)
            return
        if isinstance(verdict, Denied):
            scope["state"]["user"] = None
            title = DENIED_TITLES.get(verdict.status, "Not signed in")
            response = d.error_page(request, verdict.status, title, verdict.message)
            if verdict.status == 401:
                response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
            if verdict.retry_after:
                response.headers["Retry-After"] = str(verdict.retry_after)
            await response(scope, receive, send)
            return
        scope["state"]["user"] = verdict
        if await _refuse_host(d, scope, receive, send):
            return
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            receive, refused = await self._checked_form(request, scope, receive)
            if refused is not None:
                await refused(scope, receive, send)
                return
        try:
            await self.app(scope, receive, send)
        except PyMongoError as exc:
            await _unavailable(d, request, exc)(scope, receive, send)

    async def _failed(
        self, scope: Scope, receive: Receive, send: Send, exc: Exception, started: bool
    ) -> None:
        """An unexpected error: logged once (`dashboard_request_failed`, with its traceback),
        answered with a 500 that says no more than its type (JSON under /api/, a page
        otherwise, with the security headers as every response)."""
        d = self.dashboard
        path = str(scope.get("path", ""))
        d.log.exception(
            "dashboard_request_failed", method=scope.get("method"), path=path, error=describe(exc)
        )
        if started:  # part of the answer is sent already: the connection ends short
            return
        request = Request(scope, receive)
        message = (
            f"The dashboard failed to answer this request ({type(exc).__name__}). The error is "
            "in the server's log (dashboard_request_failed)."
        )
        try:
            response = d.error_page(request, 500, "Internal error", message)
        except Exception:  # the page itself fails (the layout is what broke; /api/'s cannot)
            response = PlainTextResponse(message, status_code=500)
        await response(scope, receive, send)

    async def _checked_form(
        self, request: Request, scope: Scope, receive: Receive
    ) -> tuple[Receive, Response | None]:
        """A POST (or other writing method): read-only refusal, the body read up to
        MAX_FORM_BYTES (replayed for what runs after), the form parsed into the scope's state,
        CSRF and Origin checked. Returns the receive to use, and the refusal if any."""
        d = self.dashboard
        if d.read_only:
            return receive, d.error_page(
                request, 403, "Read-only", "This dashboard is read-only: actions are refused."
            )
        body = await _bounded_body(request)
        if body is None:
            limit = f"A form of the dashboard is at most {MAX_FORM_BYTES // 2**20} MiB."
            return receive, d.error_page(request, 413, "Request too large", limit)
        receive = _replaying(body, receive)  # what runs after us may read the body again
        try:  # a field as large as the body (Starlette's default: 1 MiB, "Malformed form")
            form = await request.form(max_part_size=MAX_FORM_BYTES)
        except Exception as exc:  # a multipart body with no boundary, a part too large
            why = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            said = f"The form could not be read: {why}."
            return receive, d.error_page(request, 400, "Malformed form", said)
        scope["state"]["form"] = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        scope["state"]["form_lists"] = {
            k: [v for v in form.getlist(k) if isinstance(v, str)] for k in form
        }
        await form.close()  # its uploaded files (an extra route reads the body again)
        origin = request.headers.get("origin")
        # an explicit allowed_hosts list judges a public Origin (behind a proxy that sends its
        # own Host); otherwise the Origin must be the Host, port included
        listed = d.allowed_hosts.names_public_origin(origin, request.headers.get("host"))
        why = csrf.verify(request, str(form.get(csrf.FIELD) or "") or None, listed)
        if why is None and not d.allowed_hosts.origin_allowed(origin):
            why = f"the request came from another site ({origin})"
        if why is not None:
            return receive, d.error_page(request, 403, "Request refused", f"Refused: {why}.")
        return receive, None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket of an `extra_routes` route: closed before it is accepted (the server
        answers 403) unless its host is allowed and its auth passes, as for a page. Browsers
        send no Origin check of their own for WebSockets, so the Origin must be allowed too."""
        d = self.dashboard
        connection = HTTPConnection(scope)
        scope.setdefault("state", {})
        try:
            verdict = await d.auth.check(connection)
        except Exception as exc:  # refused unaccepted, as a page's 503 or 500 says it
            outage = isinstance(exc, PyMongoError)
            if not outage:  # logged once, as a page's
                path = str(scope.get("path", ""))
                d.log.exception(
                    "dashboard_request_failed", method="WEBSOCKET", path=path, error=describe(exc)
                )
            await receive()  # websocket.connect
            # 1013 "try again later": MongoDB did not answer; 1011: an internal error
            await send({"type": "websocket.close", "code": 1013 if outage else 1011})
            return
        host = connection.headers.get("host")
        origin = connection.headers.get("origin")
        if origin is None:  # not a browser: the auth decides
            origin_ok = True
        elif d.allowed_hosts.any:  # any host: then the page's own origin only (same host:port)
            origin_ok = host is not None and urlsplit(origin).netloc.lower() == host.lower()
        else:
            origin_ok = d.allowed_hosts.origin_allowed(origin)
        if isinstance(verdict, Denied) or not d.allowed_hosts.allows(host) or not origin_ok:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        scope["state"]["user"] = verdict
        await self.app(scope, receive, send)


async def _refuse_host(dashboard: Dashboard, scope: Scope, receive: Receive, send: Send) -> bool:
    """A request naming a host this dashboard does not answer to gets a 400 (DNS rebinding: a
    page of another site whose name resolves to our address)."""
    host = Headers(scope=scope).get("host")
    if dashboard.allowed_hosts.allows(host):
        return False
    refused = PlainTextResponse(
        f"Invalid Host header {host!r}: this dashboard answers to "
        f"{dashboard.allowed_hosts.describe()} (create_dashboard(allowed_hosts=[...]), "
        "job-processor dashboard --allowed-hosts ...)\n",
        status_code=400,
    )
    await refused(scope, receive, send)
    return True


def _with_security_headers(send: Send, started: list[bool]) -> Send:
    """`send` with SECURITY_HEADERS added to the response's start (`started` gets an item
    once it is sent)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.append(True)
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read once more, then defers to the original
    (for the disconnect): an app or middleware downstream (Sentry's Starlette integration reads
    the body of every request) would otherwise wait for a body that never comes."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def with_errors(dashboard: Dashboard, handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except (JobNotFoundError, EventNotFoundError) as exc:
            return dashboard.error_page(request, 404, "Not found", str(exc))
        except HTTPException as exc:
            return dashboard.error_page(request, exc.status_code, "Error", str(exc.detail))
        except JobProcessorError as exc:
            return dashboard.error_page(request, 400, "Invalid request", str(exc))

    return wrapped


async def _bounded_body(request: Request) -> bytes | None:
    """The request's body, or None past MAX_FORM_BYTES (read no further: a 150 MB POST would
    be held in memory whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # as Request.body() keeps it: request.form() reads it from there
    return body
