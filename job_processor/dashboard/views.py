"""The dashboard's pages (GET): overview, jobs, job, crons, workers, names, audit, JSON, probes."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.clock import check_window
from ..core.errors import InvalidArgumentError, UnknownJobError
from ..core.event_documents import WEBHOOK_JOB, delivery_event_id
from ..core.limits import mask_limit_keys
from ..core.masking import MASK
from ..core.models import Job
from ..core.status import ACTIVE, TERMINAL, JobStatus
from ..ops.admin import JobPage, Overview
from ..ops.admin.inputs import DEFAULT_LIMIT, MAX_LIMIT, parse_time
from .render import STATUS_ORDER, error_line, filter_form, is_job_id
from .state import Dashboard, health_response, json_response

S = JobStatus
#: How many dependencies, and jobs scheduled after it, a job's page lists.
FLOW_SHOWN = 100

FILTERS = ("name", "status", "tag", "key", "after", "before", "id")
PAGE_SIZES = (20, 50, 100, 200)
#: What the jobs list reads from its query string: a parameter not in it is refused (a typo, or
#: the CLI's word for a filter, would otherwise list every job as if it were not there).
LIST_PARAMS = (*FILTERS, "limit", "cursor", "since", "until")
#: The CLI's words for the creation-time filters, read as the same.
_ALIASES = {"since": "after", "until": "before"}
#: The Python API's words for the list's filters.
_SAME_AS = {
    "created_after": "after",
    "created_before": "before",
    "state": "status",
    "job_id": "id",
}


def job_filters(request: Request) -> dict[str, str]:
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in FILTERS}
    for alias, name in _ALIASES.items():  # the CLI's words: --since, --until
        given = q.get(alias, "").strip()
        if given and filters[name]:
            raise InvalidArgumentError(f"give {name} or {alias}, not both (the same filter)")
        filters[name] = filters[name] or given
    filters["status"] = filters["status"].lower()  # as the form's values: "Errored" selects it
    return filters


def check_list_params(
    request: Request,
    params: Sequence[str] = LIST_PARAMS,
    same_as: Mapping[str, str] = _SAME_AS,
    what: str = "the jobs list",
    note: str = " (after and before: creation times, ISO 8601)",
) -> None:
    """InvalidArgumentError naming a query parameter a list does not read, and the one that
    was meant; or one given twice (only one value would be applied, silently)."""
    for given in request.query_params:
        if given in params:
            if len(request.query_params.getlist(given)) > 1:
                raise InvalidArgumentError(
                    f"parameter {given!r} given more than once: {what} reads one value of it"
                )
            continue
        meant = same_as.get(given) or next(
            iter(difflib.get_close_matches(given, params, n=1, cutoff=0.6)), None
        )
        hint = f"did you mean {meant}? " if meant else ""
        reads = f"reads {', '.join(params)}{note}" if params else "reads no parameter"
        raise InvalidArgumentError(f"unknown parameter {given!r}: {hint}{what} {reads}")


async def list_page(d: Dashboard, request: Request, filters: dict[str, str]) -> JobPage:
    check_list_params(request)
    admin = await d.admin()
    try:
        limit = int(request.query_params.get("limit") or DEFAULT_LIMIT)
    except ValueError:
        raise InvalidArgumentError("limit must be a whole number") from None
    after = parse_time(filters["after"] or None, "after")
    before = parse_time(filters["before"] or None, "before")
    given = request.query_params  # the window's bounds named as they were given
    start, end = (
        ("since" if "since" in given else "after"),
        ("until" if "until" in given else "before"),
    )
    check_window(after, before, start, end)
    return await admin.list_jobs(
        name=filters["name"] or None,
        status=filters["status"] or None,
        tag=filters["tag"] or None,
        key=filters["key"] or None,
        created_after=after,
        created_before=before,
        id=filters["id"] or None,
        limit=limit,
        cursor=request.query_params.get("cursor") or None,
    )


async def masked_overview(d: Dashboard, minutes: int) -> Overview:
    """The overview with each limit key filled from a field this dashboard masks masked
    (`create_dashboard(sensitive_fields=...)` may mask more than a JobDef refuses there)."""
    admin = await d.admin()
    ov = await admin.overview(minutes=minutes)
    ov.limits = mask_limit_keys(ov.limits, d.masker.sensitive, MASK)
    return ov


async def overview(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "the overview")  # a parameter is never ignored
    admin = await d.admin()
    ov = await masked_overview(d, 30)
    workers = await admin.list_workers()
    totals = {s: sum(c.get(s, 0) for c in ov.counts.values()) for s in STATUS_ORDER}
    last = ov.throughput[-5:]  # the current minute and the four before it
    per_minute = sum(r.finished + r.errored + r.killed for r in last) / max(1, len(last))
    peak = max((r.finished + r.errored + r.killed for r in ov.throughput), default=0)
    return d.page(
        request,
        "overview.html",
        ov=ov,
        # the built-in webhook-delivery name is listed once it has jobs (as `status` does)
        queues=[(n, c) for n, c in ov.counts.items() if n != WEBHOOK_JOB or any(c.values())],
        workers=workers,
        totals=totals,
        due=sum(q.due for q in ov.queue.values()),
        per_minute=per_minute,
        peak=peak,
        live=True,
    )


async def jobs(d: Dashboard, request: Request) -> Response:
    admin = await d.admin()
    error = None
    page = JobPage(jobs=[])
    try:
        filters = job_filters(request)
        page = await list_page(d, request, filters)
    except (InvalidArgumentError, UnknownJobError) as exc:
        error = str(exc)
        filters = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    definitions = await admin.list_definitions()
    names = sorted({x.name for x in definitions})
    # the names the new-job form accepts (not an event's deliveries, nor crons)
    creatable = {x.name for x in definitions if x.kind == "job" and not x.delivery}
    carried = await admin.carried(page.jobs)
    # what a row's payload and progress message hide: the job's secrets, as on its own page
    # (a checkpoint's session id repeated in a payload field of an ordinary name)
    hidden = {
        j.id: d.masker.secrets(j.payload, j.state, j.result, carried.get(j.id)) for j in page.jobs
    }
    limit = applied_limit(request.query_params.get("limit") or "")
    active = {k: v for k, v in filters.items() if v}
    shown, sizes = filter_form(filters, ("after", "before"), limit, PAGE_SIZES)
    return d.page(
        request,
        "jobs.html",
        status_code=400 if error else 200,
        page=page,
        filters=shown,
        exact=filters,  # the times the listing applies (the form shows them to the second)
        creatable=creatable,
        active=active,
        params=active | ({"limit": limit} if limit else {}),
        errors={j.id: last_error_line(d, j, carried) for j in page.jobs if j.error},
        hidden=hidden,
        names=names,
        error=error,
        cursor=request.query_params.get("cursor") or "",
        limit=limit,
        page_sizes=sizes,
        statuses=[s.value for s in S],
        ACTIVE={s.value for s in ACTIVE},
        TERMINAL={s.value for s in TERMINAL},
        live=error is None,  # a refused filter: nothing to refresh (and not "Offline")
    )


def applied_limit(text: str) -> str:
    """The page size the jobs list applies for `?limit=` as given: over MAX_LIMIT, MAX_LIMIT
    (Admin.list_jobs' cap), which the per-page box and the page's links then show."""
    if text.isascii() and text.isdigit() and int(text) > MAX_LIMIT:
        return str(MAX_LIMIT)
    return text


def last_error_line(d: Dashboard, job: Any, carried: dict[str, Any]) -> str:
    secrets = d.masker.secrets(job.payload, job.state, job.result, carried.get(job.id))
    return error_line(d.masker.text(job.error, secrets))


async def job(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "a job's page")
    admin = await d.admin()
    found = await admin.get_job(request.path_params["job_id"])
    carried = (await admin.carried([found])).get(found.id)  # a delivery's event payload
    secrets = sorted(d.masker.secrets(found.payload, found.state, found.result, carried))
    # a flow's page shows at most FLOW_SHOWN jobs on each side (a fan-in after 1,000 jobs made
    # a page of 190 KB from 1,000 reads; a fan-out of 2,000 said "100" jobs after it)
    after = found.after[:FLOW_SHOWN]
    if found.failed_dependency and found.failed_dependency not in after:
        after = [*after, found.failed_dependency]
    # a dependency another program wrote that is no job id is listed as such, not looked up
    # (its lookup refused the whole page)
    listed = [a for a in after if is_job_id(a)]
    dependencies = await admin.get_jobs(listed) if listed else []
    dependents = await admin.dependents(found.id, FLOW_SHOWN) if found.has_dependents else []
    dependents_count = len(dependents)
    if dependents_count == FLOW_SHOWN:
        dependents_count = await admin.count_dependents(found.id)
    return d.page(
        request,
        "job.html",
        job=found,
        delivery=is_delivery(found),
        dependencies=dependencies,
        dependents=dependents,
        dependents_count=dependents_count,
        shown_after=after,
        flow_shown=FLOW_SHOWN,
        secrets=secrets,
        # a status this version does not know reads as errored: neither retried nor deleted
        # here (another program's, or a newer version's active job in a rolling deploy)
        can_retry=found.status in (S.ERRORED, S.KILLED) and "status" not in found.invalid_fields,
        can_kill=found.status in ACTIVE and found.kill_requested_at is None,
        can_run_now=found.status == S.PENDING and found.scheduled_for > d.now(),
        can_delete=found.status in TERMINAL and "status" not in found.invalid_fields,
        live=True,
    )


def is_delivery(job: Job[Any]) -> bool:
    """Whether the job is an event's delivery (its payload as the fan-out writes it): a user's
    own job whose payload has fields named `event_id` and `target` is not (its link led to no
    event)."""
    return delivery_event_id(job.payload) is not None


#: What the new-job form reads: the name it chooses (the New job links of /jobs and /names).
NEW_JOB_PARAMS = ("name",)


async def new_job_form(d: Dashboard, request: Request) -> Response:
    check_list_params(request, NEW_JOB_PARAMS, {"job": "name"}, "the new-job form", "")
    return await render_new_job(d, request, {})


async def render_new_job(
    d: Dashboard, request: Request, form: dict[str, str], error: str | None = None
) -> Response:
    if d.read_only:
        return d.error_page(
            request, 403, "Read-only", "This dashboard is read-only: actions are refused."
        )
    admin = await d.admin()
    # what it accepts: a delivery's jobs are made by emit() and replays, a cron's by triggers
    definitions = [x for x in await admin.list_definitions() if x.kind == "job" and not x.delivery]
    chosen = form.get("name") or request.query_params.get("name") or ""
    return d.page(
        request,
        "new_job.html",
        status_code=400 if error else 200,
        definitions=definitions,
        form={"payload": "{}", "priority": "0"} | form | ({"name": chosen} if chosen else {}),
        error=error,
        live=False,
    )


async def crons(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "the crons page")  # a parameter is never ignored
    admin = await d.admin()
    crons = await admin.list_crons(recent=10, masker=d.masker)
    return d.page(request, "crons.html", crons=crons, live=True)


async def workers(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "the workers page")
    admin = await d.admin()
    return d.page(request, "workers.html", workers=await admin.list_workers(), live=True)


async def names(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "the names page")
    admin = await d.admin()
    ov = await admin.overview(minutes=1)
    return d.page(
        request,
        "names.html",
        definitions=await admin.list_definitions(),
        counts=ov.counts,
        queue=ov.queue,
        unknown=ov.unknown_names,
        live=True,
    )


#: Audit entries a page shows unless `?limit=` says (1 to AUDIT_MAX).
AUDIT_PAGE = 50
AUDIT_MAX = 1000
AUDIT_PARAMS = ("limit", "before")


async def audit(d: Dashboard, request: Request) -> Response:
    check_list_params(request, AUDIT_PARAMS, {"cursor": "before"}, "the audit log", "")
    given = request.query_params.get("limit") or ""
    try:
        limit = int(given or AUDIT_PAGE)
    except ValueError:
        raise InvalidArgumentError(
            f"limit must be a whole number, e.g. 50, got {given!r}"
        ) from None
    if not 1 <= limit <= AUDIT_MAX:
        raise InvalidArgumentError(f"limit must be between 1 and {AUDIT_MAX:,}, got {limit}")
    admin = await d.admin()
    before = request.query_params.get("before") or None
    read = await admin.audit_log(limit=limit + 1, before=before)  # one more: is there
    entries = read[:limit]  # an older page (exactly a page led to an empty one)
    details = [d.masker.text(_detail_text(e.detail)) if e.detail else "" for e in entries]
    return d.page(
        request,
        "audit.html",
        entries=list(zip(entries, details, strict=True)),
        next_before=entries[-1].id if len(read) > limit else None,
        limit=limit if given else None,  # kept by the Older link when given
        live=True,
    )


def _detail_text(detail: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, "", [], {}))


# ---- JSON (the same data, masked) ------------------------------------------------------------


async def api_overview(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "the overview")  # as the page it mirrors
    admin = await d.admin()
    ov = await masked_overview(d, 30)
    workers = await admin.list_workers()
    return json_response(
        {
            "overview": ov.model_dump(mode="json"),
            "workers": [w.model_dump(mode="json") for w in workers],
        }
    )


async def api_jobs(d: Dashboard, request: Request) -> Response:
    try:
        page = await list_page(d, request, job_filters(request))
    except (InvalidArgumentError, UnknownJobError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    carried = await (await d.admin()).carried(page.jobs)
    listed = [d.mask_job(j, carried) for j in page.jobs]
    for job in listed:  # a listing reads no log lines: an empty list would say there are none
        job.pop("logs", None)
    return json_response({"jobs": listed, "next_cursor": page.next_cursor})


async def api_job(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "a job's page")
    admin = await d.admin()
    found = await admin.get_job(request.path_params["job_id"])
    return json_response(d.mask_job(found, await admin.carried([found])))


# ---- metrics and probes -----------------------------------------------------------------------


async def metrics(d: Dashboard, request: Request) -> Response:
    try:
        from ..ops import metrics as m
    except ImportError:
        return Response(
            "metrics need prometheus-client: pip install 'job-processor[dashboard]'\n",
            status_code=501,
            media_type="text/plain",
        )
    body = await m.render(await d.metrics())
    return Response(body, media_type=m.CONTENT_TYPE)


async def healthz(d: Dashboard, request: Request) -> Response:
    return await health_response(d, ready=False)


async def readyz(d: Dashboard, request: Request) -> Response:
    return await health_response(d, ready=True)
