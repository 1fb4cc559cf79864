"""The dashboard's actions (POST only; CSRF and read-only are checked by the Guard before).

Each calls one `job_processor.admin` verb with `actor=` the signed-in user, then redirects
(303) to the page it came from with a flash message saying what changed and what was skipped
and why. Destructive actions (kill, delete, purge, bulk retries) first answer with a
confirmation page; its form posts the same fields again with `confirm=yes`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..core.errors import InvalidPayloadError, JobNotFoundError, JobProcessorError
from ..core.status import TERMINAL
from ..ops.admin import ActionResult
from .render import flash_from_result
from .state import Dashboard, safe_next
from .views import render_new_job

JOB_VERBS = ("retry", "kill", "run-now", "delete", "duplicate")
BULK_VERBS = ("retry", "kill", "run-now", "delete")
CONFIRM = {"kill", "delete"}


def _form(request: Request) -> dict[str, str]:
    form: dict[str, str] = getattr(request.state, "form", {})
    return form


def _confirmed(request: Request) -> bool:
    return _form(request).get("confirm") == "yes"


def confirm_page(
    d: Dashboard,
    request: Request,
    *,
    title: str,
    lines: list[str],
    button: str,
    danger: bool = True,
    pinned: dict[str, str] | None = None,
) -> Response:
    """`pinned`: fields the confirmation adds, describing what the user saw (they replace
    any of the same name the request sent)."""
    pins = pinned or {}
    fields = [
        (k, v)
        for k, values in getattr(request.state, "form_lists", {}).items()
        if k not in ("csrf_token", "confirm", *pins)
        for v in values
    ] + list(pins.items())
    return d.page(
        request,
        "confirm.html",
        confirm_title=title,
        lines=lines,
        button=button,
        danger=danger,
        action=request.url.path,
        fields=fields,
        cancel=safe_next(_form(request).get("next")),
        live=False,
    )


async def _run(
    d: Dashboard,
    request: Request,
    what: str,
    call: Callable[[], Awaitable[ActionResult]],
    back: str,
) -> tuple[ActionResult | JobProcessorError, Response]:
    """The action's result, or the error it was refused with, and the redirect saying it."""
    try:
        result = await call()
    except JobProcessorError as exc:
        flash = {"kind": "error", "title": f"{what} failed", "lines": [d.masker.text(str(exc))]}
        return exc, d.redirect(request, back, flash)
    return result, d.redirect(request, back, flash_from_result(result, d.masker))


async def job_action(d: Dashboard, request: Request) -> Response:
    verb = request.path_params["verb"]
    job_id = request.path_params["job_id"]
    if verb not in JOB_VERBS:
        return d.error_page(request, 404, "Not found", f"No action {verb!r} on jobs.")
    admin = await d.admin()
    actor = d.actor(request)
    back = _form(request).get("next") or f"/jobs/{job_id}"
    if verb in CONFIRM and not _confirmed(request):
        job = await admin.get_job(job_id)
        running = ""
        if verb == "kill" and job.status.value == "running":
            running = " It is running: its worker aborts the handler."
        elif verb == "kill" and job.status in TERMINAL:
            running = " It has already ended: a kill changes nothing."

        return confirm_page(
            d,
            request,
            title=f"{verb.capitalize()} job {job.id}?",
            lines=[f"{job.name} · {job.status.value}.{running}"],
            button=f"{verb.capitalize()} job",
            pinned={"seen_attempt": str(job.attempt)} if verb == "kill" else None,
        )
    seen = _form(request).get("seen_attempt")  # the run the confirmation showed
    calls: dict[str, Callable[[], Awaitable[ActionResult]]] = {
        "retry": lambda: admin.retry([job_id], actor=actor),
        "kill": lambda: admin.kill([job_id], actor=actor, seen_attempt=_attempt(seen)),
        "run-now": lambda: admin.run_now([job_id], actor=actor),
        "delete": lambda: admin.delete([job_id], actor=actor),
        "duplicate": lambda: admin.duplicate(job_id, actor=actor),
    }
    result, response = await _run(d, request, verb.capitalize(), calls[verb], back)
    root = str(request.scope.get("root_path", "")).rstrip("/")
    if verb == "duplicate" and isinstance(result, ActionResult) and result.jobs:
        response.headers["location"] = f"{root}/jobs/{result.jobs[0].id}"
    # its page is gone: deleted now, or before this click (another tab, a second submit of
    # the confirmation; a duplicate says so by raising); a refusal stays on it
    gone = isinstance(result, JobNotFoundError) or (
        isinstance(result, ActionResult)
        and ((verb == "delete" and bool(result.changed)) or "not found" in result.skipped.values())
    )
    if gone and back.startswith(f"/jobs/{job_id}"):
        response.headers["location"] = f"{root}/jobs"
    return response


def _attempt(seen: str | None) -> int | None:
    """The attempt a kill's confirmation pinned (None: a form of its own, or not a number)."""
    return (
        int(seen)
        if seen is not None and seen.isascii() and seen.isdigit() and len(seen) < 10
        else None
    )


async def selected(d: Dashboard, request: Request) -> Response:
    form = _form(request)
    verb = form.get("verb", "")
    ids = [i for i in getattr(request.state, "form_lists", {}).get("ids", []) if i]
    back = form.get("next") or "/jobs"
    if verb not in BULK_VERBS:
        return d.error_page(request, 400, "Invalid request", f"No bulk action {verb!r}.")
    if not ids:
        flash = {"kind": "warn", "title": "Select at least one job first", "lines": []}
        return d.redirect(request, back, flash)
    if verb in CONFIRM and not _confirmed(request):
        return confirm_page(
            d,
            request,
            title=f"{verb.capitalize()} {len(ids)} selected job(s)?",
            lines=ids[:20] + ([f"… and {len(ids) - 20} more"] if len(ids) > 20 else []),
            button=f"{verb.capitalize()} {len(ids)} job(s)",
        )
    admin = await d.admin()
    method = {"retry": admin.retry, "kill": admin.kill, "run-now": admin.run_now}.get(
        verb, admin.delete
    )
    _, response = await _run(
        d, request, verb.capitalize(), lambda: method(ids, actor=d.actor(request)), back
    )
    return response


def _filter_text(form: dict[str, str]) -> str:
    keys = ("id", "name", "status", "tag", "key", "after", "before")
    parts = [f"{k}={form[k]}" for k in keys if form.get(k)]
    return ", ".join(parts) or "no filter"


async def retry_all(d: Dashboard, request: Request) -> Response:
    form = _form(request)
    status = form.get("status") or "errored"
    back = form.get("next") or "/jobs"
    if not _confirmed(request):
        return confirm_page(
            d,
            request,
            title=f"Retry every {status} job matching this filter?",
            lines=[
                _filter_text(form | {"status": status}),
                "Up to 10,000 jobs, newest first; each goes back to pending now.",
            ],
            button=f"Retry all {status}",
            danger=False,
        )
    admin = await d.admin()

    matching: dict[str, Any] = {
        "name": form.get("name") or None,
        "status": status,
        "tag": form.get("tag") or None,
        "key": form.get("key") or None,
        "created_after": form.get("after") or None,
        "created_before": form.get("before") or None,
    }

    if form.get("id"):
        # a page filtered by id lists that job, if it matches the other filters too: only
        # what it lists is retried, nothing when it lists nothing (any more)
        try:
            listed = await admin.list_jobs(id=form["id"], limit=1, **matching)
        except JobProcessorError as exc:
            lines = [d.masker.text(str(exc))]
            return d.redirect(
                request, back, {"kind": "error", "title": "Retry all failed", "lines": lines}
            )
        if not listed.jobs:
            flash = {
                "kind": "warn",
                "title": "Nothing retried",
                "lines": [f"job {form['id']} is not {status} (or no longer matches the filter)"],
            }
            return d.redirect(request, back, flash)
        ids = [j.id for j in listed.jobs]

    def call() -> Awaitable[ActionResult]:
        if form.get("id"):
            return admin.retry(ids, actor=d.actor(request))
        return admin.retry_many(**matching, actor=d.actor(request))

    _, response = await _run(d, request, "Retry all", call, back)
    return response


async def purge(d: Dashboard, request: Request) -> Response:
    form = _form(request)
    back = form.get("next") or "/jobs"
    status = form.get("status", "")
    older = form.get("older_than", "")
    if not _confirmed(request):
        what = f"{status or '?'} jobs" + (f" of {form['name']}" if form.get("name") else "")
        return confirm_page(
            d,
            request,
            title=f"Delete {what} that ended more than {older or '?'} ago?",
            lines=["Deleted jobs cannot be brought back."],
            button="Delete for good",
        )
    admin = await d.admin()
    _, response = await _run(
        d,
        request,
        "Purge",
        lambda: admin.purge(
            status=status, older_than=older, name=form.get("name") or None, actor=d.actor(request)
        ),
        back,
    )
    return response


async def new_job(d: Dashboard, request: Request) -> Response:
    form = _form(request)
    admin = await d.admin()
    try:
        priority = int(form.get("priority") or 0)
    except ValueError:
        return await render_new_job(d, request, form, "priority must be a whole number")
    try:
        result = await admin.new_job(
            form.get("name", ""),
            form.get("payload", ""),
            scheduled_for=form.get("scheduled_for") or None,
            priority=priority,
            key=form.get("key") or None,
            actor=d.actor(request),
        )
    except (InvalidPayloadError, JobProcessorError) as exc:
        return await render_new_job(d, request, form, d.masker.text(str(exc)))
    flash = flash_from_result(result, d.masker)
    target = f"/jobs/{result.jobs[0].id}" if result.jobs else "/jobs"
    return d.redirect(request, target, flash)


async def trigger_cron(d: Dashboard, request: Request) -> Response:
    name = request.path_params["name"]
    admin = await d.admin()
    back = _form(request).get("next") or "/crons"
    _, response = await _run(
        d, request, "Trigger", lambda: admin.trigger_cron(name, actor=d.actor(request)), back
    )
    return response


async def pause_resume(d: Dashboard, request: Request) -> Response:
    name = request.path_params["name"]
    verb = request.path_params["verb"]
    if verb not in ("pause", "resume"):
        return d.error_page(request, 404, "Not found", f"No action {verb!r} on names.")
    admin = await d.admin()
    back = _form(request).get("next") or "/names"
    method = admin.pause if verb == "pause" else admin.resume
    _, response = await _run(
        d, request, verb.capitalize(), lambda: method(name, actor=d.actor(request)), back
    )
    return response


__all__: list[Any] = []
