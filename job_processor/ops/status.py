"""Status reporting: workers with their running jobs, the queue, counts by name, crons."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.commands import command
from ..core.coverage import coverage, worker_alive, worker_warnings
from ..core.definitions import CronDef, JobDef
from ..core.lenient import read_leniently
from ..core.limits import check_limits, top_usage
from ..core.masking import Masker, task_error
from ..core.models import Job, ProcessorStatus, WorkerInfo
from ..core.schedule import (
    STUCK_CRON_READ,
    STUCK_CRON_SLOTS,
    local_time,
    skipped_in_a_row,
    task_slot,
)
from ..core.status import JobStatus
from ..storage import Storage

Doc = dict[str, Any]
S = JobStatus
#: A job an exclusive cron can be stuck behind.
ACTIVE = {S.PENDING.value, S.RUNNING.value, S.PAUSED.value}


async def build_status(
    storage: Storage,
    definitions: Mapping[str, JobDef],
    crons: Mapping[str, CronDef],
    worker_id: str,
    worker_timeout: float,
    now: dt.datetime,
) -> ProcessorStatus:
    running = await storage.jobs.running()
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for r in running:
        by_worker.setdefault(str(r.get("worker_id")), []).append(
            {"id": str(r["_id"]), "name": r["name"], "started_at": r.get("run_started_at")}
        )
    workers = []
    live: list[Doc] = []
    for w in await storage.workers.all():
        info = read_leniently(WorkerInfo, w)  # a field of the wrong type: its default
        if info is None:
            continue
        info.alive = worker_alive(w, now, worker_timeout)  # by the worker's own timeout
        info.running_jobs = by_worker.get(info.id, [])
        workers.append(info)
        if info.alive:
            live.append(w)
    jobs: dict[str, dict[str, int]] = {name: {} for name in definitions}
    for status in S:
        for name, n in (await storage.jobs.counts_by_name(status)).items():
            jobs.setdefault(name, {})[status.value] = n
    # due jobs of every name: one another program inserted has no status until its first
    # claim (docs/scale.md), so no count above names it
    due = {name: n for name, (n, _) in (await storage.job_admin.due_by_name(None, now)).items()}
    for name in due:
        jobs.setdefault(name, {})
    queue = {
        "pending": sum(j.get("pending", 0) for j in jobs.values()),
        "due": sum(due.values()),
        "paused": sum(j.get("paused", 0) for j in jobs.values()),
        "waiting": sum(j.get("waiting", 0) for j in jobs.values()),
        "running": len(running),
    }
    cron_rows, warnings = await cron_status(storage, crons, running)
    # names no live worker can run, waiting jobs of unknown names, paused names (registry)
    known: dict[str, Doc] = {str(d["_id"]): d for d in await storage.definitions.all()}
    for name, definition in definitions.items():
        kind = "cron" if name in crons else "job"
        known[name] = known.get(name, {}) | {"kind": kind, "tag": definition.tag}
    paused = await storage.paused.names()
    cov = coverage(known, live, jobs, paused, now, due)
    warnings += cov.warnings + worker_warnings(workers, now)
    defined = {str(d["limit_key"]) for d in known.values() if d.get("limit_key")}
    defined |= set(check_limits(definitions))
    limits = top_usage(await storage.limits.all(), now, defined)
    return ProcessorStatus(
        limits=limits,
        now=now,
        worker_id=worker_id,
        workers=workers,
        queue=queue,
        jobs=jobs,
        crons=cron_rows,
        warnings=warnings,
        paused_names=sorted(paused),
        unserved_names=cov.unserved,
    )


async def cron_status(
    storage: Storage, crons: Mapping[str, CronDef], running: list[Doc]
) -> tuple[list[dict[str, Any]], list[str]]:
    docs = {d["_id"]: d for d in await storage.crons.docs(list(crons))}
    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name, cron in crons.items():
        # the schedule every replica follows, the stored one (during a rolling deploy another
        # version's), else this process's own
        stored = docs.get(name, {})
        cron_string, timezone = cron.cron_string, cron.timezone
        if isinstance(stored.get("cron_string"), str) and isinstance(stored.get("timezone"), str):
            cron_string, timezone = stored["cron_string"], stored["timezone"]  # as the scheduler
        next_slot = stored.get("next_slot")
        recent = await storage.jobs.recent_tasks(name, STUCK_CRON_READ)
        out.append(
            {
                "name": name,
                "cron_string": cron_string,
                "timezone": timezone,
                "next_slot_utc": next_slot,
                "next_slot_local": local_time(cron_string, timezone, next_slot),
                "running": [str(r["_id"]) for r in running if r["name"] == name],
                "recent": [
                    {k: v for k, v in task_row(t, cron.sensitive_fields).items() if k != "ended_at"}
                    for t in recent[:5]
                ],
            }
        )
        warning = await stuck_cron_warning(storage, name, recent)
        if warning is not None:
            warnings.append(warning)
    return out, warnings


def task_row(doc: Doc, paths: Sequence[str] = (), masker: Masker | None = None) -> dict[str, Any]:
    """A cron's task as its listings show it (`get_status()`, `crons list`, `status`, the
    dashboard): read as every listing reads a stored job (`Job.read`), so that one another
    program inserted under the cron's name (a manual run from mongosh, with no status nor
    created_at until its first claim) or with a field of the wrong type shows as that job's
    page does: its status derived, a wrong field left out (in its `invalid_fields`), its
    slot its creation time when it has no cron slot; a status this version does not know
    shows as errored."""
    job = Job.read(doc)
    return {
        "id": job.id,
        "slot": task_slot(doc) or job.created_at,
        "trigger": job.trigger,
        "status": job.status,
        "skip_reason": job.skip_reason,
        "error": task_error(doc, paths, masker),
        "ended_at": job.ended_at,
    }


async def stuck_cron_warning(storage: Storage, name: str, recent: list[Doc]) -> str | None:
    """What to say of an exclusive cron whose last slots were all skipped behind one job
    (`recent`: its latest tasks, newest first); None when they were not. `get_status()`, the
    CLI's `status` and the dashboard say it alike."""
    stuck = await stuck_behind(storage, recent)
    if stuck is None:
        return None
    if stuck["status"] == S.RUNNING.value:
        return (
            f"cron {name!r}: its last {STUCK_CRON_SLOTS} slots were skipped behind job "
            f"{stuck['_id']}, running since {stuck.get('run_started_at')}: a long run or "
            "a hung one; give the cron a max_runtime_in_minutes, or kill that job"
        )
    holder = str(stuck.get("name"))
    if holder in await storage.paused.names():  # read only when stuck: a rare path
        return (
            f"cron {name!r}: its last {STUCK_CRON_SLOTS} slots were skipped behind job "
            f"{stuck['_id']} which is {stuck['status']} because {holder!r} is paused: "
            f"nothing runs; resume it ({command('names resume', holder)}) or "
            "kill that job"
        )
    return (
        f"cron {name!r}: its last {STUCK_CRON_SLOTS} slots were skipped behind job "
        f"{stuck['_id']} which is {stuck['status']}, not running: nothing runs; "
        "kill that job or start a worker that serves its tag"
    )


async def stuck_behind(storage: Storage, recent: list[Doc]) -> Doc | None:
    """The job an exclusive cron's last STUCK_CRON_SLOTS slots were all skipped behind (its
    manual triggers are no slots)."""
    last = [t for t in recent if t.get("trigger") != "manual"][:STUCK_CRON_SLOTS]
    if len(last) < STUCK_CRON_SLOTS:
        return None
    holder_id = last[0].get("conflicting_job_id")
    if holder_id is None or skipped_in_a_row(last, holder_id) < STUCK_CRON_SLOTS:
        return None
    holder = await storage.jobs.get(holder_id)
    if holder is None or holder.get("status") not in ACTIVE:
        return None  # it has ended since: the next slot runs
    if skipped_in_a_row(last, holder_id, holder) < STUCK_CRON_SLOTS:
        return None  # some were a catch-up's, skipped before it started
    return holder
