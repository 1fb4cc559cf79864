"""Injectable clock: every timestamp and every timed wait goes through one of these."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from .errors import InvalidArgumentError

UTC = dt.UTC


def to_millis(value: dt.datetime) -> dt.datetime:
    """Aware UTC, truncated to milliseconds (BSON precision) so a value read back compares equal."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Aware UTC datetime, millisecond precision."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait `seconds` of this clock's time (counted from this call)."""
        ...


class SystemClock:
    """Wall clock and asyncio.sleep."""

    def now(self) -> dt.datetime:
        return to_millis(dt.datetime.now(UTC))

    def monotonic(self) -> float:
        """Seconds on a clock no wall-clock step moves (an NTP correction, a VM resumed)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class BlockingClock(SystemClock):
    """Wall clock whose sleep blocks the calling thread: the clock of code driven without an
    event loop (`job_processor.sync`), where an asyncio sleep could never end."""

    async def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))  # noqa: ASYNC251 - no event loop to yield to


def _aware(value: dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ValueError(
            f"FakeClock needs an aware datetime, got {value!r}: e.g. datetime(2030, 1, 1, "
            "tzinfo=UTC) (a naive one is never taken as UTC silently)"
        )
    return value


class FakeClock:
    """A clock that only moves when told to: `advance()` wakes the sleepers whose time has come."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = to_millis(_aware(start or dt.datetime(2030, 1, 1, tzinfo=UTC)))
        self._mono = dt.timedelta(0)  # exact: a float sum drifts over days of small steps
        self._sleepers: list[tuple[dt.timedelta, asyncio.Future[None]]] = []
        """(when on `monotonic`, its future): a sleep counts time, as asyncio's does, not the
        wall clock's steps."""

    def now(self) -> dt.datetime:
        return self._now

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """The wake-up time is fixed now, at the call (not when a task first runs it): a test
        that moves the clock right after a loop decided to sleep never makes it oversleep.
        `seconds`: an int or a float (0 or less: no wait; math.inf, or more than the clock can
        count, waits until cancelled, as asyncio.sleep(math.inf) does)."""
        seconds = _seconds("sleep", seconds)
        if seconds <= 0:
            return asyncio.sleep(0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            due = self._mono + dt.timedelta(seconds=seconds)
        except OverflowError:  # past what a timedelta holds: no advance() reaches it
            due = dt.timedelta.max
        self._sleepers.append((due, fut))
        return self._wait(fut)

    async def _wait(self, fut: asyncio.Future[None]) -> None:
        try:
            await fut
        finally:
            fut.cancel()
            self._sleepers = [(t, f) for t, f in self._sleepers if f is not fut]

    def monotonic(self) -> float:
        """Seconds that only the clock moving forward adds to (a step back leaves it)."""
        return self._mono.total_seconds()

    def set(self, value: dt.datetime) -> None:
        """Move the clock to `value` (an aware datetime; backwards too, as a wall clock can:
        `monotonic` then stays where it was)."""
        value = to_millis(_aware(value))
        self._mono += max(value - self._now, dt.timedelta(0))
        self._now = value
        for due, fut in list(self._sleepers):
            if due <= self._mono and not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` (an int or a float; negative: back) and wake the sleepers
        whose time has come."""
        seconds = _seconds("advance", seconds)
        try:
            value = self._now + dt.timedelta(seconds=seconds)
        except OverflowError:  # math.inf, or past year 9999
            raise InvalidArgumentError(
                f"FakeClock.advance({seconds!r}) moves the clock out of the datetimes Python "
                f"can hold (from {self._now.isoformat()}): give a finite number of seconds, "
                "or set() the clock to a datetime"
            ) from None
        self.set(value)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())


def _seconds(verb: str, seconds: Any) -> float:
    """FakeClock's sleep() and advance() take a number of seconds: an int or a float (a
    string, None, a bool or a NaN is refused, naming what it takes)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
        raise InvalidArgumentError(
            f"FakeClock.{verb}() takes a number of seconds (an int or a float, e.g. "
            f"{verb}(60)), got {seconds!r:.60}"
        )
    return seconds


def monotonic_of(clock: Clock) -> float:
    """The clock's `monotonic()` (a clock of the user's without one: its wall time)."""
    monotonic = getattr(clock, "monotonic", None)
    return float(monotonic()) if callable(monotonic) else clock.now().timestamp()


async def sleep_or_wake(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Sleep on `clock` for `seconds` unless `event` is set first. Returns True if woken."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (waiter, sleeper):
            t.cancel()
    return event.is_set()


def as_utc(value: dt.datetime) -> dt.datetime:
    """Datetimes read back from MongoDB: naive (client without tz_aware=True) means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: dt.datetime, timespec: str = "auto") -> str:
    """A date as every JSON output writes one (pydantic writes the models' own dates so): ISO
    8601 in UTC ending in Z, e.g. 2030-01-31T09:00:00.123000Z; a naive one is taken as UTC."""
    return as_utc(value).isoformat(timespec=timespec).removesuffix("+00:00") + "Z"


def utc_text(value: Any) -> Any:
    """A date kept as text (a webhook attempt's `at`, "...+00:00" as written before) as
    `iso_utc` writes it; any other value, and a text that is no date with a zone, as it is."""
    if not isinstance(value, str) or len(value) < 19 or value[10:11] not in ("T", "t", " "):
        return value
    try:
        parsed = dt.datetime.fromisoformat(value.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        return value
    return value if parsed.tzinfo is None else iso_utc(parsed)


def check_window(
    start: dt.datetime | None, end: dt.datetime | None, start_name: str, end_name: str
) -> None:
    """A time window [start, end) that can hold something: refused, naming both bounds, when
    the start is not before the end (a silent empty answer reads as "nothing happened")."""
    if start is not None and end is not None and start >= end:
        fix = "swap them" if start > end else f"{end_name} is exclusive: give a later one"
        raise InvalidArgumentError(
            f"{start_name} {start.isoformat()} is not before {end_name} {end.isoformat()}: "
            f"nothing can match; {fix}"
        )
