"""The dashboard application: `create_dashboard(processor_or_db, auth=..., read_only=...)`.

A Starlette app meant to be mounted (`app.mount("/jobs", create_dashboard(...))`) or served on
its own (`job-processor dashboard`). Every read and action goes through `job_processor.admin`
(index-backed listings, audit-logged compare-and-set actions); this package only renders.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from markupsafe import Markup
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import health
from ..admin import Admin
from ..errors import EventNotFoundError, JobNotFoundError, JobProcessorError
from ..masking import DEFAULT_SENSITIVE_FIELDS, Masker, mask_job
from ..models import Job, to_jsonable
from ..processor import JobProcessor
from . import csrf
from .auth import UNSET, Authenticator, DashboardConfigError, Denied, is_loopback
from .auth import refuse_public_host as _refuse
from .render import FLASH_COOKIE, make_env, read_flash, root_of, set_flash, url

Handler = Callable[[Request], Awaitable[Response]]
PageHandler = Callable[["Dashboard", Request], Awaitable[Response]]

#: The navigation: (path under the mount root, label). Pages added with `extra_nav` come after
#: Events, before Audit.
NAV: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/jobs", "Jobs"),
    ("/crons", "Crons"),
    ("/workers", "Workers"),
    ("/names", "Names"),
    ("/events", "Events"),
)
AUDIT_NAV = ("/audit", "Audit")
#: Paths served without authentication (probes and the static files).
OPEN_PATHS = ("/healthz", "/readyz")
OPEN_PREFIXES = ("/static/",)
BASIC_CHALLENGE = 'Basic realm="job-processor", charset="UTF-8"'


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class Dashboard:
    """The state behind one dashboard app (see `create_dashboard`)."""

    def __init__(
        self,
        target: Any,
        *,
        auth: Any,
        read_only: bool,
        sensitive_fields: Iterable[str],
        collection_prefix: str | None,
        refresh_seconds: float,
        metrics: Any,
        title: str,
        extra_nav: Sequence[tuple[str, str]],
    ) -> None:
        self.processor: JobProcessor | None = target if isinstance(target, JobProcessor) else None
        if self.processor is not None:
            self.db = self.processor.storage.db
            self.prefix = self.processor.storage.prefix
        else:
            from ..storage import check_database

            check_database(target)
            self.db = target
            self.prefix = collection_prefix or "job_processor_"
        self.auth = Authenticator(auth)
        self.read_only = bool(read_only)
        self.masker = Masker(sensitive_fields)
        self.refresh_seconds = float(refresh_seconds)
        self.title = title
        self.nav = (*NAV, *extra_nav, AUDIT_NAV)
        self.env = make_env(self.masker)
        self._metrics = metrics
        self._admin: Admin | None = None
        self._lock: asyncio.Lock | None = None

    # ---- lazily opened (needs the serving event loop) ----------------------------------------

    async def admin(self) -> Admin:
        if self._admin is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._admin is None:
                    if self.processor is not None:
                        p = self.processor
                        self._admin = Admin(
                            self.db,
                            self.prefix,
                            p.clock,
                            storage=p.storage,
                            worker_timeout=p.settings.worker_timeout,
                            logger=p.log,
                        )
                    else:
                        self._admin = await Admin.open(self.db, self.prefix)
        return self._admin

    async def metrics(self) -> Any:
        if self._metrics is None:
            from .. import metrics

            if self.processor is not None:
                self._metrics = metrics.enable(self.processor)
            else:
                self._metrics = await metrics.for_database(self.db, self.prefix)
        return self._metrics

    def now(self) -> dt.datetime:
        if self.processor is not None:
            return self.processor.clock.now()
        return dt.datetime.now(dt.UTC)

    # ---- responses ---------------------------------------------------------------------------

    def actor(self, request: Request) -> str:
        client = request.client.host if request.client else "local"
        return f"{request.state.user} (dashboard, {client})"

    def page(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        root = root_of(request)
        token, new = csrf.token_for(request)
        flash = read_flash(request)
        path = _route_path(request.scope)
        here = path + (f"?{request.url.query}" if request.url.query else "")
        ctx = {
            "request": request,
            "root": root,
            "url": lambda p, **kw: url(root, p, **kw),
            "nav": self.nav,
            "current": "/" + path.strip("/").split("/")[0] if path != "/" else "/",
            "here": here,
            "read_only": self.read_only,
            "csrf_field": Markup('<input type="hidden" name="{}" value="{}">').format(
                csrf.FIELD, token
            ),
            "csrf_token": token,
            "flash": flash,
            "user": getattr(request.state, "user", None),
            "title": self.title,
            "refresh_seconds": self.refresh_seconds,
            "now": self.now(),
        } | context
        body = self.env.get_template(template).render(ctx)
        response = HTMLResponse(body, status_code=status_code)
        if new:
            csrf.set_cookie(response, token, root or "/")
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=root or "/")
        return response

    def error_page(
        self, request: Request, status_code: int, title: str, message: str
    ) -> HTMLResponse:
        return self.page(
            request, "error.html", status_code, error_title=title, message=message, live=False
        )

    def redirect(self, request: Request, target: str, flash: dict[str, Any] | None) -> Response:
        root = root_of(request)
        response = RedirectResponse(root + safe_next(target), status_code=303)
        if flash is not None:
            set_flash(response, flash, root or "/")
        return response

    def mask_job(self, job: Job[Any]) -> dict[str, Any]:
        """A job as JSON with sensitive fields and the secrets they hold masked everywhere."""
        return mask_job(self.masker, job)


def safe_next(target: str | None) -> str:
    """A path inside the dashboard ("/jobs?status=errored"); anything else becomes "/"."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Guard:
    """ASGI middleware: authentication, CSRF on POST, read-only refusal, error pages."""

    def __init__(self, app: ASGIApp, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        d = self.dashboard
        scope.setdefault("state", {})
        request = Request(scope, receive)
        verdict = await d.auth.check(request)
        if isinstance(verdict, Denied):
            scope["state"]["user"] = None
            response = d.error_page(request, verdict.status, "Not signed in", verdict.message)
            if verdict.status == 403:
                response = d.error_page(request, 403, "Access denied", verdict.message)
            if verdict.status == 401:
                response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
            await response(scope, receive, send)
            return
        scope["state"]["user"] = verdict
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if d.read_only:
                response = d.error_page(
                    request, 403, "Read-only", "This dashboard is read-only: actions are refused."
                )
                await response(scope, receive, send)
                return
            body = await request.body()
            receive = _replaying(body, receive)  # what runs after us may read the body again
            form = await request.form()
            scope["state"]["form"] = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            scope["state"]["form_lists"] = {
                k: [v for v in form.getlist(k) if isinstance(v, str)] for k in form
            }
            why = csrf.verify(request, str(form.get(csrf.FIELD) or "") or None)
            if why is not None:
                response = d.error_page(request, 403, "Request refused", f"Refused: {why}.")
                await response(scope, receive, send)
                return
        try:
            await self.app(scope, receive, send)
        except PyMongoError as exc:
            response = d.error_page(
                request,
                503,
                "MongoDB unavailable",
                f"The database did not answer: {str(exc).split(',')[0]}",
            )
            await response(scope, receive, send)


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


def _with_errors(dashboard: Dashboard, handler: Handler) -> Handler:
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


def create_dashboard(
    processor_or_db: Any,
    *,
    auth: Any = UNSET,
    read_only: bool = False,
    sensitive_fields: Iterable[str] | None = None,
    collection_prefix: str | None = None,
    host: str | None = None,
    refresh_seconds: float = 3.0,
    metrics: Any = None,
    title: str = "job-processor",
    extra_routes: Sequence[BaseRoute] = (),
    extra_nav: Sequence[tuple[str, str]] = (),
) -> Starlette:
    """The dashboard as a Starlette app, to mount (`app.mount("/jobs", ...)`) or serve.

    processor_or_db: a JobProcessor (its database, prefix, clock and worker timeout are used)
        or an async database (pymongo AsyncDatabase / motor) with `collection_prefix`.
    auth: ("user", "password") for HTTP basic auth; a callable `request -> bool | str` (sync or
        async; a string is the user name recorded in the audit log); None for no
        authentication. Not given: no authentication, and only requests arriving over a
        loopback address are answered (403 otherwise).
    host: where it will be served, if known: a non-loopback host with `auth` not given raises
        DashboardConfigError at once (the CLI passes --host).
    read_only: hide every action and refuse every POST (403).
    sensitive_fields: field names whose values are never shown (default
        DEFAULT_SENSITIVE_FIELDS); matched case-insensitively, as the whole name or its
        `_`-separated first or last part.
    refresh_seconds: how often pages refresh their live parts (0: never).
    metrics: a job_processor.metrics.Metrics to serve at /metrics (default: metrics.enable(
        processor) or metrics.for_database(db), created at the first scrape).
    extra_routes, extra_nav: more pages (e.g. ("/reports", "Reports")), rendered with the
        dashboard's layout by `request.app.state.dashboard.page(request, template, ...)`.
    """
    if auth is UNSET and host is not None and not is_loopback(host):
        raise _refuse(host)
    if refresh_seconds < 0:
        raise DashboardConfigError(f"refresh_seconds must be >= 0, got {refresh_seconds!r}")
    fields = DEFAULT_SENSITIVE_FIELDS if sensitive_fields is None else tuple(sensitive_fields)
    if isinstance(sensitive_fields, str):
        raise DashboardConfigError(
            f"sensitive_fields must be a list of names, e.g. [{sensitive_fields!r}]"
        )
    d = Dashboard(
        processor_or_db,
        auth=auth,
        read_only=read_only,
        sensitive_fields=fields,
        collection_prefix=collection_prefix,
        refresh_seconds=refresh_seconds,
        metrics=metrics,
        title=title,
        extra_nav=extra_nav,
    )
    from . import actions, views
    from . import events as event_pages

    def r(path: str, handler: PageHandler, **kw: Any) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handler(d, request)

        return Route(path, _with_errors(d, endpoint), **kw)

    routes: list[BaseRoute] = [
        r("/", views.overview),
        r("/jobs", views.jobs),
        r("/jobs/new", views.new_job_form),
        r("/jobs/new", actions.new_job, methods=["POST"]),
        r("/jobs/retry-all", actions.retry_all, methods=["POST"]),
        r("/jobs/purge", actions.purge, methods=["POST"]),
        r("/jobs/selected", actions.selected, methods=["POST"]),
        r("/jobs/{job_id}", views.job),
        r("/jobs/{job_id}/{verb}", actions.job_action, methods=["POST"]),
        r("/crons", views.crons),
        r("/crons/{name:path}/trigger", actions.trigger_cron, methods=["POST"]),
        r("/workers", views.workers),
        r("/names", views.names),
        r("/names/{name:path}/{verb}", actions.pause_resume, methods=["POST"]),
        r("/events", event_pages.events),
        r("/events/{event_id}", event_pages.event),
        r("/events/{event_id}/replay", event_pages.replay, methods=["POST"]),
        r("/audit", views.audit),
        r("/api/overview", views.api_overview),
        r("/api/jobs", views.api_jobs),
        r("/api/jobs/{job_id}", views.api_job),
        r("/metrics", views.metrics),
        r("/healthz", views.healthz),
        r("/readyz", views.readyz),
        Mount("/static", StaticFiles(packages=[("job_processor.dashboard", "static")])),
        *extra_routes,
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        if "user" not in request.scope.get("state", {}):
            return JSONResponse({"error": "not found"}, status_code=404)
        return d.error_page(request, 404, "Not found", f"No page at {request.url.path}.")

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, dashboard=d)],
        exception_handlers={404: not_found},
    )
    app.state.dashboard = d
    return app


def json_response(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable(data), status_code=status_code)


async def health_response(dashboard: Dashboard, ready: bool) -> Response:
    if ready:
        result = await health.ready(dashboard.db)
    else:
        result = await health.check(dashboard.db, collection_prefix=dashboard.prefix, worker=False)
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if result.ok else 503)


__all__ = ["Dashboard", "DashboardConfigError", "create_dashboard"]
