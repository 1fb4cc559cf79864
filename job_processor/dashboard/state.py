"""The state behind one dashboard app (`Dashboard`): its admin, masking, templates and the
responses every page shares."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import Scope

from ..core.log import make_log
from ..core.masking import Masker, mask_job
from ..core.models import Job, to_jsonable
from ..engine.runtime import Runtime
from ..ops import health
from ..ops.admin import Admin
from ..storage.connect import check_database
from . import csrf
from .auth import Authenticator
from .hosts import AllowedHosts
from .render import FLASH_COOKIE, bidi_shown, make_env, read_flash, root_of, set_flash, url

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


def route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def is_api(request: Request) -> bool:
    """A request for the JSON API (`/api/...`, under the dashboard's root path)."""
    path = request.url.path
    root = root_of(request)
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path == "/api" or path.startswith("/api/")


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
        allowed_hosts: Sequence[str] | None = None,
    ) -> None:
        self.processor: Runtime | None = target if isinstance(target, Runtime) else None
        if self.processor is not None:
            self.db = self.processor.storage.db
            self.prefix = self.processor.storage.prefix
        else:
            check_database(target)
            self.db = target
            self.prefix = collection_prefix or "job_processor_"
        # the processor's logger (the one its app configured), else job_processor's default
        self.log = make_log(self.processor.log if self.processor is not None else None)
        self.auth = Authenticator(auth)
        # without credentials (auth not given, or None) a page of another site whose name
        # resolves to this address (DNS rebinding) must not reach it: loopback names only
        self.allowed_hosts = AllowedHosts(
            allowed_hosts, loopback_only=self.auth.mode in ("loopback", "none")
        )
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
            from ..ops import metrics

            if self.processor is not None:
                self._metrics = metrics.enable(self.processor)
            else:
                self._metrics = await metrics.for_database(self.db, self.prefix)
            if self._metrics.database is not None:  # its limit keys masked as the overview's
                self._metrics.database.sensitive = self.masker.sensitive
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
        # an action's message is for a signed-in page: the 401 a browser gets before it sends
        # its credentials to a path it has not logged in at yet must not take it (and drop its
        # cookie), or the page shown after the login says nothing of the action; nor may a
        # live refresh (another tab's), which never shows it
        user = getattr(request.state, "user", None)
        refresh = request.headers.get("x-requested-with") == "fetch"
        flash = read_flash(request) if user is not None and not refresh else None
        path = route_path(request.scope)
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
            "user": user,
            "title": self.title,
            "refresh_seconds": self.refresh_seconds,
            "now": self.now(),
        } | context
        body = bidi_shown(self.env.get_template(template).render(ctx))
        response = HTMLResponse(body, status_code=status_code)
        if new:
            csrf.set_cookie(response, token, root or "/", request.url.scheme == "https")
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=root or "/")
        return response

    def error_page(self, request: Request, status_code: int, title: str, message: str) -> Response:
        """An error page, or under /api/ the JSON `{"error": message}` (what a script reads)."""
        if is_api(request):
            return JSONResponse({"error": message}, status_code=status_code)
        return self.page(
            request, "error.html", status_code, error_title=title, message=message, live=False
        )

    def redirect(self, request: Request, target: str, flash: dict[str, Any] | None) -> Response:
        root = root_of(request)
        response = RedirectResponse(root + safe_next(target), status_code=303)
        if flash is not None:
            set_flash(response, flash, root or "/", request.url.scheme == "https")
        return response

    def mask_job(self, job: Job[Any], carried: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A job as JSON with sensitive fields and the secrets they hold masked everywhere
        (with those of the event a delivery job carries: `Admin.carried`)."""
        extra = (carried[job.id],) if carried and job.id in carried else ()
        return mask_job(self.masker, job, *extra)


def safe_next(target: str | None) -> str:
    """A path inside the dashboard ("/jobs?status=errored"); anything else becomes "/".

    Control characters and spaces are refused too: browsers drop a tab or a newline from a
    URL, so "/<TAB>/evil.example" in a link is "//evil.example", another site."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(c <= " " or c == "\x7f" for c in target)
    ):
        return "/"
    return target


def json_response(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable(data), status_code=status_code)


async def health_response(dashboard: Dashboard, ready: bool) -> Response:
    if ready:
        result = await health.ready(dashboard.db)
    else:
        result = await health.check(dashboard.db, collection_prefix=dashboard.prefix, worker=False)
    return JSONResponse(result.model_dump(mode="json"), status_code=200 if result.ok else 503)
