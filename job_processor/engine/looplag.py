"""Event-loop lag: how late the heartbeat's own timer wakes, compared with when it asked to.

An `async def` handler that calls a blocking function (`time.sleep`, a synchronous HTTP
client, a long computation) holds the event loop: nothing else in the process runs meanwhile,
the heartbeat included. Past `worker_timeout` other workers declare this one dead and recover
its jobs while the blocked handler still runs. The heartbeat's timer says so at no cost: one
clock read when it goes to sleep and one when it wakes (no MongoDB command, no extra wake-up,
nothing per job).

- `event_loop_blocked` (warning) when the timer wakes `loop_lag_warning` seconds late or more,
  naming the `async def` handlers running then (plain `def` handlers run on threads: they
  cannot block the loop). At most one a minute, unless a lag twice the largest reported in that
  minute; the next one counts those left out (`suppressed`).
- `cause()`: why a run was probably lost (`job_lost`, `worker_declared_dead`, `job_abandoned`):
  a lag long enough to have missed heartbeats for `worker_timeout / 2`, measured within the
  last `worker_timeout`, or under way (the timer overdue, the heartbeat not run yet).

The lag is how late the timer fired, not how long the loop was held: a block that starts while
the heartbeat sleeps shows as up to `heartbeat_interval` shorter, so one shorter than
`heartbeat_interval + loop_lag_warning` may go unnoticed; one long enough to get the worker
declared dead is seen unless the block starts during the heartbeat's own round trip (its
next sleep is then 0 s: the worker is declared dead with no cause given). It is the smaller of
the lags read on the processor's clock and on a monotonic one: a wall clock stepped forward
(NTP) is no block; on a clock other than the system's (a test's `FakeClock`) nothing is
measured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..core.clock import Clock, SystemClock, sleep_or_wake
from ..core.log import EventLog
from .execution import Run, is_async

#: Seconds during which a second `event_loop_blocked` is logged only if twice as long.
RATE_WINDOW = 60.0
#: The most jobs one warning names.
MAX_NAMED = 10
#: Said after either hint: a frozen process looks the same from inside.
FROZEN = "; or the whole process was stopped (SIGSTOP, a paused container or VM, a suspended host)"
HINT = (
    "a handler blocks the event loop: use a plain def handler (run in a thread) or "
    "asyncio.to_thread for blocking calls" + FROZEN
)
HINT_NO_ASYNC_JOB = (
    "no async def handler was running: other code in this process blocks the event loop (a "
    "hook, a subscriber, the application itself); run blocking calls with asyncio.to_thread"
    + FROZEN
)


class LoopLag:
    """Measures the lateness of one periodic sleep (`sleep`), warns, and explains lost runs."""

    def __init__(
        self,
        clock: Clock,
        log: EventLog,
        threshold: float,
        worker_timeout: float,
        runs: Callable[[], Iterable[Run]],
        worker_id: Callable[[], str],
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock
        self.log = log
        self.threshold = threshold
        self.worker_timeout = worker_timeout
        self.runs = runs
        self.worker_id = worker_id
        # a timer on another clock (a test's FakeClock) wakes when that clock is moved, not
        # late: nothing to measure unless the test gives a monotonic clock that moves with it
        self.monotonic = monotonic or (time.monotonic if isinstance(clock, SystemClock) else None)
        self._due: tuple[dt.datetime, float] | None = None
        """When the sleep under way should end, on both clocks (None while not sleeping)."""
        self.last: tuple[dt.datetime, float] | None = None
        """The last lag at or over the threshold: when it was measured, seconds."""
        self._window: dt.datetime | None = None
        self._window_max = 0.0
        self._suppressed = 0

    async def sleep(self, event: asyncio.Event, seconds: float) -> bool:
        """`sleep_or_wake`, then how late it returned (a return woken by `event` counts too:
        an event set while the loop was held is seen as late as the timer)."""
        if self.monotonic is None:
            return await sleep_or_wake(self.clock, event, seconds)
        due = (
            self.clock.now() + dt.timedelta(seconds=max(seconds, 0.0)),
            self.monotonic() + seconds,
        )
        self._due = due
        try:
            woken = await sleep_or_wake(self.clock, event, seconds)
        finally:
            self._due = None
        now = self.clock.now()
        self.measured(self._late(due, now), now)
        return woken

    def _late(self, due: tuple[dt.datetime, float], now: dt.datetime) -> float:
        """Seconds past `due` on both clocks: the smaller."""
        if self.monotonic is None:  # not measuring (never the case while `due` is set)
            return 0.0
        return min((now - due[0]).total_seconds(), self.monotonic() - due[1])

    def measured(self, lag: float, now: dt.datetime) -> None:
        if lag < self.threshold:
            return
        self.last = (now, lag)
        fresh = self._window is None or (now - self._window).total_seconds() >= RATE_WINDOW
        if not fresh and lag < 2 * self._window_max:
            self._suppressed += 1
            return
        if fresh:
            self._window = now
        self._window_max = lag  # the largest reported in this window
        self._warn(lag)

    def _warn(self, lag: float) -> None:
        suspects = [r.doc for r in self.runs() if r.definition and is_async(r.definition.handler)]
        fields: dict[str, Any] = {}
        if len(suspects) == 1:
            fields |= {"job_id": str(suspects[0]["_id"]), "job_name": suspects[0].get("name")}
        if suspects:
            fields["job_ids"] = [str(d["_id"]) for d in suspects[:MAX_NAMED]]
            fields["job_names"] = [d.get("name") for d in suspects[:MAX_NAMED]]
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            self._suppressed = 0
        self.log.warning(
            "event_loop_blocked",
            seconds=round(lag, 2),
            worker_id=self.worker_id(),
            hint=HINT if suspects else HINT_NO_ASYNC_JOB,
            **fields,
        )

    def cause(self) -> str | None:
        """ "event loop blocked for N s: heartbeat missed" when a lag explains a lost run (see
        the module docstring), else None."""
        now = self.clock.now()
        lag = 0.0 if self._due is None else self._late(self._due, now)
        if self.last is not None and (now - self.last[0]).total_seconds() <= self.worker_timeout:
            lag = max(lag, self.last[1])
        if lag < max(self.threshold, self.worker_timeout / 2):
            return None
        return f"event loop blocked for {lag:.1f} s: heartbeat missed"
