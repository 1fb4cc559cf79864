"""Waking up: a worker claims as soon as work is claimable, without polling fast.

Three sources feed one wake-up event per worker: in-process (`schedule_job` in the same process,
a retry's time), this change stream, and polling (`poll_interval`, always on). Jobs due later are
kept in `DueTimes`, one bounded list per worker: the idle worker sleeps until the earliest of them
(capped by its poll interval), so there is one timer per worker whatever the number of jobs.

The stream is an optimisation only. Where `watch()` is refused (a standalone server, mongomock)
it is switched off and polling carries on. Where the server answers `getMore` at once instead of
blocking, it is throttled to one `getMore` per `max_await`. On a server known not to block
(`ServerProfile.stream_waits`: nx-27017) with `max_await >= poll_interval` (the defaults: 10 s
and 2 s), such a stream could never wake the worker sooner than its poll: it is not opened, and
polling carries on. (Only the detected server decides that, never one quick answer: a real
server's stream answers at once after it resumes from a network error.)
An error while following it (history lost, an invalidate, a network error) reopens it and
wakes the worker once, since events may have been missed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from ..core.clock import Clock, as_utc, sleep_or_wake
from ..core.log import EventLog
from ..storage.transient import describe

WAKING_STATUSES = {"pending", "paused"}
#: Server error codes meaning "this server has no change streams" (not a replica set).
NO_STREAMS = {40573, 40324, 136}


def wakes_worker(change: dict[str, Any]) -> tuple[bool, dt.datetime | None]:
    """Does this change make a job claimable? Returns (wake, when): `when` is the due time when
    the event says so (a job scheduled for later), None for "now"."""
    op = change.get("operationType")
    if op in ("insert", "replace"):
        doc = change.get("fullDocument")
        if not isinstance(doc, dict):
            return True, None
        when = doc.get("scheduled_for")
        if isinstance(when, dt.datetime):
            return _waking(doc.get("status")), as_utc(when)
        return True, None  # servers that send no decodable document: wake, the claim decides
    if op == "update":
        described = change.get("updateDescription")
        if not described:
            return True, None  # not described (nx-27017): wake conservatively
        fields = described.get("updatedFields") or {}
        when = fields.get("scheduled_for")  # a retry (or a run-now): wake at its time
        moved = "due_ms" in fields and "status" not in fields  # run-now of a pending job
        return moved or _waking(fields.get("status")), (
            as_utc(when) if isinstance(when, dt.datetime) else None
        )
    return False, None


def _waking(status: Any) -> bool:
    """A claimable status (another program's write may hold a list or a document there:
    unhashable, never claimable, never an error that would stop the claim loop)."""
    return isinstance(status, str) and status in WAKING_STATUSES


class DueTimes:
    """The earliest due times this worker knows of, sorted and bounded (the latest are dropped:
    polling finds those). A killed or claimed-elsewhere job leaves a harmless early wake-up."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._times: list[dt.datetime] = []

    def __len__(self) -> int:
        return len(self._times)

    def add(self, when: dt.datetime) -> bool:
        """Remember `when` (once: a time asked for every claim round, a rate-full key's, must
        not crowd out the others); True if it is earlier than every time known before."""
        earliest = self._times[0] if self._times else None
        i = bisect.bisect_left(self._times, when)
        if i < len(self._times) and self._times[i] == when:
            return False
        self._times.insert(i, when)
        del self._times[self.limit :]
        return earliest is None or when < earliest

    def next_after(self, now: dt.datetime) -> dt.datetime | None:
        """The earliest time still to come (times that passed are dropped)."""
        i = bisect.bisect_right(self._times, now)
        del self._times[:i]
        return self._times[0] if self._times else None

    def passed(self, now: dt.datetime) -> bool:
        """Did a known due time pass (without being consumed)?"""
        return bool(self._times) and self._times[0] <= now


def refuses_streams(exc: BaseException) -> bool:
    """watch() itself was refused: the server has no change streams."""
    if isinstance(exc, NotImplementedError | AttributeError | TypeError):
        return True  # mongomock, or a driver without watch()
    if isinstance(exc, OperationFailure):
        text = str(exc).lower()
        return exc.code in NO_STREAMS or "replica set" in text or "not supported" in text
    return False


class ChangeStreamWaker:
    def __init__(
        self,
        store: Any,
        worker: Any,
        clock: Clock,
        log: EventLog,
        max_await: float = 10.0,
        poll_interval: float | None = None,
        stream_waits: bool = True,
    ) -> None:
        self.store = store
        self.worker = worker
        self.clock = clock
        self.log = log
        self.max_await = max_await
        self.poll_interval = poll_interval
        self.stream_waits = stream_waits
        """False where the server's getMore never waits for events (nx-27017): with
        `max_await >= poll_interval` the stream is then not opened (it would wake the worker no
        sooner than its poll)."""
        self.stop_event = asyncio.Event()
        self.blocking: bool | None = None
        """None until known; False where the server's getMore does not wait for events."""
        self.active = False
        self.reopened = 0

    def pointless(self) -> bool:
        """Would a stream on this server never wake the worker before its own poll?"""
        return (
            not self.stream_waits
            and self.poll_interval is not None
            and self.max_await >= self.poll_interval
        )

    async def loop(self) -> None:
        if self.pointless():
            self.blocking = False
            self.log.info(
                "change_stream_skipped",
                reason="this server's getMore does not wait for events, and the worker polls "
                "at least as often as the stream could be read",
                poll_interval=self.poll_interval,
                change_stream_max_await=self.max_await,
            )
            return  # polling carries on alone
        while not self.stop_event.is_set():
            try:
                stream = await self.store.watch(int(self.max_await * 1000))
            except Exception as exc:
                if refuses_streams(exc):
                    self.active = False
                    self.log.info("change_stream_unavailable", reason=str(exc)[:200])
                    return  # polling carries on alone
                if not isinstance(exc, PyMongoError):
                    raise
                self.log.warning("change_stream_failed", error=describe(exc))
                await sleep_or_wake(self.clock, self.stop_event, self.max_await)
                continue
            try:
                await self._follow(stream)
            except PyMongoError as exc:  # history lost, invalidate, network: reopen
                self.reopened += 1
                self.log.warning("change_stream_reopened", error=describe(exc))
                self.worker.wake.set()  # events may have been missed: claim once
                await sleep_or_wake(self.clock, self.stop_event, min(1.0, self.max_await))
            finally:
                self.active = False
                with contextlib.suppress(Exception):
                    await self.store.close_stream(stream)

    async def _follow(self, stream: Any) -> None:
        self.active = True
        while not self.stop_event.is_set():
            change, waited = await self._next_or_stop(stream)
            if self.stop_event.is_set():
                return
            if change is not None:
                wake, when = wakes_worker(change)
                if wake:
                    if when is None:
                        self.worker.wake.set()
                    else:
                        self.worker.wake_at(when)
                continue
            if not getattr(stream, "alive", True):  # invalidated (collection dropped, renamed)
                raise OperationFailure("change stream closed by the server (invalidate)")
            if waited < self.max_await / 2:
                if self.blocking is not False:
                    self.log.debug("change_stream_not_blocking", throttle_seconds=self.max_await)
                self.blocking = False
                await sleep_or_wake(self.clock, self.stop_event, self.max_await)
            else:
                self.blocking = True

    async def _next_or_stop(self, stream: Any) -> tuple[Any, float]:
        """One getMore, abandoned at once on stop (on a real server it may wait max_await).
        Read only while the worker is idle: a busy worker claims again anyway, so its events wait
        in the cursor and come back batched (no getMore per job)."""
        if not self.worker.idle.is_set():
            idle = asyncio.ensure_future(self.worker.idle.wait())
            stop = asyncio.ensure_future(self.stop_event.wait())
            try:
                await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                stop.cancel()
            if self.stop_event.is_set():
                return None, 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        nxt = asyncio.ensure_future(stream.try_next())
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not nxt.done():
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                await nxt
            return None, 0.0
        return nxt.result(), loop.time() - started
