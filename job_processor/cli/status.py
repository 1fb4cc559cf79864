"""`job-processor status` and `job-processor health`."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from typing import Any

from ..core.errors import JobProcessorError
from ..core.event_documents import WEBHOOK_JOB
from ..core.models import ProcessorStatus
from ..core.status import JobStatus
from ..ops import health as health_mod
from ..ops.admin import Admin
from ..storage.connect import close_database, open_database
from .common import DONE, NOTHING, emit_json, mongodb_url, one_line, table, with_admin


async def status(args: argparse.Namespace) -> int:
    if args.target:
        print(
            f"note: {args.target} is not needed any more: status reads MONGODB_URL alone",
            file=sys.stderr,
        )

    async def run(admin: Admin) -> int:
        found = await admin.status()
        if getattr(args, "json", False):
            emit_json(found.model_dump(mode="json", exclude={"worker_id"}))
        else:
            show_status(found)
        return DONE

    return await with_admin(args, run)


def ago(now: dt.datetime, then: dt.datetime | None) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60} min ago"


def show_status(found: ProcessorStatus) -> None:
    """The status as a person reads it: workers, the queue, counts by name, crons, warnings."""
    live = [w for w in found.workers if w.alive]
    crashed = sum(1 for w in live if w.crashed)  # heartbeat on, claiming nothing
    print(
        f"workers: {len(live) - crashed} alive"
        + (f", {crashed} crashed" if crashed else "")
        + (f", {len(found.workers) - len(live)} silent" if len(live) < len(found.workers) else "")
    )
    if found.workers:
        table(
            ["  ID", "HOST", "PID", "INSTANCE", "TAGS", "SLOTS", "RUNNING", "SEEN"],
            [
                [
                    f"  {w.id}",
                    w.hostname,
                    w.pid,
                    w.instance_id or "-",
                    ",".join(w.tags) if w.tags else "any",
                    w.concurrency,
                    len(w.running_jobs),
                    ago(found.now, w.last_seen)
                    + ("" if w.alive else " (silent)")
                    + (" (crashed)" if w.alive and w.crashed else ""),
                ]
                for w in found.workers
            ],
        )
    q = found.queue
    waiting = f", {q['waiting']} waiting for other jobs" if q.get("waiting") else ""
    print(  # "due now": pending or paused jobs a worker would claim at once
        f"queue: {q.get('due', 0)} due now (pending or paused), {q.get('pending', 0)} pending, "
        f"{q.get('paused', 0)} paused jobs, {q.get('running', 0)} running{waiting}"
    )
    if found.jobs:
        statuses = [s.value for s in JobStatus]
        table(
            ["  NAME", *[s.upper() for s in statuses]],
            [
                [f"  {name}", *[counts.get(s, 0) for s in statuses]]
                for name, counts in sorted(found.jobs.items())
                if name != WEBHOOK_JOB or any(counts.values())  # built in: shown once used
            ],
        )
    if found.crons:
        print("crons:")
        table(
            ["  NAME", "SCHEDULE", "TIMEZONE", "NEXT (IN ITS TIMEZONE)", "LAST"],
            [
                [
                    f"  {c.get('name')}",
                    c.get("cron_string"),
                    c.get("timezone"),
                    local_time(c.get("next_slot_local")),
                    (c.get("recent") or [{}])[0].get("status", "-"),
                ]
                for c in found.crons
            ],
        )
    for label, names in (
        ("paused names", found.paused_names),
        ("unserved names", found.unserved_names),
    ):
        if names:
            print(f"{label}: {one_line(', '.join(names))}")
    for limit in found.limits:
        print(one_line(limit_line(limit)))
    if found.warnings:
        print("warnings:")
        for warning in found.warnings:
            print(f"  - {one_line(warning)}")
    else:
        print("warnings: none")


def local_time(value: Any) -> str:
    """A cron's next slot in its own time zone: 2030-01-31 09:00:00+01:00."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return "-" if value is None else str(value)


async def health(args: argparse.Namespace) -> int:
    """0 healthy, 1 not, whatever the reason (a Docker HEALTHCHECK reserves exit 2): a missing or
    malformed MONGODB_URL is unhealthy too, said the same way."""
    try:
        db = open_database(mongodb_url(), args.timeout)
    except JobProcessorError as exc:
        result = health_mod.Health(
            ok=False, mongodb=False, reason=str(exc), checked_at=dt.datetime.now(dt.UTC)
        )
        if args.json:
            emit_json(result.model_dump(mode="json"))
        else:
            print(f"unhealthy: {one_line(result.reason)}")
        return NOTHING
    try:
        result = await health_mod.check(
            db,
            collection_prefix=args.prefix,
            instance_id=args.instance_id,
            max_age=args.max_age,
            wait=args.timeout,
            refused_is_final=True,  # said at once, as every other command says it
        )
    finally:
        await close_database(db)
    if args.json:
        emit_json(result.model_dump(mode="json"))
    else:
        print(("ok: " if result.ok else "unhealthy: ") + one_line(result.reason))
    return DONE if result.ok else NOTHING


def limit_line(limit: dict[str, Any]) -> str:
    """A limit in use, in one line: its slots, and its starts in the rate window."""
    most = limit.get("concurrency") or "-"
    line = f"limit {limit.get('key')}: {limit.get('running')} of {most} running"
    if limit.get("rate"):
        line += (
            f", {limit.get('started_in_window')} of {limit['rate']} starts"
            f" per {limit.get('per_seconds'):g} s"
        )
    elif "rate" in (limit.get("varies") or ()):  # a folded row of keys of different rates
        line += f", {limit.get('started_in_window')} starts, each in its key's rate window"
    if limit.get("keys"):
        differ = "/".join(limit.get("varies") or ())
        line += f" (across {limit['keys']} keys" + (
            f", their {differ} settings differ)" if differ else ")"
        )
    return line
