"""Riding out short database outages: retry an operation on transient errors, within a budget.

A worker's writes that must land (final writes, checkpoints, hook records) go through
`ride_out`. Within `budget` seconds (the processor's `worker_timeout`: past it, other workers
consider this one dead and recover its jobs) the operation is retried with backoff; then the
last error is raised and the caller abandons the run to recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pymongo
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from ..core.errors import DatabaseUnreachableError

T = TypeVar("T")

#: Errors after which the same operation may succeed (AutoReconnect covers NetworkTimeout,
#: NotPrimaryError and ServerSelectionTimeoutError).
TRANSIENT: tuple[type[BaseException], ...] = (AutoReconnect, ConnectionFailure, TimeoutError)
#: What `ride_out` looks at (a server error only when labelled retryable: `is_transient`).
RIDDEN_OUT: tuple[type[BaseException], ...] = (*TRANSIENT, OperationFailure)
#: The longest bound one attempt of a producer call gets (seconds). PyMongo turns its
#: client-side timeout into each command's maxTimeMS, which MongoDB refuses above 2**31-1 ms
#: (about 24.8 days) and which overflows 64 bits near 1e17 s, and into a socket timeout, which
#: overflows the platform's time_t near 1e10 s: a longer call or wait attempts or reads again.
COMMAND_BOUND = 3600.0


class GivenUp(AutoReconnect):
    """Nothing more is sent: the writer no longer owns what it was writing (its `WriteStop`
    was set: a worker gave its run up at the end of its lease). An outage's error too, as
    callers treat it."""


class WriteStop:
    """Set when a writer no longer owns what it writes (a worker's run given up at the end of
    its lease): the `ride_out` attempt under way is cut short (its timeout fires at once: a
    command still in server selection is never sent) and none follows."""

    __slots__ = ("_attempts", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._attempts: set[asyncio.Timeout] = set()

    def set(self) -> None:
        self.is_set = True
        for attempt in list(self._attempts):
            if not attempt.expired():  # its own timeout fired already: cut short anyway
                attempt.reschedule(asyncio.get_running_loop().time())


def _stopped(stops: Sequence[WriteStop]) -> bool:
    """Every writer of a write gave up (a batch goes on while one still owns its run)."""
    return bool(stops) and all(s.is_set for s in stops)


async def ride_out(
    op: Callable[[], Awaitable[T]],
    budget: float,
    *,
    on_retry: Callable[[BaseException, int], Awaitable[None] | None] | None = None,
    stops: Sequence[WriteStop] = (),
) -> T:
    """Run `op()`; on a transient error (`is_transient`: a server error labelled
    `RetryableWriteError` too, as a failover answers), again after 0.1 s, 0.2 s, ... (at most
    2 s apart), until `budget` seconds have passed (the last try at its end); then the last
    error, as one of `TRANSIENT` (a labelled server error as an AutoReconnect saying it), which
    callers treat as an outage.
    Each attempt is itself bounded by what remains. `stops`: once all are set, the attempt
    under way is cut short and no other is sent (GivenUp)."""
    if _stopped(stops):
        raise GivenUp("given up: nothing more is sent")
    if budget <= 0:  # one attempt (also what code driven without an event loop asks for)
        return await op()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = 0.1
    attempt = 0
    while True:
        attempt += 1
        if _stopped(stops):
            raise GivenUp("given up: nothing more is sent")
        remaining = deadline - loop.time()
        try:
            async with asyncio.timeout(max(remaining, 0.5)) as bound:
                for stop in stops:
                    stop._attempts.add(bound)
                try:
                    return await op()
                finally:
                    for stop in stops:
                        stop._attempts.discard(bound)
        except RIDDEN_OUT as exc:
            if _stopped(stops):  # cut short: the writer gave up
                raise GivenUp("given up: nothing more is sent") from exc
            if not is_transient(exc):
                raise
            if loop.time() >= deadline:
                if isinstance(exc, TRANSIENT):
                    raise
                raise AutoReconnect(describe(exc)) from exc
            if on_retry is not None:
                maybe = on_retry(exc, attempt)
                if maybe is not None:
                    await maybe
        # the last try at the budget's end: a backoff step past it gave up early (at 1.5 s of
        # 3 s, 9.1 s of 10), failing a write whose outage ended within the budget
        await asyncio.sleep(max(min(delay, deadline - loop.time()), 0.0))
        delay = min(delay * 2, 2.0)


def driver_bound(seconds: float | None) -> contextlib.AbstractContextManager[Any]:
    """The driver's own client-side timeout (`pymongo.timeout`, at most COMMAND_BOUND) over the
    commands made inside; None: none. What an asyncio timeout or a cancellation cuts short,
    Motor goes on with on one of its threads, sending the command once a server answers (a
    claim that a stop cut in an outage landed after it, once MongoDB was back): this ends that
    thread's command too, as PyMongo's async client ends its own with the cut."""
    if seconds is None:
        return contextlib.nullcontext()
    return pymongo.timeout(min(max(seconds, 0.001), COMMAND_BOUND))


def is_transient(exc: BaseException) -> bool:
    """A network error, no primary, a timeout, or a write the server labels retryable."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, OperationFailure) and exc.has_error_label("RetryableWriteError")


def unsure_write(exc: BaseException) -> bool:
    """A write whose write concern was not satisfied: it may have landed, and is likely to
    succeed when made again (what a step called again until it succeeds waits out)."""
    if isinstance(exc, WriteConcernError):
        return True
    return isinstance(exc, BulkWriteError) and bool(exc.details.get("writeConcernErrors"))


def describe(exc: BaseException) -> str:
    """A driver error on one line: its type and message, cut at 300 characters (a timeout's
    message is empty: its type says it)."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ProducerRetry:
    """Producer calls (schedule, kill, retry, emit; async or driven synchronously) ride out
    short outages: a transient error is retried with backoff (0.1 s doubling, at most 2 s
    apart) within `budget` seconds (the last try at its end), each attempt bounded by what
    remains; past it, one DatabaseUnreachableError naming the server and the time spent.
    `budget` 0: one attempt.

    `op(retried)` is told whether an earlier attempt failed on the network: a write whose
    reply was lost may have landed, and the op recognises it (a duplicate of the `_id` it
    chose before the first attempt)."""

    def __init__(self, budget: float, sync: bool, where: Callable[[], str]) -> None:
        self.budget = budget
        self.sync = sync
        self.where = where

    async def pause(self, seconds: float) -> None:
        """Wait between two polls (a blocking sleep when driven without an event loop)."""
        if self.sync:
            time.sleep(max(seconds, 0.0))  # noqa: ASYNC251 - no event loop (sync_adapter)
        else:
            await asyncio.sleep(max(seconds, 0.0))

    @contextlib.asynccontextmanager
    async def bounded(self, seconds: float) -> AsyncIterator[None]:
        """`async with`: the reads inside end within `seconds`, at most COMMAND_BOUND
        (TimeoutError, or PyMongo's own timeout error when driven without an event loop, where
        asyncio.timeout cannot run)."""
        seconds = min(seconds, COMMAND_BOUND)
        if self.sync:
            with pymongo.timeout(max(seconds, 0.001)):
                yield
        else:
            async with asyncio.timeout(seconds):
                yield

    async def run(self, op: Callable[[bool], Awaitable[T]], within: float | None = None) -> T:
        """`within`: a shorter budget for this call (a wait with a deadline). Each attempt is
        bounded by what remains, at most COMMAND_BOUND: an attempt cut by that bound alone is
        made again while the budget lasts."""
        budget = self.budget if within is None else min(self.budget, within)
        if self.budget <= 0:  # retries turned off: one attempt, raw errors, bounded only
            if within is None:  # by the driver's own timeouts, or by `within` when given
                return await op(False)
            bound = min(within, COMMAND_BOUND)  # (a longer wait reads again)
            with pymongo.timeout(max(bound, 0.001)):
                if self.sync:
                    return await op(False)
                async with asyncio.timeout(bound):
                    return await op(False)
        start = time.monotonic()
        deadline = start + budget
        delay = 0.1
        retried = False
        while True:
            remaining = max(deadline - time.monotonic(), min(1.0, budget))
            bound = min(remaining, COMMAND_BOUND)
            try:
                # the driver's own bound too: an attempt Motor runs on its threads, which
                # asyncio's timeout cannot stop, gives up with it (an insert abandoned in
                # server selection was written once MongoDB came back, after the call had
                # raised DatabaseUnreachableError)
                with pymongo.timeout(bound):
                    if self.sync:
                        return await op(retried)
                    async with asyncio.timeout(bound):
                        return await op(retried)
            except (PyMongoError, TimeoutError) as exc:
                # our own bound ran out: asyncio's, or pymongo.timeout's between two commands
                # (ExecutionTimeout, not transient)
                own = (isinstance(exc, TimeoutError) and not isinstance(exc, PyMongoError)) or (
                    isinstance(exc, PyMongoError)
                    and bool(getattr(exc, "timeout", False))
                    and not is_transient(exc)
                )
                if not own and not is_transient(exc):
                    raise
                cut = own and bound < remaining  # by COMMAND_BOUND, not the budget: again
                if (own and not cut) or time.monotonic() >= deadline:
                    spent = time.monotonic() - start
                    what = (  # the call's commands took that long in all
                        f"the call's commands at MongoDB {self.where()} did not all complete "
                        f"within {spent:.1f}s (a slow or unreachable server, or a long call)"
                        if own
                        else f"MongoDB at {self.where()} did not answer for {spent:.1f}s "
                        f"({describe(exc)})"
                    )
                    raise DatabaseUnreachableError(
                        f"{what}; the call did not complete (producer_retry_seconds="
                        f"{self.budget:g} sets how long producer calls wait; a write the "
                        "server had already received may still be applied)"
                    ) from exc
                retried = True
            # the last try at the budget's end: a backoff step past it gave up early (at 1.5 s
            # of a 3 s budget), failing a call whose outage ended within the budget
            pause = max(min(delay, deadline - time.monotonic()), 0.0)
            if self.sync:
                time.sleep(pause)  # noqa: ASYNC251 - driven without an event loop (sync_adapter)
            else:
                await asyncio.sleep(pause)
            delay = min(delay * 2, 2.0)
