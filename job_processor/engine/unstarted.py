"""Claims a worker took but does not start: put back unstarted (pending again, no attempt
used), by the heartbeat's `release` (`Recovery.reconcile(started=False)`).

A claim is not started when it returned while its worker was being declared dead, in its
lease's last moments, or once a stop began (`Worker.start_claimed`). Until it is put back, its
run id is among `run_ids`, which the recovery sweep and the ownership watcher read: a job
running under one of them here never started, and is re-queued as never run too. A release that
fails (MongoDB unreachable) is tried again at the claim loop's next round, and at a stop for
what is left of the worker's lease (at least a second) once the loop has ended
(`release_at_stop`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..core.log import EventLog
from ..storage.transient import TRANSIENT, describe, ride_out

Doc = dict[str, Any]


class UnstartedClaims:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.pending: list[tuple[Doc, str]] = []
        """Claims not started and not put back yet, each with why (the run's recorded error)."""
        self.run_ids: set[str] = set()
        """Run ids of claims not started: those pending here, and those whose claim's reply was
        lost and could not be read back (reconciliation re-queues them, no attempt used)."""
        self.lost: dict[str, float] = {}
        """Run ids of claims whose reply was lost and not read back, with when (monotonic
        seconds): dropped once a listing of this worker's running jobs made well after shows
        none carrying them (the claim never landed)."""
        self.release: Callable[[Doc, str], Awaitable[Any]] | None = None
        """Set by the heartbeat: re-queue a job claimed but not started (no attempt used)."""

    def lost_claim(self, run_id: str, at: float) -> None:
        """A claim under `run_id` may have landed, unread (its jobs are put back unstarted)."""
        self.run_ids.add(run_id)
        self.lost[run_id] = at

    def forget_absent(self, listed: set[str], listed_at: float, grace: float) -> None:
        """After a complete listing of this worker's running jobs, made at `listed_at`: a lost
        claim none of them carries, lost at least `grace` before it (a write in flight has
        landed by then), never landed; one whose jobs were put back is done with too."""
        for run_id, at in list(self.lost.items()):
            if run_id not in self.run_ids:  # its jobs were found and put back
                del self.lost[run_id]
            elif run_id not in listed and listed_at - at >= grace:
                del self.lost[run_id]
                if not any(str(d.get("run_id")) == run_id for d, _ in self.pending):
                    self.run_ids.discard(run_id)

    def keep(self, doc: Doc, why: str) -> None:
        """`doc` was claimed but is not started: put back at the next `release_pending`."""
        self.pending.append((doc, why))
        self.run_ids.add(str(doc.get("run_id")))

    async def release_pending(self) -> None:
        """Re-queue the claims that were not started, oldest first. One that cannot be written
        now (MongoDB unreachable) stays, with those after it, for the next call; its run id
        stays among `run_ids` meanwhile."""
        while self.pending:
            doc, why = self.pending[0]
            if self.release is not None:
                await self.release(doc, why)  # raises while MongoDB is unreachable
            self.pending.pop(0)
            run_id = str(doc.get("run_id"))
            if not any(str(d.get("run_id")) == run_id for d, _ in self.pending):
                self.run_ids.discard(run_id)  # a batch's jobs share one: kept for the others

    async def release_at_stop(self, budget: float, fields: Callable[[Doc], dict[str, Any]]) -> None:
        """At a stop, once the claim loop has ended: what is pending is put back, a failed
        release tried again for up to `budget` seconds (the loop that would have retried it is
        gone). One left is logged (`claim_release_failed`); the recovery of this worker's id,
        once it is gone, treats it as a crashed run."""
        try:
            await ride_out(self.release_pending, budget)
        except TRANSIENT as exc:
            for doc, _ in self.pending:
                self.log.error("claim_release_failed", error=describe(exc), **fields(doc))
