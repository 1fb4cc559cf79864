"""The operations commands of `job-processor` (jobs, crons, workers, names, events, webhooks,
status, health).

They work from MONGODB_URL alone through `job_processor.admin` (and `job_processor.events` for
events): no app factory, no handlers, and they never change job, cron, subscriber or webhook
definitions. Tables for people, `--json` for scripts.

Exit codes: 0 done; 1 the action did nothing (retry of a finished job, kill of an ended job,
health not fresh); 2 bad input or usage; 3 MongoDB unreachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .admin import ActionResult, Admin, parse_time
from .errors import DatabaseUnreachableError, JobProcessorError
from .masking import DEFAULT_SENSITIVE_FIELDS, Masker, mask_job
from .models import Job

if TYPE_CHECKING:
    from .events import Delivery, Event

DONE, NOTHING, BAD_INPUT, UNREACHABLE = 0, 1, 2, 3


class UsageError(JobProcessorError):
    """Bad command-line input: exit 2."""


def mongodb_url() -> str:
    url = os.environ.get("MONGODB_URL")
    if not url:
        raise UsageError("set MONGODB_URL, e.g. mongodb://localhost:27017/myapp")
    return url


def open_db(url: str, timeout: float) -> Any:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=int(timeout * 1000),
        connectTimeoutMS=int(timeout * 1000),
    )
    return client.get_default_database(default="job_processor")


async def close_db(db: Any) -> None:
    result = db.client.close()
    if hasattr(result, "__await__"):
        await result


async def with_admin(args: argparse.Namespace, fn: Callable[[Admin], Awaitable[int]]) -> int:
    from .processor import check_reachable

    db = open_db(mongodb_url(), args.timeout)
    try:
        await check_reachable(db, args.timeout)
        admin = await Admin.open(db, args.prefix, actor=args.actor or None)
        return await fn(admin)
    finally:
        await close_db(db)


# ---- output ----------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def when(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def first_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


#: What the CLI never prints: the dashboard's default sensitive names (on top of each
#: definition's `sensitive_fields`, which the Admin layer redacts for every reader).
MASKER = Masker(DEFAULT_SENSITIVE_FIELDS)


def masked(job: Job[Any]) -> dict[str, Any]:
    return mask_job(MASKER, job)


def report(result: ActionResult, as_json: bool) -> int:
    if as_json:
        emit_json(result.model_dump(mode="json") | {"jobs": [masked(j) for j in result.jobs]})
    else:
        verb = result.action.replace("_", " ")
        what = ", ".join(result.changed[:10]) + (" ..." if len(result.changed) > 10 else "")
        if result.done:
            print(f"{verb}: {result.count}" + (f" ({what})" if what else ""))
        for job_id in result.detail.get("requested", []):
            print(f"{job_id}: kill requested (its worker aborts it)")
        for key, why in result.skipped.items():
            print(f"{key}: nothing done: {why}", file=sys.stderr if result.done else sys.stdout)
        if not result.done and not result.skipped:
            print(f"{verb}: nothing matched")
    return DONE if result.done else NOTHING


def job_rows(jobs: Sequence[Job[Any]]) -> list[list[Any]]:
    return [
        [
            j.id,
            j.name,
            j.status.value,
            when(j.created_at),
            when(j.ended_at if j.ended_at else j.scheduled_for),
            j.attempt,
            first_line(MASKER.text(j.error, MASKER.secrets(j.payload, j.state, j.result)), 50),
        ]
        for j in jobs
    ]


def show_job(job: Job[Any]) -> None:
    data = masked(job)
    for key in (
        "id",
        "name",
        "type",
        "status",
        "tag",
        "priority",
        "key",
        "trigger",
        "created_at",
        "scheduled_for",
        "started_at",
        "run_started_at",
        "ended_at",
        "worker_id",
        "attempt",
        "failures",
        "max_attempts",
        "kill_requested_at",
        "skip_reason",
        "conflicting_job_id",
        "exit_hook",
        "exit_hook_error",
    ):
        if data.get(key) is not None:
            print(f"{key + ':':<20}{data[key]}")
    print(f"{'payload:':<20}{json.dumps(data['payload'])}")
    if data.get("state") is not None:
        print(f"{'checkpoint:':<20}{json.dumps(data['state'])}")
    output = data.get("output") or {}
    if output.get("result") is not None:
        print(f"{'result:':<20}{json.dumps(output['result'])}")
    if output.get("duration_ms") is not None:
        print(f"{'duration_ms:':<20}{output['duration_ms']}")
    if output.get("error"):
        print("error:")
        for line in str(output["error"]).splitlines():
            print(f"  {line}")
    if data.get("history"):
        print("runs:")
        table(
            ["ATTEMPT", "WORKER", "STARTED", "ENDED", "STATUS", "ERROR"],
            [
                [
                    h.get("attempt"),
                    h.get("worker_id"),
                    h.get("started_at"),
                    h.get("ended_at"),
                    h.get("status"),
                    first_line(h.get("error"), 40),
                ]
                for h in data["history"]
            ],
        )


# ---- commands --------------------------------------------------------------------------------


async def jobs_list(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        page = await admin.list_jobs(
            name=args.name,
            status=args.status,
            tag=args.tag,
            key=args.key,
            created_after=args.since,
            created_before=args.until,
            id=args.id,
            limit=args.limit,
            cursor=args.cursor,
        )
        if args.json:
            emit_json(page.model_dump(mode="json") | {"jobs": [masked(j) for j in page.jobs]})
            return DONE
        table(
            ["ID", "NAME", "STATUS", "CREATED", "DUE/ENDED", "ATTEMPT", "ERROR"],
            job_rows(page.jobs),
        )
        if page.next_cursor:
            print(f"more: add --cursor {page.next_cursor}", file=sys.stderr)
        return DONE

    return await with_admin(args, run)


async def jobs_show(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        job = await admin.get_job(args.job_id)
        if args.json:
            emit_json(masked(job))
        else:
            show_job(job)
        return DONE

    return await with_admin(args, run)


async def jobs_retry(args: argparse.Namespace) -> int:
    if args.job_ids and (args.name or args.status):
        raise UsageError("give job ids, or --name/--status, not both")
    if not args.job_ids and not (args.name or args.status):
        raise UsageError("give job ids, or --name N --status errored to retry a name's jobs")

    async def run(admin: Admin) -> int:
        if args.job_ids:
            return report(await admin.retry(args.job_ids), args.json)
        result = await admin.retry_many(
            name=args.name, status=args.status or "errored", limit=args.limit
        )
        return report(result, args.json)

    return await with_admin(args, run)


def action(verb: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def command(args: argparse.Namespace) -> int:
        async def run(admin: Admin) -> int:
            fn = getattr(admin, verb)
            return report(await fn(args.job_ids), args.json)

        return await with_admin(args, run)

    return command


async def jobs_purge(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        result = await admin.purge(status=args.status, older_than=args.older_than, name=args.name)
        return report(result, args.json)

    return await with_admin(args, run)


async def jobs_new(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        result = await admin.new_job(
            args.name,
            args.payload,
            scheduled_for=args.at,
            priority=args.priority,
            key=args.key,
        )
        return report(result, args.json)

    return await with_admin(args, run)


async def jobs_duplicate(args: argparse.Namespace) -> int:
    return await with_admin(args, lambda a: _report(a.duplicate(args.job_id), args.json))


async def _report(result: Awaitable[ActionResult], as_json: bool) -> int:
    return report(await result, as_json)


async def crons_list(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        crons = await admin.list_crons()
        if args.json:
            emit_json([c.model_dump(mode="json") for c in crons])
            return DONE
        rows = []
        for c in crons:
            last = c.recent[0] if c.recent else None
            rows.append(
                [
                    c.name,
                    c.cron_string,
                    c.timezone,
                    when(c.next_slot_utc),
                    f"{last.status.value} {when(last.slot)}" if last else "-",
                    c.missed_recent,
                    len(c.served_by),
                    "yes" if c.paused else "",
                ]
            )
        table(["NAME", "SCHEDULE", "TZ", "NEXT (UTC)", "LAST", "MISSED", "WORKERS", "PAUSED"], rows)
        return DONE

    return await with_admin(args, run)


async def crons_trigger(args: argparse.Namespace) -> int:
    return await with_admin(args, lambda a: _report(a.trigger_cron(args.name), args.json))


async def listed(
    fetch: Awaitable[Sequence[BaseModel]],
    as_json: bool,
    headers: list[str],
    row: Callable[[Any], list[Any]],
) -> int:
    """A listing: JSON for scripts, else a table for people."""
    items = await fetch
    if as_json:
        emit_json([i.model_dump(mode="json") for i in items])
    else:
        table(headers, [row(i) for i in items])
    return DONE


async def workers_list(args: argparse.Namespace) -> int:
    def row(w: Any) -> list[Any]:
        return [
            w.id,
            w.hostname,
            w.pid,
            w.instance_id,
            ",".join(w.tags) if w.tags else "(all)",
            len(w.running_jobs),
            ago(w.seconds_since_heartbeat) + " ago",
            "yes" if w.alive else "NO",
        ]

    headers = ["ID", "HOST", "PID", "INSTANCE", "TAGS", "RUNNING", "HEARTBEAT", "ALIVE"]
    return await with_admin(args, lambda a: listed(a.list_workers(), args.json, headers, row))


async def names_list(args: argparse.Namespace) -> int:
    def row(v: Any) -> list[Any]:
        return [
            v.name,
            v.kind,
            v.tag,
            v.concurrency,
            v.max_attempts,
            len(v.served_by),
            "yes" if v.paused else "",
            when(v.last_seen),
        ]

    headers = ["NAME", "KIND", "TAG", "CONCURRENCY", "ATTEMPTS", "WORKERS", "PAUSED", "LAST SEEN"]
    return await with_admin(args, lambda a: listed(a.list_definitions(), args.json, headers, row))


async def names_pause(args: argparse.Namespace) -> int:
    verb = "pause" if args.names_command == "pause" else "resume"
    return await with_admin(args, lambda a: _report(getattr(a, verb)(args.name), args.json))


# ---- events and webhooks ---------------------------------------------------------------------


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
    from . import events as ev

    async def run(admin: Admin) -> int:
        events = await ev.list_events(
            admin.storage,
            args.name or None,
            since=parse_time(args.since, "since"),
            until=parse_time(args.until, "until"),
            limit=args.limit,
        )
        if args.json:
            skip = {"deliveries", "delivery"}
            emit_json([e.model_dump(mode="json", exclude=skip) for e in events])
            return DONE
        table(
            ["ID", "NAME", "EMITTED", "KEY", "SUBSCRIBERS", "WEBHOOKS", "REPLAYS", "EMITTED BY"],
            [_event_row(e) for e in events],
        )
        return DONE

    return await with_admin(args, run)


def _attempts(d: Delivery) -> str:
    return f"{d.attempt}/{d.max_attempts}" if d.job_id else "-"


def _at(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return when(value)
    return str(value)[:19].replace("T", " ") if value else "-"


def show_event(e: Event) -> None:
    fields: list[tuple[str, Any]] = [
        ("id", e.id),
        ("name", e.name),
        ("key", e.key),
        ("emitted_at", when(e.emitted_at)),
        ("emitted_by", e.emitted_by),
        ("instance_id", e.instance_id),
        ("fanout", e.fanout),
        ("replays", f"{e.replays} (last {when(e.last_replayed_at)})" if e.replays else None),
    ]
    for key, value in fields:
        if value is not None:
            print(f"{key + ':':<20}{value}")
    print(f"{'payload:':<20}{json.dumps(e.model_dump(mode='json')['payload'])}")
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
                first_line(d.error, 50),
            ]
            for d in e.deliveries
        ],
    )
    for d in e.deliveries:
        if d.kind != "webhook" or not d.attempts:
            continue
        print(f"webhook attempts of {d.target} (job {d.job_id}):")
        table(
            ["AT", "HTTP", "DURATION", "RESPONSE / ERROR"],
            [
                [
                    _at(a.get("at")),
                    a.get("status_code") or "-",
                    f"{a['duration_ms']} ms" if a.get("duration_ms") is not None else "-",
                    first_line(a.get("error") or a.get("response_excerpt"), 60),
                ]
                for a in d.attempts
            ],
        )


async def events_show(args: argparse.Namespace) -> int:
    from . import events as ev

    async def run(admin: Admin) -> int:
        event = await ev.get_event(admin.storage, args.event_id)
        if args.json:
            emit_json(event.model_dump(mode="json", exclude={"delivery"}))
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


_TOKEN_LIKE = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[\w.~%-]{20,}$|^[\w.~%-]{32,}$")


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
    from .webhooks import WebhookEndpoint

    async def run(admin: Admin) -> int:
        endpoints = [WebhookEndpoint.model_validate(d) for d in await admin.storage.webhooks.all()]
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


async def status(args: argparse.Namespace) -> int:
    if args.target:
        print(
            f"note: {args.target} is not needed any more: status reads MONGODB_URL alone",
            file=sys.stderr,
        )

    async def run(admin: Admin) -> int:
        emit_json((await admin.status()).model_dump(mode="json"))
        return DONE

    return await with_admin(args, run)


async def legacy_kill(args: argparse.Namespace) -> int:
    """`kill [MODULE:ATTR] JOB_ID`: the old form, same as `jobs kill JOB_ID`."""
    if len(args.args) not in (1, 2):
        raise UsageError("usage: job-processor kill JOB_ID")
    args.job_ids = [args.args[-1]]
    return await action("kill")(args)


async def health(args: argparse.Namespace) -> int:
    from . import health as health_mod

    url = mongodb_url()
    db = open_db(url, args.timeout)
    try:
        result = await health_mod.check(
            db,
            collection_prefix=args.prefix,
            instance_id=args.instance_id,
            max_age=args.max_age,
            wait=args.timeout,
        )
    finally:
        await close_db(db)
    if args.json:
        emit_json(result.model_dump(mode="json"))
    else:
        print(("ok: " if result.ok else "unhealthy: ") + result.reason)
    return DONE if result.ok else NOTHING


def handle_errors(exc: BaseException, command: str = "") -> int:
    """Exit code and one-line message for an error of a command (`run`: the app factory's
    init_job_processor decides how long to wait for MongoDB)."""
    if isinstance(exc, DatabaseUnreachableError):
        where = str(exc).split(";")[0]
        wait = (
            "init_job_processor(connect_timeout=...) in the app factory sets the wait"
            if command == "run"
            else "--timeout sets the wait"
        )
        print(
            f"error: {where}; check MONGODB_URL and that the server is running ({wait})",
            file=sys.stderr,
        )
        return UNREACHABLE
    print(f"error: {exc}", file=sys.stderr)
    return BAD_INPUT
