"""The dashboard's Events pages: recent events, an event with its deliveries, and replays.

Reads go through `job_processor.events` (index-backed: `list_events` on `{name, emitted_at,
_id}` / `{emitted_at, _id}`, `event_summary` on the deliveries' `{event_id, created_at, _id}`:
the first 200 and a count); replays through `Admin.replay_event`, so they are recorded in the
audit log like every action.
A delivery links to its job page, where it is killed or retried like any job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import events as ev
from ..core.clock import as_utc
from ..core.errors import EventNotFoundError, InvalidArgumentError, JobProcessorError
from ..events.api import EventsAPI
from ..events.pages import decode_cursor, event_page
from ..events.queries import check_listed_name
from ..events.webhooks import url_host
from ..ops.admin import ActionResult
from ..ops.admin.inputs import parse_time
from ..storage import Storage
from .actions import _confirmed, _form, confirm_page
from .render import FLASH_LINES, error_line, filter_form
from .state import Dashboard
from .views import check_list_params

PAGE_SIZES = (20, 50, 100, 200)
DEFAULT_LIMIT = 50
#: Attempts of a replayed webhook delivery when the dashboard has no processor to ask
#: (WebhookOptions' default).
WEBHOOK_ATTEMPTS = 10
#: Deliveries an event page lists (the counts above them count every one).
DELIVERIES_SHOWN = 200


def _targets_summary(event: ev.Event) -> str:
    subs = [t.target for t in event.targets if t.kind == "subscriber"]
    hooks = len(event.targets) - len(subs)
    text = ", ".join(subs[:4]) + (f" +{len(subs) - 4}" if len(subs) > 4 else "")
    if hooks:
        text += (" · " if text else "") + f"{hooks} webhook{'s' if hooks > 1 else ''}"
    return text


#: The query parameters the events list reads, and other lists' words for them.
EVENT_PARAMS = ("name", "since", "until", "limit", "before")
_EVENT_SAME_AS = {"after": "since", "event": "name", "cursor": "before"}
_EVENT_NOTE = " (since and until: emission times, ISO 8601)"


async def events(d: Dashboard, request: Request) -> Response:
    q = request.query_params
    filters = {k: q.get(k, "").strip() for k in ("name", "since", "until")}
    limit_text = q.get("limit", "").strip()
    cursor = q.get("before", "").strip()
    admin = await d.admin()
    error = None
    page: list[ev.Event] = []
    older: str | None = None
    cut = False
    try:
        check_list_params(request, EVENT_PARAMS, _EVENT_SAME_AS, "the events list", _EVENT_NOTE)
        try:
            limit = int(limit_text or DEFAULT_LIMIT)
        except ValueError:
            raise InvalidArgumentError("limit must be a whole number, e.g. 50") from None
        if not 1 <= limit <= 1000:
            raise InvalidArgumentError(f"limit must be between 1 and 1000, got {limit}")
        page, older, cut = await event_page(
            admin.storage,
            filters["name"] or None,
            parse_time(filters["since"] or None, "since"),
            parse_time(filters["until"] or None, "until"),
            limit,
            decode_cursor(cursor) if cursor else None,
        )
        if not page and not cursor:  # a misspelt name is named, as the jobs page names it
            await check_listed_name(admin.storage, filters["name"] or None)
    except InvalidArgumentError as exc:
        error = str(exc)
    names = sorted({str(r["event"]) for r in await admin.storage.subscribers.all()})
    active = {k: v for k, v in filters.items() if v}
    shown, sizes = filter_form(filters, ("since", "until"), limit_text, PAGE_SIZES)
    return d.page(
        request,
        "events.html",
        status_code=400 if error else 200,
        events=page,
        targets={e.id: _targets_summary(e) for e in page},
        older=older,
        cut=cut,
        cursor=cursor,
        filters=shown,
        active=active,
        params=active | ({"limit": limit_text} if limit_text else {}),
        limit=limit_text,
        page_sizes=sizes,
        names=names,
        error=error,
        live=not cursor and error is None,  # a refused filter: not "Offline" every period
    )


# ---- one event ----------------------------------------------------------------------------------


def _webhook_attempts(d: Dashboard) -> int:
    if isinstance(d.processor, EventsAPI):  # a JobProcessor: its own webhook options
        return int(d.processor.events.options.max_attempts)
    return WEBHOOK_ATTEMPTS


async def _replayable(d: Dashboard, storage: Storage, name: str) -> list[str]:
    """The targets a replay of an event of this name reaches now."""
    return [str(t["target"]) for t in await ev.current_targets(storage, name, _webhook_attempts(d))]


async def event(d: Dashboard, request: Request) -> Response:
    check_list_params(request, (), {}, "an event's page")  # a parameter is never ignored
    admin = await d.admin()
    found, counts = await ev.event_summary(
        admin.storage, request.path_params["event_id"], DELIVERIES_SHOWN
    )
    endpoints = {str(e["_id"]): e for e in await admin.storage.webhooks.all()}
    hosts: dict[str, str] = {}  # what a webhook target is, never its path or query
    webhooks = {t.target for t in found.targets if t.kind == "webhook"}
    webhooks |= {x.target for x in found.deliveries if x.kind == "webhook"}  # replays' too
    for target in sorted(webhooks):
        doc = endpoints.get(target.removeprefix("webhook:"))
        if doc is None:
            hosts[target] = "endpoint removed"
            continue
        about = f" · {doc['description']}" if doc.get("description") else ""
        hosts[target] = url_host(str(doc["url"])) + about
    secrets = d.masker.secrets(found.payload, *[x.result for x in found.deliveries])
    replayable = await _replayable(d, admin.storage, found.name)
    # at most DELIVERIES_SHOWN jobs (an event replayed 150 times: 1,500), read so, then a row
    # for each target without one (deleted by retention, or waiting): all shown, as counted
    shown = found.deliveries
    return d.page(
        request,
        "event.html",
        event=found,
        hosts=hosts,
        secrets=sorted(secrets),
        replayable=replayable,
        counts=counts,
        deliveries_shown=DELIVERIES_SHOWN,
        deliveries_total=sum(counts.values()),
        errors={i: _last_line(d, x.error, secrets) for i, x in enumerate(shown)},
        attempts={i: [_attempt(a) for a in x.attempts] for i, x in enumerate(shown)},
        live=True,
    )


def _attempt(record: dict[str, Any]) -> dict[str, Any]:
    """A webhook attempt record, its time as a datetime (kept as text in the job's state)."""
    at = record.get("at")
    if isinstance(at, str):
        with contextlib.suppress(ValueError):
            at = as_utc(dt.datetime.fromisoformat(at.replace("Z", "+00:00")))
    return record | {"at": at}


def _last_line(d: Dashboard, text: str | None, secrets: set[str]) -> str:
    return error_line(d.masker.text(text, secrets))


async def replay(d: Dashboard, request: Request) -> Response:
    """POST /events/{id}/replay, with `subscriber` (one target, else all of them now)."""
    event_id = request.path_params["event_id"]
    subscriber = _form(request).get("subscriber") or None
    back = f"/events/{event_id}"
    admin = await d.admin()
    if not _confirmed(request):
        found = await ev.get_event(admin.storage, event_id)
        now = await _replayable(d, admin.storage, found.name)
        targets = [subscriber] if subscriber else now
        return confirm_page(
            d,
            request,
            title=(
                f"Replay event {found.id} to {subscriber}?"
                if subscriber
                else f"Replay event {found.id} to {len(targets)} target(s)?"
            ),
            lines=[
                f"{found.name} · emitted {found.emitted_at:%Y-%m-%d %H:%M:%S} UTC.",
                "New deliveries are created (recorded as a replay); the past ones stay as "
                "they are. Receivers see the same event id again.",
                "Targets: " + (", ".join(targets) or "none (nothing listens to it now)"),
            ],
            button="Replay to " + (subscriber or "all"),
            danger=False,
        )
    try:
        result = await admin.replay_event(
            event_id,
            [subscriber] if subscriber else None,
            webhook_attempts=_webhook_attempts(d),
            actor=d.actor(request),
        )
    except JobProcessorError as exc:
        flash = {"kind": "error", "title": "Replay failed", "lines": [d.masker.text(str(exc))]}
        # its page is gone (expired or deleted since the confirmation): the list says so
        gone = isinstance(exc, EventNotFoundError)
        return d.redirect(request, "/events" if gone else back, flash)
    return d.redirect(request, back, replay_flash(result))


def replay_flash(result: ActionResult) -> dict[str, Any]:
    deliveries = result.detail.get("deliveries", [])
    lines = [f"{x['target']}: new delivery {x['job_id']}" for x in deliveries[:FLASH_LINES]]
    if len(deliveries) > FLASH_LINES:
        lines.append(f"… and {len(deliveries) - FLASH_LINES} more")
    if result.done:
        title = f"Replay: {len(deliveries)} new deliver{'y' if len(deliveries) == 1 else 'ies'}"
        return {"kind": "ok", "title": title, "lines": lines, "by": result.actor}
    why = [f"{k}: {v}" for k, v in result.skipped.items()]
    return {"kind": "warn", "title": "Replay: nothing delivered", "lines": why, "by": result.actor}
