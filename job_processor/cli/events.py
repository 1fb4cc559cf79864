"""`job-processor events ...` (list, show, replay) and `job-processor webhooks list`."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import urllib.parse
from typing import Any

from ..core.masking import mask_event
from ..core.models import Delivery, Event, recorded
from ..events import queries as ev
from ..events.pages import TIES_MAX, decode_cursor, event_page
from ..events.webhooks import readable_endpoint
from ..ops.admin import Admin, parse_time
from .common import (
    DONE,
    MASKER,
    NOTHING,
    UsageError,
    emit_json,
    first_line,
    one_line,
    print_more,
    shown_json,
    table,
    when,
    with_admin,
)
from .jobs import shown_time


def _event_row(e: Event) -> list[Any]:
    subscribers = sum(1 for t in e.targets if t.kind == "subscriber")
    return [
        e.id,
        e.name,
        when(e.emitted_at),
        e.key,
        subscribers,
        len(e.targets) - subscribers,
        e.replays or "",
        e.instance_id or e.emitted_by,
    ]


async def events_list(args: argparse.Namespace) -> int:

    async def run(admin: Admin) -> int:
        events, more, cut = await event_page(
            admin.storage,
            args.name or None,
            parse_time(args.since, "since"),
            parse_time(args.until, "until"),
            args.limit,
            decode_cursor(args.cursor) if args.cursor else None,
        )
        if not events:  # a misspelt name is named, as `jobs list --name` names it
            await ev.check_listed_name(admin.storage, args.name or None)
        if cut:
            print(
                f"note: more than {TIES_MAX} events were emitted within one second: this page "
                "stops short of them",
                file=sys.stderr,
            )
        if args.json:
            skip = {"deliveries", "delivery"}
            shown = [
                {k: v for k, v in mask_event(MASKER, e).items() if k not in skip} for e in events
            ]
            emit_json(shown)  # a list, as before paging: the cursor goes to stderr
        else:
            table(
                [
                    "ID",
                    "NAME",
                    "EMITTED (UTC)",
                    "KEY",
                    "SUBSCRIBERS",
                    "WEBHOOKS",
                    "REPLAYS",
                    "EMITTED BY",
                ],
                [_event_row(e) for e in events],
            )
        if more:
            print_more(more, args.cursor)
        return DONE

    return await with_admin(args, run)


def _attempts(d: Delivery) -> str:
    return f"{d.attempt}/{d.max_attempts}" if d.job_id else "-"


def _at(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return when(value)
    return str(value)[:19].replace("T", " ") if value else "-"


def _time(value: dt.datetime | None) -> str:
    """A time of `events show` as `jobs show` writes one: 2030-01-31T09:00:00.123Z (UTC); "-"
    for none recorded."""
    at = recorded(value)
    return "-" if at is None else str(shown_time(at))


def show_event(e: Event) -> None:
    masked = mask_event(MASKER, e)
    secrets = MASKER.secrets(e.payload, *[d.result for d in e.deliveries])
    fields: list[tuple[str, Any]] = [
        ("id", e.id),
        ("name", e.name),
        ("key", e.key),
        ("emitted_at", _time(e.emitted_at)),
        ("emitted_by", e.emitted_by),
        ("instance_id", e.instance_id),
        ("fanout", e.fanout),
        ("replays", f"{e.replays} (last {_time(e.last_replayed_at)})" if e.replays else None),
    ]
    for key, value in fields:
        if value is not None:
            print(f"{key + ':':<20}{one_line(value)}")
    print(f"{'payload:':<20}{shown_json(masked['payload'])}")
    print("deliveries:")
    if not e.deliveries:
        print("  none: nobody was listening when it was emitted (replay it to deliver it now)")
        return
    table(
        ["TARGET", "KIND", "MODE", "STATUS", "ATTEMPT", "REPLAY", "JOB", "LAST ERROR"],
        [
            [
                d.target,
                d.kind,
                d.mode,
                d.status,
                _attempts(d),
                d.replay_id or "",
                d.job_id,
                first_line(MASKER.text(d.error, secrets), 50),
            ]
            for d in e.deliveries
        ],
    )
    shown = {d.target: first_line(MASKER.text(d.error, secrets), 10**6) for d in e.deliveries}
    cut = [target for target, line in shown.items() if len(line) > 50]
    if cut:  # the column cut them: each in full (its first line; `jobs show JOB` has the rest)
        print("errors:")
        for target in cut:
            print(f"  {one_line(f'{target}: {shown[target]}')}")
    for d in e.deliveries:
        if d.kind != "webhook" or not d.attempts:
            continue
        print(one_line(f"webhook attempts of {d.target} (job {d.job_id}):"))
        table(
            ["AT (UTC)", "HTTP", "DURATION", "RESPONSE / ERROR"],
            [
                [
                    _at(a.get("at")),
                    a.get("status_code") or "-",
                    f"{a['duration_ms']} ms" if a.get("duration_ms") is not None else "-",
                    first_line(
                        MASKER.text(a.get("error") or a.get("response_excerpt"), secrets), 60
                    ),
                ]
                for a in d.attempts
            ],
        )


async def events_show(args: argparse.Namespace) -> int:

    async def run(admin: Admin) -> int:
        event = await ev.get_event(admin.storage, args.event_id)
        if args.json:
            emit_json(mask_event(MASKER, event))
        else:
            show_event(event)
        return DONE

    return await with_admin(args, run)


async def events_replay(args: argparse.Namespace) -> int:
    if args.event_id and args.name:
        raise UsageError("give an event id, or --name N --since T, not both")
    if not args.event_id and not args.name:
        raise UsageError(
            "give an event id, or --name N --since T (ISO 8601) to replay a time window"
        )
    if args.event_id and (args.since or args.until):
        raise UsageError("--since and --until go with --name (an event id is one event)")
    if args.name and not args.since:
        raise UsageError(
            "--since is required with --name: the start of the window, e.g. "
            "--since 2030-01-31T09:00:00Z"
        )
    subscribers = args.subscriber or None

    async def run(admin: Admin) -> int:
        if args.event_id:
            result = await admin.replay_event(args.event_id, subscribers)
        else:
            result = await admin.replay_events(
                args.name,
                since=args.since,
                until=args.until,
                subscribers=subscribers,
                limit=args.limit,
            )
        if args.json:
            emit_json(result.model_dump(mode="json"))
            return DONE if result.done else NOTHING
        deliveries = result.detail.get("deliveries", [])
        if result.done:
            events = result.detail.get("events", 1)
            print(f"replayed: {len(deliveries)} new deliveries of {events} event(s)")
            table(
                ["EVENT", "TARGET", "JOB", "STATUS", "REPLAY"],
                [
                    [d["event_id"], d["target"], d["job_id"], d["status"], d["replay_id"]]
                    for d in deliveries
                ],
            )
        for key, why in result.skipped.items():
            print(f"{key}: {why}")
        return DONE if result.done else NOTHING

    return await with_admin(args, run)


#: A path segment that looks like a token, whatever punctuation it holds besides (a Telegram
#: bot's `bot<id>:<token>`, a `;token=...` parameter).
_TOKEN_LIKE = re.compile(r"^(?=.*\d)(?=.*[A-Za-z]).{20,}$|^.{32,}$")


def display_url(url: str) -> str:
    """An endpoint's URL for listings: no user info, query or fragment (they may hold a token),
    and path segments that look like tokens (20+ characters mixing letters and digits) as …."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    path = "/".join("…" if _TOKEN_LIKE.match(seg) else seg for seg in parts.path.split("/"))
    return f"{parts.scheme}://{host}{port}{path}" + ("?…" if parts.query else "")


async def webhooks_list(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        docs = await admin.storage.webhooks.all()
        endpoints = [e for e in map(readable_endpoint, docs) if e is not None]
        rows = []
        for ep in endpoints:
            data = ep.model_dump(mode="json", exclude={"headers"})
            data["url"] = display_url(ep.url)
            data["header_names"] = sorted(ep.headers)  # values may be credentials: never shown
            rows.append(data)
        if args.json:
            emit_json(rows)
            return DONE
        table(
            ["ID", "URL", "EVENTS", "FORMAT", "SECRET REF", "ENABLED", "FAILURES", "DISABLED"],
            [
                [
                    r["id"],
                    r["url"],
                    ",".join(r["events"]),
                    r["format"],
                    r["secret_ref"] or "(unsigned)",
                    "yes" if r["enabled"] else "NO",
                    r["consecutive_failures"],
                    first_line(r["disabled_reason"], 50) if not r["enabled"] else "",
                ]
                for r in rows
            ],
        )
        return DONE

    return await with_admin(args, run)
