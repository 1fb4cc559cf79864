"""A sync subscriber's wait: `emit(..., sync_timeout=...)` polls the event's sync delivery
jobs until they end, and says which failed for good (`EventDeliveryError`) or which did not end
in time (`EventTimeoutError`, naming those that failed meanwhile too)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from pymongo.errors import PyMongoError

from ..core import event_documents as E
from ..core.clock import Clock, FakeClock
from ..core.errors import EventDeliveryError, EventTimeoutError
from ..core.models import Delivery, Event
from ..core.status import TERMINAL, JobStatus
from ..storage import Storage
from ..storage.transient import is_transient
from .queries import event_id_of

Doc = dict[str, Any]
S = JobStatus
ENDED = frozenset(s.value for s in TERMINAL)
FAILED = frozenset({S.ERRORED.value, S.KILLED.value})


def first_line(text: str | None) -> str:
    return (text or "").splitlines()[0][:300] if text else ""


class SyncWait:
    """The sync waits of one event bus: its storage, clock and `worker_timeout` (a hint on
    timeouts: whether a live worker serves the delivery's name)."""

    def __init__(self, storage: Storage, clock: Clock, worker_timeout: float) -> None:
        self.storage = storage
        self.clock = clock
        self.worker_timeout = worker_timeout

    def _left(self, deadline: dt.datetime, real_deadline: float) -> float:
        """Seconds left of a sync wait: by the processor's clock, and by real time (the
        in-memory processor's FakeClock does not move while emit waits)."""
        by_clock = (deadline - self.clock.now()).total_seconds()
        return min(by_clock, real_deadline - time.monotonic())

    async def wait(self, event: Event, targets: list[str], wait: float, made: bool = True) -> None:
        """Until every sync delivery has ended (polling, 20 ms growing to 0.5 s), within `wait`
        seconds in all: each read is bounded by what remains, and one that meets an outage
        counts as "not yet". Once the fan-out is complete (`made`, or the event says so), a
        delivery not found was deleted (retention: an event emitted again under its key long
        after): ended. Before, it is not made yet (a sweep completes the fan-out)."""
        keys = [E.delivery_key(event.id, t, None) for t in targets]
        deadline = self.clock.now() + dt.timedelta(seconds=wait)
        real_deadline = time.monotonic() + wait  # a FakeClock nobody moves (in memory)
        delay = 0.02
        docs: list[Doc] = []
        while True:
            remaining = self._left(deadline, real_deadline)
            try:
                async with self.storage.producer.bounded(max(remaining, 0.05)):
                    # whether the fan-out is done is read first: one completed after the
                    # read of the deliveries would make a delivery that read missed look deleted
                    done_before = made or await self._fanned_out(event.id)
                    docs = await self.storage.deliveries.by_keys(keys)
                    made = done_before
                pending = [d for d in docs if d["status"] not in ENDED]
                if not pending and (made or len(docs) == len(keys)):
                    break
            except (PyMongoError, TimeoutError) as exc:
                timed_out = isinstance(exc, TimeoutError) or getattr(exc, "timeout", False)
                if not is_transient(exc) and not timed_out:  # a bounded read ran out: retried
                    raise
            remaining = self._left(deadline, real_deadline)
            if remaining <= 0:
                raise await self._timed_out(event, docs, targets, wait)
            await nap(self.clock, min(delay, remaining))
            delay = min(delay * 1.5, 0.5)
        ended = {d["delivery_key"]: Delivery.of_job(d) for d in docs}
        by_target = {d.target: d for d in ended.values()}
        shown = {d.target for d in event.deliveries}  # and those a sweep made meanwhile
        event.deliveries = [by_target.get(d.target, d) for d in event.deliveries] + [
            d for d in by_target.values() if d.target not in shown
        ]
        failed = [d for d in ended.values() if d.status in FAILED]
        if failed:
            parts = [
                f"{d.target!r} {d.status} after {d.attempt} attempt(s): {first_line(d.error)}"
                for d in failed
            ]
            raise EventDeliveryError(
                f"event {event.name!r} {event.id}: sync subscriber "
                + "; ".join(parts)
                + " (recorded on its delivery job; replay with replay_event(event_id, "
                "subscribers=[...]) once fixed)",
                event.id,
                list(failed),
            )

    async def _fanned_out(self, event_id: str) -> bool:
        """Whether the event's fan-out is complete (an event removed meanwhile: nothing left
        to make)."""
        stored = await self.storage.events.get(event_id_of(event_id))
        return stored is None or stored.get("fanout") != "owed"

    async def _timed_out(
        self, event: Event, docs: list[Doc], targets: list[str], wait: float
    ) -> EventTimeoutError:
        now = self.clock.now()
        by_target = {(d.get("payload") or {}).get("target"): d for d in docs}
        parts = []
        waiting: list[object] = []
        failed = []  # those that failed for good meanwhile: said first
        for target in targets:
            d = by_target.get(target)
            if d is not None and d["status"] in FAILED:
                ended = Delivery.of_job(d)
                failed.append(
                    f"{target!r} {ended.status} after {ended.attempt} attempt(s): "
                    f"{first_line(ended.error)}"
                )
            if d is not None and d["status"] in ENDED:
                continue
            job_name = E.delivery_job_name(event.name, target)
            try:  # a hint only: never a wait past the timeout, nor an outage's error
                async with self.storage.producer.bounded(1.0):
                    served: list[Doc] | None = await self.storage.workers.serving(
                        job_name, now, self.worker_timeout
                    )
            except (PyMongoError, TimeoutError):
                served = None
            status = d["status"] if d is not None else "not known (MongoDB did not answer)"
            hint = (
                ""
                if served is None or served
                else f"; no live worker serves {job_name!r}: start one that declares it"
            )
            parts.append(f"{target!r} is {status}{hint}")
            if d is not None:
                waiting.append(Delivery.of_job(d))
        return EventTimeoutError(
            f"event {event.name!r} {event.id}: sync subscriber did not finish within "
            f"{wait:g}s: " + "; ".join(failed + parts) + " (the delivery goes on; see get_event)",
            event.id,
            waiting,
        )


async def nap(clock: Clock, seconds: float) -> None:
    """A pause of `seconds`, by the processor's clock or by real time, whichever ends first
    (a test's FakeClock moved by the test ends it; one nobody moves does not hold it). Any
    other clock: its own sleep (the sync JobClient drives this without an event loop)."""
    if not isinstance(clock, FakeClock):
        await clock.sleep(seconds)
        return
    naps = {
        asyncio.ensure_future(clock.sleep(seconds)),
        asyncio.ensure_future(asyncio.sleep(seconds)),
    }
    try:
        await asyncio.wait(naps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for nap in naps:
            nap.cancel()
