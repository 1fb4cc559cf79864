"""The worker document and its heartbeat (the recovery sweep has its own loop)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core.clock import Clock, monotonic_of, sleep_or_wake
from ..core.documents import Doc
from ..core.log import EventLog
from ..storage import Storage
from ..storage.transient import describe
from .looplag import LoopLag
from .recovery import Recovery, claim_margin
from .threads import USER_THREADS
from .upkeep import Registry, Trimmer
from .worker import Worker

#: Seconds a failed start gives the removal of the worker document it wrote.
UNREGISTER_BUDGET = 5.0


class Heartbeat:
    """Keeps this process's worker document fresh, and reads the paused names in the same round
    trip (pause/resume keep them on every worker document).

    A worker that finds its own document gone (another worker declared it dead) or whose last
    successful heartbeat is older than `worker_timeout` abandons its runs (writes nothing for
    them: recovery owns them now) and registers afresh under a new id."""

    def __init__(
        self,
        storage: Storage,
        worker: Worker,
        recovery: Recovery,
        clock: Clock,
        log: EventLog,
        worker_tags: list[str] | None,
        instance_id: str | None,
        registry: Registry | None = None,
    ) -> None:
        self.workers = storage.workers
        self.registry = registry
        """Definitions registry and paused names (registered at start, refreshed per sweep,
        paused names read once per heartbeat)."""
        self.worker = worker
        self.recovery = recovery
        self.clock = clock
        self.log = log
        self.worker_tags = worker_tags
        self.instance_id = instance_id
        self.settings = worker.settings
        self.stop_event = asyncio.Event()
        self.trimmer: Trimmer | None = None
        """Set by the processor: the pass behind keep_finished / keep_failed counts."""
        self._last_ok: float | None = None
        """When the last successful heartbeat was sent, on the clock's `monotonic()`: the
        lease is measured from it, so that no step of this host's wall clock lengthens it (the
        `last_seen` it wrote is the wall time of that same moment)."""
        self._gave_up = False
        """The lease expired and the runs were given up: register afresh (a beat that started
        before and landed after would otherwise keep the id, with its jobs left running)."""
        worker.trusted = self.trusted
        worker.claimable = self.claimable
        worker.lease_left = self.lease_left
        worker.claims.release = self._release_unstarted
        self._stuck_written = 0
        """The count of stuck plain-def calls on the worker document (`engine.threads`)."""
        self.crashed: str | None = None
        """Set when this process's claim loop and cron scheduler crashed (`Runtime`): written
        on the worker document at the next beat, so that `health` and `status` say it while
        the heartbeat still runs (a processor embedded in an app that does not stop)."""
        self._crash_written = False
        self.lag = LoopLag(
            clock,
            log,
            self.settings.loop_lag_warning,
            self.settings.worker_timeout,
            lambda: list(worker.runs.values()),
            lambda: worker.worker_id,
        )
        """How late the heartbeat's timer wakes: a handler blocking the event loop."""
        worker.loop_blocked = self.lag.cause

    async def register(self) -> str:
        """A new worker document carrying the paused names (read before and after it exists,
        so that a pause or resume made meanwhile is not missed: see
        `WorkerStore.align_paused`). The digests of its crons' zones' rules are computed
        first, in a thread (tens of ms a zone, once per process: not on the event loop of the
        app it runs in, and not between the time it records and its insert)."""
        zone_rules = (
            await asyncio.to_thread(self.registry.zone_rules) if self.registry is not None else None
        )
        now, sent = self.clock.now(), monotonic_of(self.clock)
        before = await self.registry.paused_names() if self.registry is not None else set()
        doc = D.new_worker(
            now,
            self.worker_tags,
            self.instance_id,
            self.settings.concurrency,
            self.worker.names,
            self.settings.worker_timeout,
            paused=sorted(before),
            definitions=self.registry.fingerprints() if self.registry is not None else None,
            crons=self.registry.cron_names() if self.registry is not None else None,
            zone_rules=zone_rules,
        )
        await self.workers.register(doc)
        self._stuck_written = 0  # a new document: written again at the next beat if any
        self._crash_written = False
        self.worker.worker_id = doc["_id"]
        try:
            if self.registry is not None:
                await self.registry.register(doc["_id"], now)
                after = await self.registry.paused_names()
                await self.workers.align_paused(doc["_id"], before, after)
                self.worker.paused = self.registry.note_paused(frozenset(after), doc["_id"])
            later, sent_later = self.clock.now(), monotonic_of(self.clock)
            if sent_later - sent >= self.settings.heartbeat_interval:
                # a slow registration (many definitions, a slow server): its last_seen is
                # already old; beat now, or this worker would look dead, and declare itself so
                await self.workers.beat(doc["_id"], later, None)
                sent = sent_later
        except BaseException:
            # a start that fails here leaves no worker behind (it looked alive for a while)
            gone = asyncio.ensure_future(self.workers.unregister(doc["_id"]))
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(gone), UNREGISTER_BUDGET)
            raise
        self._last_ok = sent
        self._gave_up = False
        self.log.info(
            "worker_registered",
            worker_id=doc["_id"],
            instance_id=self.instance_id,
            tags=self.worker_tags,
        )
        return str(doc["_id"])

    async def unregister(self) -> None:
        await self.workers.unregister(self.worker.worker_id)
        self.log.info("worker_stopped", worker_id=self.worker.worker_id)

    def _age(self) -> float:
        """Seconds since the last successful heartbeat was sent (0 before the first)."""
        if self._last_ok is None:
            return 0.0
        return monotonic_of(self.clock) - self._last_ok

    def trusted(self) -> bool:
        """Whether this worker's registration holds: it has an id, and its last heartbeat is
        recent enough that no other worker can have declared it dead (True before the first
        registration: there is nothing to be declared dead yet)."""
        if self._last_ok is None:
            return True
        return bool(self.worker.worker_id) and self._age() <= self.settings.worker_timeout

    def lease_left(self) -> float:
        """Seconds until other workers may declare this one dead (its last heartbeat plus
        worker_timeout); the whole worker_timeout before the first."""
        return max(0.0, self.settings.worker_timeout - self._age())

    def claimable(self) -> bool:
        """`trusted`, with a margin: no claim is made, nor a claimed job started, in the last
        `claim_margin` seconds of the lease. A claim that lands just before the lease ends
        and whose reply comes after it is never started here, but a sweep may already have
        recorded it as crashed (it cannot know the run never started): the margin keeps
        that to claims whose round trip outlasts it."""
        if self._last_ok is None:
            return True
        lease = self.settings.worker_timeout - claim_margin(self.settings)
        return bool(self.worker.worker_id) and self._age() <= lease

    async def lease_watch(self) -> None:
        """Give the runs up once the last successful heartbeat is worker_timeout old, the time
        from which other workers may recover them, even while MongoDB does not answer (the
        heartbeat, held up in a beat, would only see it when MongoDB is back)."""
        while not self.stop_event.is_set():
            wait = self.settings.heartbeat_interval
            if self._last_ok is not None and self.worker.runs:
                left = self.settings.worker_timeout - self._age()
                if left < 0:  # the sweeps' own predicate (older than worker_timeout)
                    self.worker.abandon_all("heartbeat_stale")
                    self._gave_up = True  # the next tick registers afresh, whatever its beat
                else:
                    wait = min(wait, max(left, 0.001))
            await sleep_or_wake(self.clock, self.stop_event, wait)

    async def _release_unstarted(self, doc: Doc, why: str) -> Any:
        return await self.recovery.reconcile(doc, started=False, why=why)

    async def loop(self) -> None:
        while not self.stop_event.is_set():
            started = self.clock.now()
            try:
                await self.tick()
            except PyMongoError as exc:
                self.log.warning(
                    "heartbeat_failed", worker_id=self.worker.worker_id, error=describe(exc)
                )
            # a beat held up by an outage wrote the time it started: beat again at once, so
            # that no one reads this worker as silent since then
            took = (self.clock.now() - started).total_seconds()
            wait = (
                0.0
                if took >= self.settings.heartbeat_interval
                else self.settings.heartbeat_interval
            )
            await self.lag.sleep(self.stop_event, wait)  # and how late it wakes

    async def tick(self) -> None:
        """One round trip: this worker is alive, and which names are paused (read back from
        its own document, which pause/resume keep up to date)."""
        if not self.worker.worker_id:  # declared dead, and not registered again yet
            await self.register()
            self.worker.wake.set()
            return
        now, sent = self.clock.now(), monotonic_of(self.clock)
        stale = self._last_ok is not None and sent - self._last_ok > self.settings.worker_timeout
        stuck = USER_THREADS.stuck
        also: dict[str, int | str] | None = (
            {"stuck_threads": stuck} if stuck != self._stuck_written else None
        )
        if self.crashed is not None and not self._crash_written:
            also = (also or {}) | {"crashed": self.crashed}
        paused = await self.workers.beat(self.worker.worker_id, now, also)
        if paused is None or stale or self._gave_up:
            # Others may already have recovered our jobs: stop touching them, start afresh.
            why = "worker_document_missing" if paused is None else "heartbeat_stale"
            cause = self.lag.cause()  # a blocked event loop, when one explains it
            self.log.error(
                "worker_declared_dead",
                worker_id=self.worker.worker_id,
                reason=why,
                **({"cause": cause} if cause else {}),
            )
            self.worker.abandon_all(why)
            given_up, self.worker.worker_id = self.worker.worker_id, ""  # no claim under it
            if paused is not None:
                await self.workers.unregister(given_up)
            await self.register()
            self.worker.wake.set()  # claim again, under the new id
            return
        self._last_ok = sent
        if self.worker.claims_held and self.claimable():  # a late beat made it in time
            self.worker.claims_held = False
            self.worker.wake.set()
        if also is not None and "crashed" in also:
            self._crash_written = True
        if also is not None and "stuck_threads" in also:
            self._stuck_written = stuck
            if stuck:
                self.log.warning(
                    "threads_stuck", worker_id=self.worker.worker_id, stuck_threads=stuck
                )
        before = self.worker.paused
        if self.registry is not None:
            self.worker.paused = self.registry.note_paused(paused, self.worker.worker_id)
        else:
            self.worker.paused = paused
        if before - self.worker.paused:  # resumed: claim now, not at the next idle poll
            self.worker.wake.set()
        if self.registry is not None and self.registry.older:
            # a live worker of an older version: a pause or resume made with its version's
            # CLI, dashboard or API is only in `<prefix>paused` (it read that every heartbeat)
            await self.check_paused()

    async def check_paused(self) -> None:
        """The safety net behind pause and resume: one read of `<prefix>paused`. A pause or
        resume stored there whose update of the worker documents failed (the operator's
        process lost MongoDB between the two) is applied to this worker's document, as a
        difference, then read again so that a pause or resume made meanwhile stands."""
        worker_id = self.worker.worker_id
        if self.registry is None or not worker_id:
            return
        stored = await self.registry.paused_names()
        held = set(self.worker.paused)
        if stored == held:
            return
        self.log.warning(
            "paused_names_repaired",
            worker_id=worker_id,
            paused=sorted(stored - held),
            resumed=sorted(held - stored),
        )
        await self.workers.align_paused(worker_id, held, stored)
        after = await self.registry.paused_names()
        await self.workers.align_paused(worker_id, stored, after)
        self.worker.paused = self.registry.note_paused(frozenset(after), worker_id)
        if held - after:
            self.worker.wake.set()

    async def after_sweep(self, now: dt.datetime) -> None:
        """What runs with the sweep (in the recovery's loop, not the heartbeat's): the
        registry's `last_seen` (every few minutes: it tells which names were served lately),
        and its rows written by a worker no longer live (`Registry.refresh`)."""
        if self.registry is not None and await self.registry.maybe_refresh(
            now, live=self.recovery.live, worker_id=self.worker.worker_id
        ):
            await self.check_paused()  # on the same period
        if self.trimmer is not None:  # count retentions (every few minutes)
            await self.trimmer.maybe_run(now)
