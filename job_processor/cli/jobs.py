"""`job-processor jobs ...`: list, show, retry, kill, run-now, delete, purge, new, duplicate;
and the old `kill JOB_ID`."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..core.clock import iso_utc
from ..core.models import Job
from ..core.runs import run_outcome, runs_summary
from ..core.status import TERMINAL
from ..ops.admin import Admin, parse_duration
from .common import (
    DONE,
    MASKER,
    UsageError,
    emit_json,
    first_line,
    masked,
    one_line,
    print_more,
    report,
    reported,
    shown_json,
    table,
    when,
    with_admin,
)


def shown_status(job: Job[Any]) -> str:
    """The status, and "killing" for a running job whose kill was requested (as the
    dashboard's badge): its worker has not aborted it yet."""
    killing = job.kill_requested_at is not None and job.status.value == "running"
    return f"{job.status.value} (killing)" if killing else job.status.value


def job_rows(jobs: Sequence[Job[Any]], carried: Mapping[str, Any] | None = None) -> list[list[Any]]:
    """The table's rows; an error masked with the job's secrets and those of the event a
    delivery job carries (`Admin.carried`), as `jobs show` masks it."""
    carried = carried or {}
    return [
        [
            j.id,
            j.name,
            shown_status(j),
            when(j.created_at),
            (
                when(j.ended_at if j.ended_at else j.scheduled_for)
                if j.status.value != "waiting"
                else f"after {j.waiting_on} more"
            ),
            f"{j.attempt} ({j.failures}/{j.max_attempts} failed)" if j.failures else j.attempt,
            first_line(
                MASKER.text(
                    j.error, MASKER.secrets(j.payload, j.state, j.result, carried.get(j.id))
                ),
                50,
            ),
        ]
        for j in jobs
    ]


def show_job(job: Job[Any], carried: Mapping[str, Any] | None = None, logs: bool = False) -> None:
    data = masked(job, carried)
    for key in (
        "id",
        "name",
        "type",
        "status",
        "tag",
        "priority",
        "key",
        "limit_key",
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
            value = shown_time(data[key]) if key in _TIMES else data[key]
            print(f"{key + ':':<20}{one_line(value)}")
    print(f"{'runs:':<20}{runs_summary(job.attempt, job.failures, job.max_attempts, job.status)}")
    if data.get("invalid_fields"):  # another program's values, shown as stored
        print(f"{'invalid fields:':<20}{json.dumps(data['invalid_fields'], default=str)}")
    if job.after:
        # "waiting" in `deps`: not counted (the dependency has not ended, or just ended; a
        # job ended by a failed dependency counts no other end: flows.md)
        uncounted = "not ended" if job.status == "waiting" else "not counted"
        ended = [f"{d} ({uncounted if s == 'waiting' else s})" for d, s in job.deps.items()]
        waiting = f"waiting for {job.waiting_on}; " if job.status == "waiting" else ""
        print(f"{'after:':<20}{one_line(waiting + ', '.join(ended))}")
        if job.failed_dependency:
            print(f"{'failed dependency:':<20}{one_line(job.failed_dependency)}")
    progress = data.get("progress")
    if progress:
        print(f"{'progress:':<20}{progress_text(progress)}")
    print(f"{'payload:':<20}{shown_json(data['payload'])}")
    if data.get("state") is not None:
        print(f"{'checkpoint:':<20}{shown_json(data['state'])}")
    output = data.get("output") or {}
    if output.get("result") is not None:
        print(f"{'result:':<20}{shown_json(output['result'])}")
    if output.get("duration_ms") is not None:
        print(f"{'duration_ms:':<20}{one_line(output['duration_ms'])}")
    if output.get("error"):  # of the run that ended last: a job running again is not failing
        print("error:" if job.status in TERMINAL else "error of the previous run:")
        for line in str(output["error"]).splitlines():
            print(f"  {line}")
    if data.get("history"):
        print("run history:")
        table(
            ["RUN", "OUTCOME", "WORKER", "STARTED", "ENDED", "ERROR"],
            [
                [
                    h.get("attempt"),
                    run_outcome(h),
                    h.get("worker_id"),
                    shown_time(h.get("started_at")),
                    shown_time(h.get("ended_at")),
                    first_line(h.get("error"), 40),
                ]
                for h in data["history"]
            ],
        )
    if logs:
        lines = data.get("logs") or []
        print(f"log ({len(lines)} line{'s' if len(lines) != 1 else ''}, the last 200 kept):")
        for line in lines:
            fields = line.get("fields")
            extra = f"  {json.dumps(fields, default=str, ensure_ascii=False)}" if fields else ""
            level = line.get("level") or ""
            shown = f"run {line.get('run')}  {shown_time(line.get('at'))}  {level:<8}"
            print(f"  {one_line(shown + str(line.get('message')) + extra)}")
    elif data.get("logs"):
        print(f"{'log:':<20}{len(data['logs'])} lines (--logs shows them)")


def progress_text(progress: Mapping[str, Any]) -> str:
    """ "40% · 4 / 10 · indexing users" """
    parts = []
    fraction = progress.get("fraction")
    if isinstance(fraction, int | float) and math.isfinite(fraction):
        parts.append(f"{round(fraction * 100)}%")
    elif fraction is not None:  # another program's: shown as it is
        parts.append(repr(fraction))
    total = progress.get("total")
    parts.append(f"{progress.get('done')}" + (f" / {total}" if total is not None else ""))
    if progress.get("message"):
        parts.append(str(progress["message"]))
    return one_line(" · ".join(parts))


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
        carried = await admin.carried(page.jobs)
        if args.json:
            jobs = [masked(j, carried) for j in page.jobs]
            if not args.id:  # a listing reads no log lines (as /api/jobs): no "logs" key
                for job in jobs:
                    job.pop("logs", None)
            emit_json(page.model_dump(mode="json") | {"jobs": jobs})
            return DONE
        table(
            ["ID", "NAME", "STATUS", "CREATED (UTC)", "DUE/ENDED (UTC)", "RUNS", "ERROR"],
            job_rows(page.jobs, carried),
        )
        if page.next_cursor:
            print_more(page.next_cursor, args.cursor)
        return DONE

    return await with_admin(args, run)


#: The fields of `jobs show` that are times.
_TIMES = frozenset(
    {"created_at", "scheduled_for", "started_at", "run_started_at", "ended_at", "kill_requested_at"}
)


def shown_time(value: Any) -> Any:
    """A time of `jobs show` (an ISO text or a datetime) in one form: 2030-01-31T09:00:00.123Z;
    anything else as it is."""
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            value = parsed if parsed.tzinfo is not None else value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return iso_utc(value, "milliseconds")
    return value


async def jobs_show(args: argparse.Namespace) -> int:
    async def run(admin: Admin) -> int:
        job = await admin.get_job(args.job_id)
        carried = await admin.carried([job])
        if args.json:
            shown = masked(job, carried)
            if not args.logs:
                shown.pop("logs", None)
            emit_json(shown)
        else:
            show_job(job, carried, logs=args.logs)
        return DONE

    return await with_admin(args, run)


async def jobs_retry(args: argparse.Namespace) -> int:
    if args.job_ids and (args.name or args.status):
        raise UsageError("give job ids, or --name/--status, not both")
    if not args.job_ids and not args.name:  # --status alone retried every name's jobs
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
        age = parse_duration(args.older_than, "--older-than")  # named as the user typed it
        result = await admin.purge(status=args.status, older_than=age, name=args.name)
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
    return await with_admin(args, lambda a: reported(a.duplicate(args.job_id), args.json))


async def legacy_kill(args: argparse.Namespace) -> int:
    """`kill JOB_ID...`, same as `jobs kill JOB_ID...`; `kill MODULE:ATTR JOB_ID`, the old
    form (its app target, which a job id never looks like, is not needed any more)."""
    ids = list(args.args)
    if len(ids) == 2 and ":" in ids[0]:
        ids = ids[1:]
    args.job_ids = ids
    return await action("kill")(args)
