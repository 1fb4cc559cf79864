"""Calling one job's handler: its abort signal, its max runtime, the shutdown grace, then
cancellation; what it forgot to await. The run's end (`RunEnd`) goes back to the worker, which
decides the outcome and writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from ..core.abort import AbortSignal
from ..core.clock import Clock
from ..core.errors import DoNotRetry, RetryLater, retry_delay
from ..core.log import EventLog
from ..core.models import Job, not_awaited_message
from ..core.outcome import Ending, RunEnd
from .execution import ResultTooLarge, Run, call_maybe_async, describe_error, storable
from .threads import watched_context


async def run_handler(
    run: Run,
    job: Job[Any],
    clock: Clock,
    log: EventLog,
    shutdown_grace: float,
    ignored: set[asyncio.Task[Any]],
    fields: dict[str, Any],
) -> RunEnd:
    """Run the handler until it returns, or until its abort signal fires (kill, max runtime,
    shutdown) and the grace has passed; then cancel it. A handler that swallows its
    cancellation is kept in `ignored` (referenced until it ends) and its worker slot is not
    held; a handler still going when its run ends (that one, or a plain def's thread) leaves
    `run.still_running`, done when it returns: its limit slot is held until then."""
    definition, signal = run.definition, run.signal
    assert definition is not None  # the worker records a run without one as invalid

    loop = asyncio.get_running_loop()

    def returned_late(name: str, seconds: float) -> None:  # on the thread given up
        log.warning("handler_returned_late", function=name, seconds=round(seconds, 3), **fields)
        loop.call_soon_threadsafe(_thread_returned, run)

    context, give_ups = watched_context()  # a plain def's thread left running, if any
    handler = asyncio.create_task(
        call_maybe_async(definition.handler, job, signal, on_late_return=returned_late),
        context=context,
    )
    aborted = signal.future()
    timer: asyncio.Task[None] | None = None
    if definition.max_runtime_in_minutes is not None:
        # counted from the run's start as claimed: a clock that moved since (a test's
        # FakeClock, between the claim and now) is not lost
        since = run.doc.get("run_started_at")
        timer = asyncio.create_task(
            abort_after(clock, signal, definition.max_runtime_in_minutes * 60, since)
        )
    try:
        await asyncio.wait({handler, aborted}, return_when=asyncio.FIRST_COMPLETED)
        await grace(handler, run, shutdown_grace)  # asked to stop
        if not handler.done():
            handler.cancel()
            # a plain def's call is given up at once; an async handler may clean up: the
            # line is written within a second either way
            await asyncio.wait({handler}, timeout=1.0)
            log.warning(
                "job_cancelled",
                reason=signal.reason,
                thread_left_running=give_ups.left_running,  # a plain def still running
                **fields,
            )
            if give_ups.left_running and not run.returned_late:  # its limit slot stays held
                run.still_running = loop.create_future()
            if handler.done():
                with contextlib.suppress(BaseException):
                    await handler
            else:  # it swallowed the cancellation: its worker slot is not held for ever
                ignored.add(handler)
                handler.add_done_callback(ignored.discard)
                run.still_running = handler  # its limit slot is, until it ends
                log.error("handler_ignored_cancel", **fields)
                return RunEnd(Ending.CANCELLED, abort_reason=signal.reason)
    finally:
        aborted.cancel()
        if timer is not None:
            timer.cancel()
    forgotten = job.not_awaited()
    if forgotten:
        _not_awaited(run, forgotten, log, fields)
    return run_end(run, handler)


def _thread_returned(run: Run) -> None:
    """On the event loop: the plain def given up has returned (its limit slot can go)."""
    run.returned_late = True
    if run.still_running is not None and not run.still_running.done():
        run.still_running.set_result(None)


def _not_awaited(run: Run, calls: list[str], log: EventLog, fields: dict[str, Any]) -> None:
    """checkpoint()/report_progress() called without `await`: nothing was saved. Said in
    the worker's log and in the job's own (the dashboard, `jobs show`)."""
    names = sorted(set(calls))
    log.warning("job_call_not_awaited", calls=names, count=len(calls), **fields)
    if run.notes is not None:
        run.notes.line("warning", not_awaited_message(calls), {})


def run_end(run: Run, handler: asyncio.Task[Any]) -> RunEnd:
    """How the handler's task ended, as the outcome function reads it."""
    reason = run.signal.reason
    if handler.cancelled():
        if reason is None:  # no signal fired: the handler's own code raised CancelledError
            try:
                handler.result()
            except asyncio.CancelledError as raised:
                own = raised.__context__ if raised.__context__ is not None else raised
                return RunEnd(Ending.RAISED, error=describe_error(own))
        return RunEnd(Ending.CANCELLED, abort_reason=reason)
    exc = run.exc = handler.exception()
    if exc is None:
        try:
            result = storable(handler.result())
        except ResultTooLarge as too_large:
            error = f"could not record the run's outcome (finished): {too_large}"
            return RunEnd(Ending.UNRECORDABLE, abort_reason=reason, error=error)
        return RunEnd(Ending.RETURNED, abort_reason=reason, result=result)
    return RunEnd(
        Ending.RAISED,
        abort_reason=reason,
        error=describe_error(exc),
        retry_in=retry_delay(exc) if isinstance(exc, RetryLater) else None,
        final=isinstance(exc, DoNotRetry),
    )


async def grace(handler: asyncio.Task[Any], run: Run, seconds: float) -> None:
    """Give an aborted handler `seconds` to return, cut short when the run is given up
    meanwhile (none at all for a run given up already: the recovery may hand the job, and its
    limit slot, to another worker)."""
    if handler.done() or run.lost:
        return
    given_up = asyncio.ensure_future(run.given_up.wait())
    try:
        await asyncio.wait(
            {handler, given_up}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        given_up.cancel()


async def abort_after(clock: Clock, signal: AbortSignal, seconds: float, since: Any = None) -> None:
    """Max runtime: the abort signal fires with reason "timeout" `seconds` after `since` (the
    run's start, an aware datetime; else now)."""
    if isinstance(since, dt.datetime) and since.tzinfo is not None:
        seconds -= max(0.0, (clock.now() - since).total_seconds())
    await clock.sleep(seconds)
    signal.abort("timeout")
