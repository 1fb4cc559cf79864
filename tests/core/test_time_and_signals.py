from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from job_processor import AbortSignal, FakeClock, JobAbortedError
from job_processor.core.clock import SystemClock, sleep_or_wake, to_millis
from job_processor.engine.execution import describe_error, eligible_names, storable
from job_processor.engine.recovery import is_dead
from job_processor.storage import decode


async def handler(job: object, signal: object) -> None:
    return None


def test_to_millis_truncates_and_makes_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    value = dt.datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=paris)
    assert to_millis(value) == dt.datetime(2030, 1, 1, 11, 0, 0, 123000, tzinfo=dt.UTC)
    assert SystemClock().now().microsecond % 1000 == 0


async def test_fake_clock_sleep_waits_for_advance() -> None:
    clock = FakeClock()
    start = clock.now()
    task = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    clock.advance(9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1)
    await asyncio.wait_for(task, 1)
    assert clock.now() - start == dt.timedelta(seconds=10)


async def test_sleep_or_wake_returns_early_on_event() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    task = asyncio.create_task(sleep_or_wake(clock, event, 60))
    await asyncio.sleep(0)
    event.set()
    assert await asyncio.wait_for(task, 1) is True
    assert clock.sleepers == 0
    event.clear()
    task = asyncio.create_task(sleep_or_wake(clock, event, 5))
    while clock.sleepers == 0:
        await asyncio.sleep(0)
    clock.advance(4.999)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.001)
    assert await asyncio.wait_for(task, 1) is False


async def test_abort_signal_first_reason_wins() -> None:
    signal = AbortSignal()
    assert not signal.aborted
    signal.raise_if_aborted()
    waiter = asyncio.create_task(signal.wait())
    assert signal.abort("killed") is True
    assert signal.abort("shutdown") is False
    assert await waiter == "killed"
    assert signal.reason == "killed"
    with pytest.raises(JobAbortedError, match="killed"):
        signal.raise_if_aborted()


def test_worker_lease_maths() -> None:
    now = dt.datetime(2030, 1, 1, 12, 0, 30, tzinfo=dt.UTC)
    assert not is_dead(now - dt.timedelta(seconds=30), now, 30)
    assert is_dead(now - dt.timedelta(seconds=30, milliseconds=1), now, 30)


def test_eligible_names_follow_tags() -> None:
    from job_processor import JobDef

    defs = {
        "any": JobDef(handler=handler),
        "main-only": JobDef(handler=handler, tag="main"),
        "reports": JobDef(handler=handler, tag="reports"),
    }
    assert eligible_names(defs, None) == ["any", "main-only", "reports"]
    assert eligible_names(defs, ["main"]) == ["any", "main-only"]
    assert eligible_names(defs, ["other"]) == ["any"]


def test_results_that_bson_cannot_hold_are_stored_as_repr() -> None:
    assert storable({"a": [1, 2]}) == {"a": [1, 2]}
    assert storable({1, 2}) == repr({1, 2})


def test_error_text_has_type_message_and_traceback() -> None:
    try:
        raise ValueError("bad row 3")
    except ValueError as exc:
        text = describe_error(exc)
    assert text.startswith("ValueError: bad row 3")
    assert "Traceback" in text
    assert "test_error_text_has_type_message_and_traceback" in text


async def test_a_task_groups_error_keeps_where_it_was_raised_however_deep() -> None:
    """Each grouped exception's traceback is cut to its last frames; a text still too long
    keeps its start (the message) and its end (the innermost error)."""

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("bottom")
        deep(n - 1)

    async def part(n: int) -> None:
        deep(80)

    try:
        async with asyncio.TaskGroup() as group:
            for n in range(3):
                group.create_task(part(n))
    except ExceptionGroup as exc:
        text = describe_error(exc)
    assert len(text) <= 4000
    assert text.startswith("ExceptionGroup: unhandled errors in a TaskGroup (3 sub-exceptions)")
    assert text.count("ValueError: bottom") == 3
    assert 3 * 3 <= text.count("in deep") <= 3 * 5  # the last 5 frames of each (repeats folded)

    huge = ValueError("x" * 10_000)
    text = describe_error(huge)
    assert len(text) == 4000 and "[...]" in text and text.startswith("ValueError: xxx")


def test_decode_restores_dates_stored_as_text() -> None:
    doc = decode({"last_seen": "2030-01-01 10:00:00.123000", "payload_note": "2030-01-01 10:00:00"})
    assert doc["last_seen"] == dt.datetime(2030, 1, 1, 10, 0, 0, 123000, tzinfo=dt.UTC)
    assert doc["payload_note"] == "2030-01-01 10:00:00"  # only known date fields


def test_a_fake_clock_takes_aware_datetimes_only() -> None:
    with pytest.raises(ValueError, match="FakeClock needs an aware datetime"):
        FakeClock(dt.datetime(2030, 1, 1))
    clock = FakeClock()
    with pytest.raises(ValueError, match="never taken as UTC silently"):
        clock.set(dt.datetime(2031, 1, 1))
    clock.set(dt.datetime(2029, 1, 1, tzinfo=dt.UTC))  # backwards, as a wall clock can
    assert clock.now().year == 2029


async def test_a_fake_clocks_small_advances_that_add_up_to_a_sleep_wake_it_a_week_on() -> None:
    """advance() wakes the sleepers whose time has come, however far the clock has moved (a
    float sum of the steps drifted: a week on, 100 x 0.1 s did not wake a 10 s sleep)."""
    import datetime as dt

    from job_processor import FakeClock

    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    clock.advance(7 * 86400)
    sleeper = asyncio.ensure_future(clock.sleep(10))
    await asyncio.sleep(0)
    for _ in range(100):
        clock.advance(0.1)
    await asyncio.sleep(0)
    assert clock.now() == dt.datetime(2030, 1, 8, 0, 0, 10, tzinfo=dt.UTC)
    assert sleeper.done()
    clock.advance(-3600)  # a wall-clock step back: a sleep counts time, not the wall clock
    later = asyncio.ensure_future(clock.sleep(5))
    await asyncio.sleep(0)
    clock.advance(5)
    await asyncio.sleep(0)
    assert later.done() and clock.monotonic() == 7 * 86400 + 15
