"""Sentry, when sentry_sdk is installed and initialised (otherwise nothing happens):

- jobs: each run is a transaction (sentry-sdk 2.x; with 3.x the root span of its own trace,
  streamed) (op "queue.process", named after the job) in its own scope
  tagged with the job's name, id, attempt, tag and worker (`job.name`, `job.id`, `job.attempt`,
  `job.tag`, `job.worker_id`; the "job" context has the rest), so whatever the handler reports
  to Sentry carries them too. A run that fails (an exception, max runtime exceeded, an invalid
  job) is captured, with the handler's exception when there is one; so is a run recovered after
  its worker crashed (`job.recovered_by` tag).
- crons: check-ins (in_progress, then ok or error) with the monitor's schedule.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.cron_text import croniter_form
from ..core.definitions import CronDef
from ..core.runs import WORKER_SILENT

Doc = dict[str, Any]
T = TypeVar("T")
_sdk: Any = None
"""sentry_sdk, once the application has imported it (to call `sentry_sdk.init`)."""


def _client_active() -> bool:
    """Is a Sentry client active? Never imports sentry_sdk: an application that uses Sentry
    has imported it to call `sentry_sdk.init`; one that has not pays nothing (one dict look-up
    per run, and no import on the first run)."""
    global _sdk
    if _sdk is None:
        _sdk = sys.modules.get("sentry_sdk")
        if _sdk is None:
            return False
    try:  # a sentry_sdk without get_client (1.x) or a broken client: nothing to do
        client = _sdk.get_client()
        # sentry_sdk.init(dsn=None) leaves an active client that sends nothing: nothing to do
        return bool(client.is_active()) and getattr(client, "transport", None) is not None
    except Exception:  # monitoring must never break a job
        return False


#: The sentry_sdk major versions whose API this module uses: 2.x's transactions, 3.x's
#: streamed spans (3.0 removed start_transaction).
SUPPORTED_MAJORS = (2, 3)


def unsupported_version() -> str | None:
    """The version of a loaded sentry_sdk this module cannot report with (None: none loaded,
    or a 2.x or 3.x): with it, no run might reach Sentry."""
    sdk = sys.modules.get("sentry_sdk")
    version = str(getattr(sdk, "VERSION", "")) if sdk is not None else ""
    major = version.split(".")[0]
    return version if major.isdigit() and int(major) not in SUPPORTED_MAJORS else None


def job_tags(doc: Doc, worker_id: str | None) -> dict[str, str]:
    return {
        "job.name": str(doc.get("name")),
        "job.id": str(doc.get("_id")),
        "job.attempt": str(doc.get("attempt")),
        "job.tag": str(doc.get("tag")),
        "job.worker_id": str(worker_id or doc.get("worker_id")),
    }


def _context(doc: Doc) -> dict[str, Any]:
    keys = ("priority", "scheduled_for", "run_started_at")
    # a lean document leaves defaults out: show them as a complete document did
    defaults = {"type": "simple", "max_attempts": 1, "failures": 0}
    return (
        {k: str(doc.get(k)) for k in keys}
        | {k: str(doc.get(k, v)) for k, v in defaults.items()}
        | {"trigger": str(doc.get("trigger"))}
    )


@dataclass
class RunTrace:
    """One run's Sentry scope and root (entered by start_run, left by finish_run): a 2.x
    transaction, or a streamed span (3.x, or 2.x with `trace_lifecycle="stream"`)."""

    scope_cm: Any
    transaction: Any
    doc: Doc
    streamed: bool = False
    finished: bool = False
    captured: list[str] = field(default_factory=list)


def start_run(doc: Doc, worker_id: str) -> RunTrace | None:
    """A scope and a transaction for one run; None without an active Sentry client."""
    if not _client_active():
        return None
    try:
        scope_cm = _sdk.isolation_scope()
        scope = scope_cm.__enter__()
        name = str(doc.get("name"))
        tags = job_tags(doc, worker_id)
        for key, value in tags.items():
            scope.set_tag(key, value)  # on the events captured in the run
        scope.set_context("job", _context(doc))
        _new_trace(scope, name)
        # after a web framework's own (run_job called in a request): its processor renames
        # every event after the route unless the name's source is a route or custom one
        scope.add_event_processor(_named(name))
        scope.add_event_processor(_no_internal_vars)
        if not _streaming():
            transaction = _sdk.start_transaction(op="queue.process", name=name, source="task")
            transaction.__enter__()
            return RunTrace(scope_cm, transaction, doc)
        # streamed spans carry attributes, not tags: the scope's go on every span (and log)
        # of the run, the handler's own too
        scope.set_attributes(tags)
        root = _sdk.traces.start_span(
            name=name,
            attributes={"sentry.op": "queue.process", "sentry.segment.name.source": "task"},
            parent_span=None,
        )
        return RunTrace(scope_cm, root, doc, streamed=True)
    except Exception:  # monitoring must never break a job
        return None


def _no_internal_vars(event: Any, hint: Any) -> Any:
    """No local variables of this package's own frames (sentry-sdk records each frame's by
    default): a webhook endpoint's URL, whose path or query may hold a token, a job document
    with its payload."""
    if isinstance(event, dict):
        for value in (event.get("exception") or {}).get("values") or []:
            for frame in (value.get("stacktrace") or {}).get("frames") or []:
                if str(frame.get("module") or "").startswith("job_processor."):
                    frame.pop("vars", None)
    return event


def _named(name: str) -> Callable[[Any, Any], Any]:
    """An event processor naming a run's events (its transaction too) after the run when a
    web framework's integration renamed them after its route (run_job called in a request):
    the name the scope the event is captured in holds (the run's, the job's unless the
    handler set another, or a scope the handler opened itself), else the job's; a name of the
    handler's own (source custom or task: its own transaction) is kept."""

    def named(event: Any, hint: Any) -> Any:
        if not isinstance(event, dict) or event.get("type") == "check_in":
            return event
        if (event.get("transaction_info") or {}).get("source") in ("custom", "task"):
            return event
        # processors run inside capture_event: the current scope is the capturing one
        given = getattr(_sdk.get_current_scope(), "_transaction", None)
        event["transaction"] = given if isinstance(given, str) and given else name
        event["transaction_info"] = {"source": "task"}
        return event

    return named


def _streaming() -> bool:
    """Are spans streamed? Always with sentry-sdk 3.x (it has no transactions); with 2.x when
    `init(trace_lifecycle="stream")` (then its start_transaction only returns a no-op span)."""
    if not hasattr(_sdk, "start_transaction"):
        return True
    options = _sdk.get_client().options or {}
    if options.get("trace_lifecycle") is not None:
        return bool(options.get("trace_lifecycle") == "stream")
    return bool((options.get("_experiments") or {}).get("trace_lifecycle") == "stream")


def detached(create: Callable[[], T]) -> T:
    """`create()` (an `asyncio.create_task` of the processor's own loops) in Sentry scopes of
    their own. A task copies its creator's context, so the loops shared the caller's scopes:
    their MongoDB commands (spans of Sentry's PyMongo integration) became spans of the caller's
    span, and every run's error carried what the caller's scope holds.

    Started where a span is active (a request, a startup transaction): new, empty scopes, so
    that nothing of that request (tags, user, breadcrumbs, request data) is on any job's
    event. Started elsewhere (the application's startup code, `main`): copies of the caller's
    scopes, with no span and a trace of their own, so that what the application set for the
    whole process (`sentry_sdk.set_tag`, `set_user` at module level) is on the jobs' events,
    as on its own. Done whenever sentry_sdk is loaded (it may be initialised after the start)."""
    sdk = sys.modules.get("sentry_sdk")
    if sdk is None:
        return create()
    stack = contextlib.ExitStack()
    try:
        scopes = sdk.scope
        if _in_live_span(sdk.get_current_scope()):
            stack.enter_context(
                scopes.use_isolation_scope(scopes.Scope(ty=scopes.ScopeType.ISOLATION))
            )
            stack.enter_context(scopes.use_scope(scopes.Scope(ty=scopes.ScopeType.CURRENT)))
        else:
            _no_span_new_trace(sdk, stack.enter_context(sdk.isolation_scope()))
    except Exception:  # monitoring must never break the processor
        with contextlib.suppress(Exception):
            stack.close()  # the caller's scopes again, if one was entered
        return create()
    with stack:  # left at once: the caller's scopes again; the task keeps its own
        return create()


def _in_live_span(scope: Any) -> bool:
    """Is a span under way on this scope? Not one that has ended: sentry-sdk 2.x's PyMongo
    integration leaves a finished command span as the scope's span when commands overlap in
    one context (an application's `asyncio.gather` of queries at startup). With 2.x streaming
    spans (`trace_lifecycle="stream"`) the scope's `span` is None: its `streamed_span` is."""
    for span in (scope.span, getattr(scope, "streamed_span", None)):  # 2.x: either kind
        if span is None:
            continue
        ended = getattr(span, "timestamp", None) or getattr(span, "end_timestamp", None)
        if ended is None:
            return True
    return False


def _new_trace(isolation: Any, name: str) -> None:
    """A trace of the run's own, with no active span: not part of whatever the run was started
    in (`run_job` called in a request), nor shared by every run of the process (the events
    captured with tracing off take the scope's trace)."""
    _no_span_new_trace(_sdk, isolation).set_transaction_name(name, source="task")


def _no_span_new_trace(sdk: Any, isolation: Any) -> Any:
    """The current scope (returned) and `isolation` with no active span and a trace of their
    own (forked scopes: the caller's are untouched)."""
    current = sdk.get_current_scope()
    current.span = None
    isolation.set_new_propagation_context()
    current.set_new_propagation_context()
    return current


def _set_status(trace: RunTrace, status: str) -> None:
    """A 2.x transaction takes Sentry's span statuses; a streamed span only "ok" and "error"."""
    if trace.streamed:
        trace.transaction.status = "ok" if status == "ok" else "error"
    else:
        trace.transaction.set_status(status)


def _set_tag(trace: RunTrace, key: str, value: str) -> None:
    if trace.streamed:
        trace.transaction.set_attribute(key, value)
    else:
        trace.transaction.set_tag(key, value)


def run_ended(trace: RunTrace | None, final: Doc | None, exc: BaseException | None) -> None:
    """Capture a failed run (errored, or a failed attempt going to be retried) and set the
    transaction's status. Never raises."""
    if trace is None:
        return
    try:
        status = final.get("status") if final else None
        error = ((final or {}).get("output") or {}).get("error")
        failed = final is not None and (
            status == "errored"
            or (
                status == "pending"
                and int(final.get("failures") or 0) > int(trace.doc.get("failures") or 0)
            )
        )
        _set_tag(trace, "job.status", str(status))
        if failed:
            assert final is not None
            will_retry = str(status == "pending").lower()
            _sdk.get_isolation_scope().set_tag("job.will_retry", will_retry)
            _set_tag(trace, "job.will_retry", will_retry)
            timed_out = error == "max runtime exceeded"  # the exception is only the abort
            if exc is not None and not timed_out:
                trace.captured.append(str(_sdk.capture_exception(exc)))
            else:
                first = str(error or "failed").splitlines()[0]
                trace.captured.append(
                    str(
                        _sdk.capture_message(
                            f"job {final['name']!r} failed: {first}", level="error"
                        )
                    )
                )
        _set_status(
            trace,
            "ok"
            if status in ("finished", "paused", "pending") and not failed
            else "deadline_exceeded"
            if error == "max runtime exceeded"
            else "cancelled"
            if status == "killed"
            else "internal_error",
        )
    except Exception:
        return


def finish_run(trace: RunTrace | None) -> None:
    """Send the transaction and leave the scope (idempotent). Never raises."""
    if trace is None or trace.finished:
        return
    trace.finished = True
    # monitoring must never break a job: a before_send_span that breaks raises out of the
    # span's end (sentry-sdk 3.0)
    with contextlib.suppress(Exception):
        trace.transaction.__exit__(None, None, None)
    with contextlib.suppress(Exception):
        trace.scope_cm.__exit__(None, None, None)


def recovered(doc: Doc, final: Doc, by: str) -> None:
    """A run whose worker crashed (or lost track of it), recovered by worker `by`."""
    if not _client_active():
        return
    try:
        with _sdk.isolation_scope() as scope:
            for key, value in job_tags(doc, doc.get("worker_id")).items():
                scope.set_tag(key, value)
            scope.set_tag("job.recovered_by", by)
            scope.set_tag("job.status", str(final.get("status")))
            scope.set_context("job", _context(doc))
            _new_trace(scope, str(doc.get("name")))
            error = (final.get("output") or {}).get("error") or WORKER_SILENT
            level = "error" if final.get("status") in ("errored", "killed") else "warning"
            _sdk.capture_message(
                f"job {doc['name']!r} recovered ({final.get('status')}): {error}", level=level
            )
    except Exception:
        return


def monitor_config(cron: CronDef) -> dict[str, Any] | None:
    """Upserts the monitor with our schedule. Sentry's crontab has no seconds field: 6-field
    crons send check-ins without a config (create that monitor in Sentry by hand)."""
    if len(cron.cron_string.split()) == 6:
        return None
    config: dict[str, Any] = {
        # as it runs: Sentry reads the value with croniter too (one-value ranges collapsed)
        "schedule": {"type": "crontab", "value": croniter_form(cron.cron_string)},
        "timezone": cron.timezone,
        "checkin_margin": max(1, math.ceil(cron.checkin_margin)),
    }
    if cron.max_runtime_in_minutes is not None:
        config["max_runtime"] = max(1, math.ceil(cron.max_runtime_in_minutes))
    return config


def checkin(
    name: str,
    cron: CronDef | None,
    status: str,
    check_in_id: str | None = None,
    duration: float | None = None,
) -> str | None:
    """Send one check-in ("in_progress", "ok" or "error"); returns its id. Never raises."""
    if not _client_active():
        return None
    try:
        from sentry_sdk.crons import capture_checkin

        result = capture_checkin(
            monitor_slug=name,
            check_in_id=check_in_id,
            status=status,
            duration=duration,
            monitor_config=monitor_config(cron) if cron is not None else None,  # type: ignore[arg-type]
        )
        return str(result) if result is not None else None
    except Exception:  # monitoring must never break a job
        return None
