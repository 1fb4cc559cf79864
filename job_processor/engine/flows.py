"""Dependencies between jobs, in the runtime (see `core.flows` and `storage.job_flows`).

- `ended(doc)`: a job with dependents reached a terminal status (its final write, a kill, a
  recovery): count it for the jobs waiting on it, and wake the claim loop when some are
  released. It runs right after that write, in the process that made it.
- `register(stored, after)`: a job was scheduled after `after`: mark them as having dependents,
  then settle at once those that have already ended (one that ends meanwhile is settled twice,
  harmlessly: each step counts a dependency once).
- `sweep(now)`: the safety net of the recovery sweep, from the dependencies' side: an ended
  job with dependents that some waiting job has not counted (its process died between its
  final write and `ended`) is settled, then marked settled, and only then may it expire (its
  final write held the expiry back). A slower pass over the waiting jobs settles dependencies
  that no longer exist (deleted by hand) as "deleted" (a failure).

A final write knows when jobs were scheduled after its job since the claim: it does not apply
over `has_dependents` it was not told of (`core.documents.end_filter`), and is made again
knowing it, so `ended` runs for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from ..core import flows as F
from ..core.clock import Clock
from ..core.errors import JobNotFoundError
from ..core.log import EventLog
from ..core.retention import Retention
from ..core.status import JobStatus
from ..storage import Storage
from ..storage.job_flows import registering
from ..storage.transient import describe

Doc = dict[str, Any]
S = JobStatus

#: How long after its end a dependency is left to the process that ended it (it settles its
#: dependents right after its final write) before a sweep looks at it.
GRACE = 5.0

#: How long after a job scheduled after a dependency marked it no sweep marks that dependency
#: settled (the job may not be written yet: its producer's retries included, 10 s by default).
MARK_GRACE = 60.0

#: The slow pass over waiting jobs (dependencies deleted by hand) runs every this many sweeps
#: (every 5 minutes at the default worker_timeout), and at the first.
SLOW_PASS = 20


class Flows:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        log: EventLog,
        wake: Callable[[], None],
        worker_timeout: float,
        keep_of: Callable[[str], Retention | None] = lambda name: None,
    ) -> None:
        self.jobs = storage.jobs
        self.produce = storage.producer
        self.clock = clock
        self.log = log
        self.wake = wake
        self.worker_timeout = worker_timeout
        self.keep_of = keep_of
        self.pre_read: Callable[[], list[Doc] | None] = lambda: None
        """The flows' documents the recovery sweep's query already read, if it ran."""
        self._sweeps = 0
        self._slow_cursor: ObjectId | None = None

    async def ended(self, doc: Doc) -> None:
        if not doc.get("has_dependents") or doc.get("status") not in F.ENDED:
            return
        try:
            released = await self.jobs.settle_dependents(
                doc["_id"], str(doc["status"]), self.clock.now()
            )
        except PyMongoError as exc:  # the sweep settles it
            self.log.warning("dependents_not_settled", job_id=str(doc["_id"]), error=describe(exc))
            return
        if released:
            self.log.info("dependents_released", job_id=str(doc["_id"]), count=released)
            self.wake()

    async def check_exist(self, ids: list[ObjectId], name: str) -> None:
        """Every dependency exists (so that no cycle can be made); else JobNotFoundError."""
        missing = await self.missing(ids)
        if missing:
            raise JobNotFoundError(
                f"job {name!r}: after names jobs that do not exist: "
                f"{', '.join(map(str, missing))} (a job can only wait on jobs scheduled before it)"
            )

    async def missing(self, ids: list[ObjectId]) -> list[ObjectId]:
        """Those of `ids` that are not jobs (one read)."""
        found = await self.produce.run(lambda _: self.jobs.statuses(ids))
        return [i for i in ids if i not in found]

    async def mark(self, after: list[ObjectId]) -> None:
        """Before the jobs that wait on `after` are written: mark them as having dependents, so
        that if settling them after the insert fails (an outage), a worker's sweep finds them
        (ended with dependents, not seen settled) and settles them; and their final write holds
        their expiry back. A mark with no job written after it (the insert failed) costs the
        sweep one look."""
        await self.produce.run(lambda _: self.jobs.mark_dependents(after, self.clock.now()))

    async def register(
        self, after: list[ObjectId], waiting: Mapping[ObjectId, Sequence[ObjectId]] | None = None
    ) -> int:
        """Mark `after` as having dependents, then settle those already ended (`waiting`: the
        jobs just scheduled after them, each with its dependencies: one waiting on many that
        finished counts them in a few updates). Returns how many of them had ended (then
        the jobs waiting on them have changed: counted, released, skipped or errored)."""
        return await self.produce.run(
            lambda _: self.jobs.register_waiting(after, self.clock.now(), waiting)
        )

    async def sweep(self, now: dt.datetime) -> int:
        """Ended jobs with dependents that no sweep has seen settled: those some waiting job
        has not counted are settled now (a worker that died between its final write and
        settling them), those counted but not released are released (a death between the two
        updates); then all are marked settled (four commands after the query's, which reads at
        most 1,000 documents). Every
        `SLOW_PASS` sweeps, a slower pass over waiting jobs (200 at a time, going on where the
        last stopped) settles the dependencies that no longer exist, as "deleted"."""
        released = 0
        # the ones that ended a moment ago are being settled by their own process: next sweep
        cutoff = now - dt.timedelta(seconds=GRACE)
        docs = self.pre_read()
        if docs is None:  # a sweep on its own
            unsettled, skipped = await self.jobs.flow_attention()
        else:
            unsettled, skipped = self.jobs.split_flow(docs)
        ended = [
            d
            for d in unsettled
            if not isinstance(d.get("ended_at"), dt.datetime) or d["ended_at"] <= cutoff
        ]
        if ended:
            # a waiting job created since the end, within the grace, is being registered: its
            # process settles it (its dependency stays in this query until it has)
            ends = {d["_id"]: d.get("ended_at") for d in ended}
            uncounted, registering = await self.jobs.uncounted(list(ends), ends, cutoff)
            ids = [d["_id"] for d in ended if d["_id"] not in registering]
            late_ends = [(d["_id"], str(d.get("status"))) for d in ended if d["_id"] in uncounted]
            if late_ends:
                released += await self.jobs.settle_all(late_ends, now)
                for dep, _ in late_ends:
                    self.log.warning("dependents_settled_late", job_id=str(dep))
            # counted but not released (the process died between the two updates): released
            # here, before they leave this query for good
            late = await self.jobs.release_counted(ids, now)
            if late:
                self.log.warning("dependents_released_late", jobs=late)
            released += late
            marked_before = now - dt.timedelta(seconds=MARK_GRACE)
            await self.jobs.mark_settled(ids, marked_before, {d["_id"]: d for d in ended})
        await self._expire_skipped(skipped)
        self._sweeps += 1
        if self._sweeps % SLOW_PASS == 1:
            released += await self._deleted_dependencies(now)
        if released:
            self.wake()
        return released

    async def _expire_skipped(self, skipped: list[Doc]) -> None:
        """Jobs skipped by a failed dependency, or by an exclusive conflict where their
        retention was not known (a JobClient without `jobs=`, an admin's new job), get their
        name's retention here (the update that skipped them does not know it): one query, and
        one update per name (from the latest end among them)."""
        by_name: dict[str, list[Doc]] = {}
        for doc in skipped:
            by_name.setdefault(str(doc.get("name")), []).append(doc)
        for name, docs in by_name.items():
            keep = self.keep_of(name)
            if keep is None:  # a name this process does not define: one that does decides
                continue
            ends = [d["ended_at"] for d in docs if isinstance(d.get("ended_at"), dt.datetime)]
            expires = keep.expires_at(S.SKIPPED, max(ends)) if ends else None
            await self.jobs.set_expiry([d["_id"] for d in docs], expires)

    async def _deleted_dependencies(self, now: dt.datetime) -> int:
        waiting = await self.jobs.stale_waiting(self._slow_cursor)
        self._slow_cursor = waiting[-1]["_id"] if len(waiting) == 200 else None  # else: wrap
        cutoff = now - dt.timedelta(seconds=GRACE)
        uncounted = [
            (doc, ObjectId(dep))
            for doc in waiting
            for dep, state in (doc.get("deps") or {}).items()
            if state == "waiting" and ObjectId.is_valid(dep)
        ]
        released = 0
        # one created within the grace is being registered: its process settles, releases it
        ready = [d["_id"] for d in waiting if _counted_all(d) and not registering(d, "any", cutoff)]
        if ready:  # counted, never released, their dependencies already seen settled
            released = await self.jobs.release_ready(ready, now)
            if released:
                self.log.warning("dependents_released_late", jobs=released)
        if not uncounted:
            return released
        found = await self.jobs.ends(sorted({dep for _, dep in uncounted}))
        late: set[tuple[ObjectId, str]] = set()
        for doc, dep in uncounted:  # one that just ended: its process settles it
            status, ended = found.get(dep, ("deleted", None))
            if status == "deleted" or (
                status in F.ENDED
                and (ended is None or ended <= cutoff)
                and not registering(doc, ended, cutoff)
            ):
                late.add((dep, status))
        late_ends = sorted(late)
        if late_ends:
            released += await self.jobs.settle_all(late_ends, now)
            for dep, status in late_ends:
                self.log.warning("dependents_settled_late", job_id=str(dep), status=status)
        return released


def _counted_all(doc: Doc) -> bool:
    """A waiting job whose dependencies are all counted (left waiting by a process that died
    between counting and releasing it)."""
    waiting_on = doc.get("waiting_on")
    return isinstance(waiting_on, int) and waiting_on <= 0
