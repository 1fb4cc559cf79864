"""Cron tasks on the jobs collection: those no worker started within their margin recorded as
missed, and the pending tasks of a removed cron deleted. A mixin of `JobStore`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..core.status import JobStatus, check_transition
from .compat import ServerProfile, all_docs
from .job_flows import FlowRecords, with_expiry

S = JobStatus
Doc = dict[str, Any]

#: What a cron task recorded as missed loses (its keys: a later slot may run).
UNSET_MISSED = {"exclusive_key": "", "dedup_key": "", "claim_name": ""}


def pending_tasks_of(names: list[str]) -> Doc:
    """The pending tasks of these crons."""
    return {"type": "cron_task", "status": S.PENDING.value, "name": {"$in": names}}


def missed_tasks(now: dt.datetime) -> Doc:
    """Cron tasks that never started and are past their start deadline (a retry of a task
    that did start is not one)."""
    return {
        "type": "cron_task",
        "status": S.PENDING.value,
        "start_deadline": {"$lt": now},
        "attempt": 0,
    }


def _missed(now: dt.datetime) -> Doc:
    return {"status": S.SKIPPED.value, "skip_reason": "missed", "ended_at": now, "updated_at": now}


class CronTasks(FlowRecords):
    coll: Any
    profile: ServerProfile

    async def expire_missed_cron_tasks(
        self, now: dt.datetime, expiry: Mapping[str, dt.datetime | None] | None = None
    ) -> int:
        """Pending cron tasks that never started and are past their start deadline never run
        late: skipped, "missed". (A retry of a task that did start is not expired.) `expiry`:
        cron name -> when its skipped tasks may be deleted (its retention); without it, every
        cron's tasks, kept."""
        check_transition(S.PENDING, S.SKIPPED)
        if expiry is None:
            res = await self.coll.update_many(
                missed_tasks(now),
                {"$set": _missed(now), "$unset": UNSET_MISSED},
            )
            return int(res.modified_count)
        return sum((await self.expire_missed_by_name(now, expiry)).values())

    async def expire_missed_by_name(
        self, now: dt.datetime, expiry: Mapping[str, dt.datetime | None]
    ) -> dict[str, int]:
        """`expire_missed_cron_tasks` for these crons (name -> its skipped tasks' expiry):
        how many tasks each had expired."""
        check_transition(S.PENDING, S.SKIPPED)
        expired: dict[str, int] = {}
        for name, expires_at in expiry.items():
            skip = {"$set": _missed(now), "$unset": UNSET_MISSED}
            for query, update in with_expiry(
                missed_tasks(now) | {"name": name}, skip, expires_at, self.profile
            ):
                res = await self.coll.update_many(query, update)
                if res.modified_count:
                    expired[name] = expired.get(name, 0) + int(res.modified_count)
        return expired

    async def delete_pending_tasks_of(self, names: list[str], now: dt.datetime) -> int:
        """Pending tasks of crons that were removed; the jobs scheduled after one of them see
        it "deleted" at once (a failure: flows.md), not at a sweep's slow pass."""
        query = pending_tasks_of(names)
        # every pending one (a job may be scheduled after one before the delete), then those
        # really gone: one claimed meanwhile runs, its dependents wait for its end
        deleted = 0
        for _ in range(10):  # a task inserted after a read (a replica firing it): next round
            read = [d["_id"] for d in await all_docs(self.coll.find(query, {"_id": 1}))]
            if not read:
                break
            res = await self.coll.delete_many(query | {"_id": {"$in": read}})
            deleted += int(res.deleted_count)
            left = await self.statuses(read)
            gone = [i for i in read if i not in left]
            if gone:
                await self.settle_all([(i, "deleted") for i in gone], now)
        return deleted
