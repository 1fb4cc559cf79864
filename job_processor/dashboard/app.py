"""The dashboard application: `create_dashboard(processor_or_db, auth=..., read_only=...)`.

A Starlette app meant to be mounted (`app.mount("/jobs", create_dashboard(...))`) or served on
its own (`job-processor dashboard`). Every read and action goes through `job_processor.admin`
(index-backed listings, audit-logged compare-and-set actions); this package only renders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..core.errors import InvalidArgumentError
from ..core.masking import DEFAULT_SENSITIVE_FIELDS, sensitive_list
from . import actions, views
from . import events as event_pages
from .auth import UNSET, DashboardConfigError, is_loopback
from .auth import refuse_public_host as _refuse
from .guard import Guard, with_errors
from .render import root_of
from .state import Dashboard, is_api

Handler = Callable[[Request], Awaitable[Response]]
PageHandler = Callable[[Dashboard, Request], Awaitable[Response]]


async def favicon(request: Request) -> Response:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return RedirectResponse(f"{root}/static/favicon.svg", status_code=301)


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
    allowed_hosts: Sequence[str] | None = None,
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
    allowed_hosts: the host names it answers to (`Host`, and the `Origin` of forms): exact
        names, "*.example.com" or "*". Default: loopback names only ("localhost",
        "*.localhost", "127.0.0.1", "::1") without credentials (`auth` not given, or None),
        any host with them. Other hosts get a 400 (a defence against DNS rebinding).
    extra_routes, extra_nav: more pages (e.g. ("/reports", "Reports")), rendered with the
        dashboard's layout by `request.app.state.dashboard.page(request, template, ...)`.
    """
    if auth is UNSET and host is not None and not is_loopback(host):
        raise _refuse(host)
    if refresh_seconds < 0:
        raise DashboardConfigError(f"refresh_seconds must be >= 0, got {refresh_seconds!r}")
    try:  # a lone text is refused (it was read as its characters: "iban" masked no iban)
        fields = (
            DEFAULT_SENSITIVE_FIELDS
            if sensitive_fields is None
            else sensitive_list(sensitive_fields)
        )
    except InvalidArgumentError as exc:
        raise DashboardConfigError(str(exc)) from None
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
        allowed_hosts=allowed_hosts,
    )

    def r(path: str, handler: PageHandler, **kw: Any) -> Route:
        async def endpoint(request: Request) -> Response:
            return await handler(d, request)

        return Route(path, with_errors(d, endpoint), **kw)

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
        Route("/favicon.ico", favicon),  # asked for by browsers whatever the page says
        Mount("/static", StaticFiles(packages=[("job_processor.dashboard", "static")])),
        *extra_routes,
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        if "user" not in request.scope.get("state", {}):
            return JSONResponse({"error": "not found"}, status_code=404)
        if is_api(request):
            root = root_of(request)
            known = ", ".join(f"{root}/api/{p}" for p in ("overview", "jobs", "jobs/{id}"))
            return JSONResponse(
                {"error": f"no API at {request.url.path}: the API is {known}"}, status_code=404
            )
        return d.error_page(request, 404, "Not found", f"No page at {request.url.path}.")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        headers = getattr(exc, "headers", None)  # Allow: the methods that are
        if is_api(request):  # a script's wrong method: JSON, as every API error
            error = {"error": f"{request.method} is not allowed here"}
            return JSONResponse(error, status_code=405, headers=headers)
        return PlainTextResponse("Method Not Allowed", status_code=405, headers=headers)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, dashboard=d)],
        exception_handlers={404: not_found, 405: not_allowed},
    )
    app.state.dashboard = d
    return app


__all__ = ["Dashboard", "DashboardConfigError", "create_dashboard"]
