"""What this worker runs, compared with what the database says it runs.

ONE query (`running_on(me)`) serves two purposes:
- kill delivery across processes: `kill_job` anywhere writes `kill_requested_at` on the job; the
  owning worker reads it here every `poll_interval` while it runs jobs and fires the handler's
  abort signal (reason "killed") — never a query per job;
- reconciliation: a job recorded as running on this worker that it does not run (its final
  write failed for good, or a claim's reply was lost) is recovered like a crashed run, once its
  run is older than `worker_timeout` (a claim in flight is never mistaken for a stray). This
  runs at least every `worker_timeout / 2` while the worker runs jobs; while it is idle, the
  recovery sweep does it with the query it makes anyway (no query of its own).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from pymongo.errors import PyMongoError

from ..core.clock import Clock, monotonic_of, sleep_or_wake
from ..core.log import EventLog
from ..storage import Storage
from ..storage.transient import describe
from .recovery import Recovery
from .worker import Worker


class OwnershipWatcher:
    def __init__(
        self, worker: Worker, storage: Storage, recovery: Recovery, clock: Clock, log: EventLog
    ) -> None:
        self.worker = worker
        self.jobs = storage.jobs
        self.recovery = recovery
        self.clock = clock
        self.log = log
        self.interval = worker.settings.poll_interval
        self.worker_timeout = worker.settings.worker_timeout
        self.stop_event = asyncio.Event()
        self._last_reconcile: dt.datetime | None = None

    async def loop(self) -> None:
        while not self.stop_event.is_set():
            now = self.clock.now()
            reconcile_due = self._last_reconcile is None or (
                (now - self._last_reconcile).total_seconds() >= self.worker_timeout / 2
            )
            if self.worker.runs or self.worker.unstarted:  # idle: the sweep reconciles
                try:
                    await self.check(now, reconcile=reconcile_due)
                except (PyMongoError, TimeoutError) as exc:  # an outage: the next check retries
                    self.log.warning(
                        "kill_check_failed", worker_id=self.worker.worker_id, error=describe(exc)
                    )
            await sleep_or_wake(self.clock, self.stop_event, self.interval)

    async def check(self, now: dt.datetime, reconcile: bool = True) -> int:
        """Deliver kill requests; reconcile strays. Returns the kills delivered."""
        me = self.worker.worker_id
        if not me:
            return 0
        if reconcile:
            self._last_reconcile = now
        delivered = 0
        cutoff = now - dt.timedelta(seconds=self.worker_timeout)
        requeued: set[str] = set()  # a batch claim's jobs share one run id: kept till the end
        listed_at = monotonic_of(self.clock)
        listing = await self.jobs.running_on(me)
        complete = True
        for doc in listing:
            if self.worker.worker_id != me:
                # it gave its runs up meanwhile (and may be registering afresh): they are the
                # recovery's now, and a write made here would record no owner for their hooks
                requeued.clear()
                complete = False
                break
            if self.worker.owns(doc):
                run = self.worker.runs.get(str(doc["_id"]))
                if run is not None and doc.get("has_dependents"):  # scheduled after it since
                    run.doc["has_dependents"] = True  # its claim: its end settles them
                if doc.get("kill_requested_at") is not None and self.worker.abort(
                    str(doc["_id"]), "killed"
                ):
                    delivered += 1
            elif doc.get("run_id") in self.worker.unstarted:  # its claim's reply was lost
                await self.recovery.reconcile(doc, started=False)
                requeued.add(str(doc["run_id"]))
            elif reconcile and doc["run_started_at"] < cutoff:
                await self.recovery.reconcile(doc)
        self.worker.unstarted.difference_update(requeued)
        if complete:  # a lost claim none of them carries never landed
            seen = {str(doc.get("run_id")) for doc in listing}
            self.worker.claims.forget_absent(seen, listed_at, self.worker_timeout)
        return delivered
