"""Change-stream wake-ups: a worker wakes as soon as another process makes work claimable.

Three sources feed one wake-up event per worker: in-process (`schedule_job` in the same process,
a retry's time), this change stream, and polling (`poll_interval`, always on). The stream is an
optimisation only: where `watch()` is refused (standalone server, mongomock) it is switched off and
polling carries on. Where the server answers `getMore` at once instead of blocking (nx-27017), the
stream is throttled to one `getMore` per `max_await` so an idle worker never spins.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from .clock import Clock, as_utc, sleep_or_wake
from .log import EventLog

WAKING_STATUSES = {"pending", "paused"}


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
            return doc.get("status") in WAKING_STATUSES, as_utc(when)
        return True, None  # servers that send no decodable document: wake, the claim decides
    if op == "update":
        described = change.get("updateDescription")
        if not described:
            return True, None  # not described (nx-27017): wake conservatively
        fields = described.get("updatedFields") or {}
        when = fields.get("scheduled_for")  # a retry: wake at its time
        return fields.get("status") in WAKING_STATUSES, (
            as_utc(when) if isinstance(when, dt.datetime) else None
        )
    return False, None


class ChangeStreamWaker:
    def __init__(
        self,
        store: Any,
        worker: Any,
        clock: Clock,
        log: EventLog,
        max_await: float = 10.0,
    ) -> None:
        self.store = store
        self.worker = worker
        self.clock = clock
        self.log = log
        self.max_await = max_await
        self.stop_event = asyncio.Event()
        self.blocking: bool | None = None
        """None until known; False where the server's getMore does not wait for events."""
        self.active = False

    async def loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                await self._follow()
            except (OperationFailure, NotImplementedError, AttributeError, TypeError) as exc:
                self.active = False
                self.log.info("change_stream_unavailable", reason=str(exc)[:200])
                return  # polling carries on alone
            except PyMongoError as exc:
                self.active = False
                self.log.warning("change_stream_failed", error=str(exc)[:200])
                await sleep_or_wake(self.clock, self.stop_event, self.max_await)

    async def _follow(self) -> None:
        stream = await self.store.watch_jobs(int(self.max_await * 1000))
        try:
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
                if waited < self.max_await / 2:
                    if self.blocking is not False:
                        self.log.info("change_stream_not_blocking", throttle_seconds=self.max_await)
                    self.blocking = False
                    await sleep_or_wake(self.clock, self.stop_event, self.max_await)
                else:
                    self.blocking = True
        finally:
            self.active = False
            await self.store.close_stream(stream)

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
