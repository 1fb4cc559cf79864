"""PyMongo's condition waits on Python 3.11 (job_processor.storage.driver_fixes).

A stop during a MongoDB outage cancels tasks whose operation waits for a server. With
`asyncio.wait_for` of Python 3.11, a cancellation that comes while the wait is being ended by
its timeout leaves the condition's lock to an orphaned task: the client's later operations,
and its close(), then wait forever (seen as a stop that hung under load with the event loop
idle). Unit tests: no server."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pymongo.lock as plock
import pytest

from job_processor.storage import Storage
from job_processor.storage.driver_fixes import fix_cancelled_waits, wait_for_in_task

needs_311 = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="Python 3.12 fixed asyncio.wait_for itself"
)


async def _until(predicate: Any) -> None:
    for _ in range(2000):  # about 2 s at most, on events of the loop, not a fixed pause
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition was never met")


async def cancelled_during_a_timed_out_wait() -> tuple[bool, bool]:
    """Task A waits on PyMongo's condition with a timeout while task B takes the lock; A's
    wait times out and wants the lock back while B holds it; then A is cancelled (the stop).
    Returns whether A went on inside its critical section while B was in its own (the lock
    broken: the releases that follow free it under a holder, or leave it to nobody), and
    whether the lock was free and usable once both ended."""
    lock = plock._async_create_lock()
    cond = plock._async_create_condition(lock)
    b_inside, b_leave = asyncio.Event(), asyncio.Event()
    seen: list[bool] = []

    async def a() -> None:
        async with lock:
            try:
                await plock._async_cond_wait(cond, 0.02)
            except asyncio.CancelledError:
                seen.append(b_inside.is_set())  # A holds the lock again here, or should
                raise

    async def b() -> None:
        async with lock:
            b_inside.set()
            await b_leave.wait()
            b_inside.clear()

    task_a = asyncio.create_task(a())
    await _until(lambda: cond._waiters)  # A waits, the lock released
    task_b = asyncio.create_task(b())
    await b_inside.wait()
    await _until(lambda: lock._waiters)  # A's wait timed out: it wants the lock back
    task_a.cancel()
    for _ in range(50):  # every step the cancellation can take
        await asyncio.sleep(0)
    b_leave.set()
    await asyncio.wait({task_a, task_b}, timeout=2)

    async def again() -> None:
        async with lock:
            pass

    done, _ = await asyncio.wait({asyncio.ensure_future(again())}, timeout=2)
    return seen == [True], bool(done) and not lock.locked()


@needs_311
async def test_without_the_fix_python_3_11_breaks_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug the fix is for, shown on PyMongo's own lock (if this starts passing, PyMongo or
    Python fixed it and the fix can go)."""
    monkeypatch.setattr(plock, "wait_for", asyncio.wait_for)
    broken, _ = await cancelled_during_a_timed_out_wait()
    assert broken


@needs_311
async def test_with_the_fix_a_cancelled_wait_gives_the_lock_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plock, "wait_for", asyncio.wait_for)
    assert fix_cancelled_waits()
    assert plock.wait_for is wait_for_in_task
    assert await cancelled_during_a_timed_out_wait() == (False, True)


async def test_the_fixed_wait_keeps_wait_for_s_results() -> None:
    lock = plock._async_create_lock()
    cond = plock._async_create_condition(lock)
    fix_cancelled_waits()
    async with lock:  # a timeout: False, the lock held again
        assert await plock._async_cond_wait(cond, 0.01) is False
        assert lock.locked()

    async def notify() -> None:
        async with lock:
            cond.notify_all()

    async with lock:  # notified: True
        task = asyncio.create_task(notify())
        assert await plock._async_cond_wait(cond, 5) is True
    await task
    assert await wait_for_in_task(asyncio.sleep(0, "x"), None) == "x"


@needs_311
async def test_opening_the_storage_puts_the_fix_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pymongo import AsyncMongoClient

    monkeypatch.setattr(plock, "wait_for", asyncio.wait_for)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1", connect=False
    )
    try:
        Storage(client["x"])
        assert plock.wait_for is wait_for_in_task
        assert fix_cancelled_waits()  # idempotent
    finally:
        await client.close()


@needs_311
async def test_a_readiness_probe_alone_puts_the_fix_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`health.ready(db)` (operations.md: a web process's /readyz) pings under its own
    `asyncio.timeout`, which cancels PyMongo's server selection during an outage: the very
    case the fix is for. It opens no storage (nor do the CLI's `with_admin` and `dashboard
    serve`, whose `check_reachable` comes first), so a process that only probed was unfixed:
    concurrent probes during an outage raised 'Lock is not acquired' and close() hung."""
    from pymongo import AsyncMongoClient

    from job_processor.health import ready

    monkeypatch.setattr(plock, "wait_for", asyncio.wait_for)  # a process with no storage yet
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        "mongodb://127.0.0.1:1", serverSelectionTimeoutMS=2000
    )
    try:
        health = await ready(client["x"], wait=0.2)
        assert not health.ok
        assert plock.wait_for is wait_for_in_task
    finally:
        await client.close()


@needs_311
async def test_opening_a_url_puts_the_fix_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    from job_processor.storage.connect import open_database

    monkeypatch.setattr(plock, "wait_for", asyncio.wait_for)
    db = open_database("mongodb://127.0.0.1:1/x")
    try:
        assert plock.wait_for is wait_for_in_task
    finally:
        await db.client.close()
