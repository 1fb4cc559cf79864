"""Dependencies between jobs, in the runtime (see `core.flows` and `storage.job_flows`).

- `ended(doc)`: a job with dependents reached a terminal status (its final write, a kill, a
  recovery): count it for the jobs waiting on it, and wake the claim loop when some are
  released. It runs right after that write, in the process that made it.
- `register(stored, after)`: a job was scheduled after `after`: mark them as having dependents,
  then settle at once those that have already ended (one that ends meanwhile is settled twice,
  harmlessly: each step counts a dependency once).
- `sweep(now)`: the safety net of the recovery sweep: jobs waiting for longer than
  `worker_timeout` whose dependencies ended unnoticed (a worker that died between its final
  write and `ended`, a dependent registered on a running job whose final write could not know
  it) are settled; a dependency that no longer exists counts as ended, "deleted" (a failure).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from ..core import flows as F
from ..core.clock import Clock
from ..core.errors import JobNotFoundError
from ..core.log import EventLog
from ..storage import Storage

Doc = dict[str, Any]


class Flows:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        log: EventLog,
        wake: Callable[[], None],
        worker_timeout: float,
    ) -> None:
        self.jobs = storage.jobs
        self.produce = storage.producer
        self.clock = clock
        self.log = log
        self.wake = wake
        self.worker_timeout = worker_timeout

    async def ended(self, doc: Doc) -> None:
        if not doc.get("has_dependents") or doc.get("status") not in F.ENDED:
            return
        try:
            released = await self.jobs.settle_dependents(
                doc["_id"], str(doc["status"]), self.clock.now()
            )
        except PyMongoError as exc:  # the sweep settles it
            self.log.warning("dependents_not_settled", job_id=str(doc["_id"]), error=str(exc)[:200])
            return
        if released:
            self.log.info("dependents_released", job_id=str(doc["_id"]), count=released)
            self.wake()

    async def check_exist(self, ids: list[ObjectId], name: str) -> None:
        """Every dependency exists (so that no cycle can be made); else JobNotFoundError."""
        found = await self.produce.run(lambda _: self.jobs.statuses(ids))
        missing = [str(i) for i in ids if i not in found]
        if missing:
            raise JobNotFoundError(
                f"job {name!r}: after names jobs that do not exist: {', '.join(missing)} "
                "(a job can only wait on jobs scheduled before it)"
            )

    async def register(self, after: list[ObjectId]) -> int:
        """Mark `after` as having dependents, then settle those already ended. Returns how
        many jobs that released."""
        if not after:
            return 0
        await self.produce.run(lambda _: self.jobs.mark_dependents(after))
        statuses = await self.produce.run(lambda _: self.jobs.statuses(after))
        released = 0
        for dep, status in statuses.items():
            if status in F.ENDED:
                released += await self.produce.run(
                    lambda _, dep=dep, status=status: self.jobs.settle_dependents(  # type: ignore[misc]
                        dep, status, self.clock.now()
                    )
                )
        return released

    async def sweep(self, now: dt.datetime) -> int:
        cutoff = now - dt.timedelta(seconds=self.worker_timeout)
        waiting = await self.jobs.stale_waiting(cutoff)
        pending = {
            ObjectId(dep)
            for doc in waiting
            for dep, state in (doc.get("deps") or {}).items()
            if state == "waiting" and ObjectId.is_valid(dep)
        }
        if not pending:
            return 0
        statuses = await self.jobs.statuses(sorted(pending))
        released = 0
        for dep in sorted(pending):
            status = statuses.get(dep, "deleted")
            if status in F.ENDED or status == "deleted":
                released += await self.jobs.settle_dependents(dep, status, now)
                self.log.warning("dependents_settled_late", job_id=str(dep), status=status)
        if released:
            self.wake()
        return released
