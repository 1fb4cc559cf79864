"""Waiting for a job's ending or result from any process (`wait_for`, `result`): on a change
stream where the server's streams block, else polling paced by `core.producing.WaitPacing`;
each poll reads the job without what can be large, the whole job once it has ended. A mixin of
`JobsAPI` (the same code drives the synchronous `job_processor.sync.JobClient`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from ..core.commands import command
from ..core.errors import InvalidArgumentError, JobFailedError, JobNotFoundError, keywords_checked
from ..core.limits import limit_usage
from ..core.models import Job
from ..core.producing import ENDED, WaitPacing
from ..core.status import JobStatus
from ..storage import object_id
from ..storage.compat import cancel_count, cancelling, is_motor, stream_waiters
from .runtime import Runtime

S = JobStatus
Doc = dict[str, Any]

#: At most this many `wait_for` calls of one processor follow their job on a change stream at
#: once (a blocking `getMore` holds one of the client's pooled connections while it waits, and
#: the worker needs them); the others poll.
STREAM_WAITERS = 10
#: Waits on streams this process holds on a driver whose threads are shared by the whole
#: process (Motor's executor), against `stream_waiters`' bound.
PROCESS_STREAM_WAITS = [0]
#: How much longer than its wait a change stream read may take before it is given up (its
#: getMore waits 1 s at most: past that, its connection has gone silent).
STREAM_READ_MARGIN = 2.0


class JobWaits(Runtime):
    _waiters_on_streams = 0
    _shared_stream = 0  # 1: this processor's waits on streams count in PROCESS_STREAM_WAITS
    """`wait_for` calls following their job on a change stream now (see STREAM_WAITERS)."""

    @keywords_checked
    async def wait_for(
        self,
        job_id: str | ObjectId,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract; also runs without a loop
    ) -> Job[Any]:
        """Return once the job has ended (finished, errored, killed or skipped), from any
        process: on a change stream where the server's blocks, else polling (0.1, 0.2, 0.4, 1.6,
        1.6 s, then 1 s apart; at most 5 reads in any 5 s after the first, and one more at the
        deadline). `timeout` (seconds): raise TimeoutError naming the job and its status at the
        deadline; during an outage reads are retried only until then."""
        oid = object_id(job_id)
        if timeout is not None and (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 <= timeout < float("inf")  # NaN fails this too
            or timeout > 1e300  # an int past a float's range (10**400) fails float()
        ):
            raise InvalidArgumentError(
                f"timeout must be a finite number of seconds >= 0 (None: no limit), got {timeout!r}"
            )
        baseline = cancel_count()  # requests made before this wait are not its own
        start = time.monotonic()
        deadline = None if timeout is None else start + float(timeout)
        stream = await self._open_stream(
            oid, deadline, baseline
        )  # before the first read: none missed
        held = [stream is not None]  # its place among the waits on streams, given back once

        def give_back() -> None:
            if held[0]:
                held[0] = False
                self._stream_given_back()

        try:
            return await self._wait(oid, str(oid), timeout, deadline, stream, give_back, baseline)
        finally:
            give_back()
            if stream is not None:
                await _close(stream)

    async def _wait(
        self,
        oid: ObjectId,
        shown: str,
        waited: float | None,
        deadline: float | None,
        stream: Any,
        give_back: Callable[[], None] = lambda: None,
        baseline: int = 0,
    ) -> Job[Any]:
        """`give_back`: called when the stream is dropped (its read failed: the wait polls
        from then on), its place among the waits on streams free again."""
        produce = self.storage.producer
        pacing = WaitPacing()
        last = False  # the read at the deadline: the job's status then decides
        quick = False  # the stream's last answer was empty and at once
        seen = False  # the job was read once: gone after, it was deleted during the wait
        while True:
            _raise_if_cancelled(baseline)
            read_at = time.monotonic()  # paced by when each read starts
            # an outage is ridden out only until the deadline (and half a second for the last read)
            left = None if deadline is None else max(deadline - read_at, 0.5)
            # polls read the job without its payload, state, output and logs (megabytes, each
            # time): the whole job once, when it has ended
            doc = await produce.run(lambda _: self.storage.jobs.get_light(oid), within=left)
            if doc is not None and doc.get("status") in ENDED:
                doc = await produce.run(lambda _: self.storage.jobs.get(oid), within=left)
            if doc is None:
                if seen:
                    raise JobNotFoundError(
                        f"job {shown!r} was deleted while waited for, before it ended (a "
                        "delete, or a cron removed with its pending tasks)"
                    )
                raise JobNotFoundError(f"no job with id {shown!r}")
            seen = True
            if doc.get("status") in ENDED:
                return Job.read(doc)
            now = time.monotonic()
            if last or (deadline is not None and now >= deadline):
                try:  # advice only: never another error, nor past about a second more
                    why = await self._why_still(doc)
                except Exception:
                    why = ""
                raise _still(shown, doc, waited, why)
            if stream is None:  # poll
                wake = pacing.next_read(read_at)
                if deadline is not None and wake >= deadline:  # one more read, at the deadline
                    wake, last = deadline, True
                await produce.pause(wake - now)
                continue
            # a blocking stream: read again on a change, or every 10 s as a safety net
            until = min(now + 10.0, deadline or now + 10.0)
            while time.monotonic() < until:
                changed, stream, quick = await self._next_change(
                    stream, until - time.monotonic(), quick
                )
                _raise_if_cancelled(baseline)
                if stream is None:  # closed: this wait polls from now on
                    give_back()
                if changed or stream is None:
                    break

    async def _why_still(self, doc: Doc) -> str:
        """Why a job a wait timed out on has not ended, when the database tells (at most two
        short reads, only then, and a third for a job under a limit): scheduled later, waiting
        for its dependencies, its name paused, no live worker claiming it, its limit full, or
        running where. "" when it cannot tell."""
        job = Job.read(doc)  # dates as datetimes, whatever the server stored
        status, name = job.status, job.name
        now = self.clock.now()
        if status == S.WAITING:
            return "it waits for the jobs it was scheduled after (job.after)"
        if status == S.RUNNING:
            return f"it runs on worker {job.worker_id}"
        if status == S.PENDING and job.scheduled_for > now:
            return f"it is scheduled for {job.scheduled_for.isoformat(timespec='seconds')}"
        if status not in (S.PENDING, S.PAUSED):
            return ""
        produce = self.storage.producer
        if name in await produce.run(lambda _: self.storage.paused.names(), within=0.5):
            return f"{name!r} is paused ({command('names resume', name)})"
        timeout = self.settings.worker_timeout  # for worker documents that record none
        serving = self.storage.workers.serving
        if not await produce.run(lambda _: serving(name, now, timeout), within=0.5):
            return f"no live worker claims {name!r}: start one that defines it"
        if status != S.PENDING:
            return ""
        if job.limit_key:  # a third read, only for a job under a limit
            key = job.limit_key
            held = await produce.run(lambda _: self.storage.limits.get(key), within=0.5)
            full = _limit_full(limit_usage(held, now)) if held else ""
            if full:
                return f"its limit {key!r} is full: {full}"
        return "live workers claim it: they are busy with other jobs"

    async def _open_stream(
        self, oid: ObjectId, deadline: float | None = None, baseline: int = 0
    ) -> Any:
        """A change stream on the job when the server's streams block (learnt from this
        processor's waker, or tried here); None: poll. During an outage it is tried only until
        the wait's deadline, then the reads say the server is unreachable."""
        if self.waker.blocking is False or not self.settings.change_streams:
            return None
        # each holds a pooled connection (with Motor, one of the threads of the process's
        # executor too: counted for the whole process): the rest poll
        shared = is_motor(self.storage.db)  # its threads are the whole process's
        most = stream_waiters(self.storage.db, STREAM_WAITERS)
        if self._waiters_on_streams >= STREAM_WAITERS or (
            shared and PROCESS_STREAM_WAITS[0] >= most
        ):
            return None
        self._waiters_on_streams += 1  # taken before the await: wait_for gives it back
        self._shared_stream = int(shared)
        PROCESS_STREAM_WAITS[0] += self._shared_stream
        within = None if deadline is None else max(deadline - time.monotonic(), 0.5)
        try:
            stream = await self.storage.producer.run(
                lambda _: self.storage.jobs.watch_one(oid, 1000, baseline), within=within
            )
        except (PyMongoError, NotImplementedError, AttributeError, TypeError) as exc:
            self._stream_given_back()
            if cancelling(baseline):  # cancelled while the driver opened it, turned into its error
                raise asyncio.CancelledError() from exc
            return None  # a standalone server, mongomock: poll
        except BaseException:
            self._stream_given_back()
            raise
        return stream  # a cancellation PyMongo swallowed while it opened it: raised there

    def _stream_given_back(self) -> None:
        self._waiters_on_streams -= 1
        PROCESS_STREAM_WAITS[0] -= self._shared_stream

    async def _next_change(
        self, stream: Any, wait: float, quick_before: bool = False
    ) -> tuple[bool, Any, bool]:
        """(whether the job changed, the stream or None when it turned out not to block,
        whether this answer was empty and at once). Two such answers in a row mean the stream
        does not block: PyMongo answers one at once each time it resumes a stream after a
        network error or a lost cursor, without asking the server."""
        began = time.monotonic()
        try:  # bounded: a getMore waits 1 s at most, but a connection gone silent never answers
            async with asyncio.timeout(max(wait, 0.0) + STREAM_READ_MARGIN):
                change = await stream.try_next()
        except (PyMongoError, TimeoutError):
            await _close(stream)
            return True, None, False  # read again, then poll
        if change is not None:
            return True, stream, False
        quick = time.monotonic() - began < 0.25
        if quick and quick_before:
            # it answers at once with nothing: its getMore (which waits 1 s for a change
            # whatever the wait has left) does not block here; a short wait asked it again and
            # again until its deadline (about 1,100 getMores in 0.3 s on nx-27017)
            await _close(stream)
            self.waker.blocking = False  # (the next waits poll at once)
            return False, None, True
        return False, stream, quick

    @keywords_checked
    async def result(
        self,
        job_id: str | ObjectId,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract (see wait_for)
    ) -> Any:
        """The handler's return value once the job has finished (`wait_for`, then its result).
        An errored, killed or skipped job raises JobFailedError (job id, status, error)."""
        job = await self.wait_for(job_id, timeout)
        if job.status == S.FINISHED:
            return job.result
        why = job.error
        if why is None and job.skip_reason:
            why = f"skipped ({job.skip_reason})"
            if job.conflicting_job_id:  # exclusive: the job that was active
                why += f": job {job.conflicting_job_id} was active"
        raise JobFailedError(job.id, job.status.value, why)


def _still(shown: str, doc: Doc, waited: float | None, why: str = "") -> TimeoutError:
    return TimeoutError(
        f"job {shown} ({doc.get('name')}) is still {doc.get('status')} after {waited:g}s"
        + (f": {why}" if why else "")
    )


def _raise_if_cancelled(baseline: int) -> None:
    """A cancellation the driver swallowed (PyMongo's async API does, in a read cut short):
    the wait ends as cancelled, never waits on (a `wait_for` without a timeout, for ever).
    `baseline`: the task's cancel requests when the wait began (one a caller got before,
    cleaning up, or a TaskGroup left counted on Python 3.11, is not the wait's own)."""
    if cancelling(baseline):
        raise asyncio.CancelledError()


async def _close(stream: Any) -> None:
    """Close a change stream, within a second (its server may not answer)."""
    try:
        async with asyncio.timeout(1.0):
            closed = stream.close()
            if hasattr(closed, "__await__"):
                await closed
    except (PyMongoError, TimeoutError):
        pass


def _limit_full(usage: Doc) -> str:
    """How a limit's usage (`core.limits.limit_usage`) keeps a job back now, or ""."""
    cap, running = usage["concurrency"], usage["running"]
    if isinstance(cap, int) and running >= cap:
        return f"{running} of {cap} running"
    rate, started = usage["rate"], usage["started_in_window"]
    if isinstance(rate, int) and started >= rate:
        return f"{started} started in the last {usage['per_seconds']:g}s, its rate is {rate}"
    return ""
