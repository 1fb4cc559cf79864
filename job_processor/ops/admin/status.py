"""The admin's numbers: the overview (counts, queues, throughput, warnings), the status
report, the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from ...core import documents as D
from ...core.clock import as_utc
from ...core.coverage import coverage, worker_warnings
from ...core.errors import InvalidArgumentError
from ...core.limits import top_usage
from ...core.models import ProcessorStatus, WorkerInfo
from ...core.schedule import STUCK_CRON_READ
from ...core.status import JobStatus
from ...events.queries import untargeted_warnings
from ...events.webhooks import webhook_warnings
from ..status import stuck_cron_warning
from .crons import CronsAdmin
from .inputs import THROUGHPUT_CAP, limit_of, one_id
from .results import AuditEntry, Overview, QueueRow, ThroughputRow

S = JobStatus


class StatusAdmin(CronsAdmin):
    async def overview(self, minutes: int = 15) -> Overview:
        """The numbers of the dashboard's first page: counts by name and status, queue depth and
        oldest due age per name, jobs ended per minute over the last `minutes`, workers alive and
        dead, paused names, the cluster-wide limits in use, and warnings (names no live worker
        can run, waiting jobs of unknown names, paused names with waiting jobs, dead workers
        awaiting recovery, disabled webhook endpoints)."""
        minutes = limit_of(minutes, "minutes", 24 * 60)
        now = self.clock.now()
        counts = await self._counts()
        known = await self._known()
        workers = await self._workers(now)
        live_docs = [
            {
                "_id": w.id,
                "names": w.names,
                "instance_id": w.instance_id,
                "definitions": w.definitions,
                "zone_rules": w.zone_rules,
                "crashed": w.crashed,
                "hostname": w.hostname,
                "pid": w.pid,
            }
            for w in workers
            if w.alive
        ]
        paused = await self.storage.paused.names()
        # every name with due jobs: one another program inserted has no status until its
        # first claim (docs/scale.md), so no count names it
        due = await self.storage.job_admin.due_by_name(None, now)
        names = sorted(set(counts) | set(known) | set(due))
        queue: dict[str, QueueRow] = {}
        now_ms = D.epoch_ms(now)
        for name in names:
            c = counts.get(name, {})
            n_due, oldest = due.get(name, (0, now_ms))
            queue[name] = QueueRow(
                pending=c.get("pending", 0),
                due=n_due,
                paused=c.get("paused", 0),
                running=c.get("running", 0),
                waiting=c.get("waiting", 0),
                oldest_due_age_seconds=max(0.0, (now_ms - oldest) / 1000) if n_due else None,
            )
        throughput, capped = await self._throughput(now, minutes)
        due_now = {name: n for name, (n, _) in due.items()}
        cov = coverage(known, live_docs, counts, paused, now, due_now)
        warnings = list(cov.warnings)
        dead = [w for w in workers if not w.alive]
        warnings += worker_warnings(workers, now)
        warnings += await webhook_warnings(self.storage)
        warnings += await untargeted_warnings(self.storage, now)
        for cron in sorted(await self.storage.crons.docs(), key=lambda d: str(d["_id"])):
            name = str(cron["_id"])
            recent = await self.storage.jobs.recent_tasks(name, STUCK_CRON_READ)
            stuck = await stuck_cron_warning(self.storage, name, recent)
            if stuck is not None:
                warnings.append(stuck)
        return Overview(
            now=now,
            counts={name: counts.get(name, {}) for name in names},
            queue=queue,
            throughput=throughput,
            throughput_capped=capped,
            workers_alive=sum(1 for w in live_docs if not w.get("crashed")),
            workers_crashed=sum(1 for w in live_docs if w.get("crashed")),
            workers_dead=len(dead),
            paused_names=sorted(paused),
            unserved_names=cov.unserved,
            unknown_names=cov.unknown_waiting,
            warnings=warnings,
            limits=top_usage(
                await self.storage.limits.all(), now, await self.storage.definitions.limit_keys()
            ),
        )

    async def _throughput(self, now: dt.datetime, minutes: int) -> tuple[list[ThroughputRow], bool]:
        start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes - 1)
        rows = [ThroughputRow(minute=start + dt.timedelta(minutes=i)) for i in range(minutes)]
        capped = False
        for status in (S.FINISHED, S.ERRORED, S.KILLED):
            ended = await self.storage.job_admin.ended_since(status, start, THROUGHPUT_CAP)
            capped = capped or len(ended) >= THROUGHPUT_CAP
            for when in ended:
                i = int((as_utc(when) - start).total_seconds() // 60)
                if 0 <= i < minutes:
                    row = rows[i]
                    setattr(row, status.value, getattr(row, status.value) + 1)
        return rows, capped

    async def status(self) -> ProcessorStatus:
        """What `JobProcessor.get_status()` reports, from the database alone (worker_id "")."""
        now = self.clock.now()
        ov = await self.overview(minutes=1)
        workers = [WorkerInfo.model_validate(w.model_dump()) for w in await self._workers(now)]
        crons = [
            {
                "name": c.name,
                "cron_string": c.cron_string,
                "timezone": c.timezone,
                "next_slot_utc": c.next_slot_utc,
                "next_slot_local": c.next_slot_local,
                "running": c.running,
                "recent": [r.model_dump() for r in c.recent[:5]],
            }
            for c in await self.list_crons(recent=5)
        ]
        return ProcessorStatus(
            now=now,
            worker_id="",
            workers=workers,
            queue={
                "pending": sum(q.pending for q in ov.queue.values()),
                "due": sum(q.due for q in ov.queue.values()),
                "paused": sum(q.paused for q in ov.queue.values()),
                "running": sum(q.running for q in ov.queue.values()),
                "waiting": sum(q.waiting for q in ov.queue.values()),
            },
            jobs=ov.counts,
            crons=crons,
            warnings=ov.warnings,
            paused_names=ov.paused_names,
            unserved_names=ov.unserved_names,
            limits=ov.limits,
        )

    async def audit_log(self, limit: int = 50, before: str | None = None) -> list[AuditEntry]:
        """The latest recorded actions, newest first (`before`: an entry id, for the next page).
        Entries other programs wrote with a text or numeric `_id` come after the ObjectId
        ones: text ids, then numbers, each greatest first."""
        key: Any = None
        try:
            key = one_id(before) if before is not None and before != "" else None
            if (
                isinstance(before, str)
                and key is not None
                and not await self.storage.audit.holds_object_id(key)
            ):
                # no entry has that ObjectId: one another program wrote with its text as `_id`
                # (an id kept as text) goes on among the text ids, not the ObjectIds
                text = await self.storage.audit.stored_id(before)
                key = key if text is None else text
        except InvalidArgumentError:  # its message speaks of job ids
            # an entry another program wrote with a text or numeric `_id`: the page goes on
            # from it (the ids of its kind below it, then those of the kinds listed after it)
            if isinstance(before, str):
                key = await self.storage.audit.stored_id(before)
            if key is None:
                raise InvalidArgumentError(
                    f"before {str(before)[:40]!r} is not an audit entry id: no entry has that "
                    "id (give the id of an entry audit_log returned, as the Older link does)"
                ) from None
        docs = await self.storage.audit.recent(limit_of(limit), key)
        entries = []
        for doc in docs:  # a field another program wrote with a wrong type: its default
            read, fallbacks = audit_fallbacks(doc)
            entry = self._readable(AuditEntry, read, "audit", fallbacks)
            if entry is not None:
                entries.append(entry)
        return entries


#: The time of an audit entry without a readable one nor an ObjectId id.
_NEVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def audit_fallbacks(doc: D.Doc) -> tuple[D.Doc, D.Doc]:
    """An audit document with its id, and what its required fields read as when another
    program wrote them with a wrong type or none (`core.lenient`): `at` as its id's time, the
    actor and action as their text ("?" for none); other fields as their defaults."""
    oid, actor, action = doc.get("_id"), doc.get("actor"), doc.get("action")
    fallbacks = {
        "at": oid.generation_time if isinstance(oid, ObjectId) else _NEVER,
        "actor": "?" if actor is None else str(actor),
        "action": "?" if action is None else str(action),
    }
    return doc | {"id": str(oid)}, fallbacks
