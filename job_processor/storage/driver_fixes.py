"""Workarounds for the MongoDB drivers' own bugs, each named and gated on where it applies.

`fix_cancelled_waits` (PyMongo's async API on Python 3.11): PyMongo waits on its topology's
and pools' conditions with `asyncio.wait_for(condition.wait(), timeout)`. On Python 3.11,
`wait_for` runs the wait as a task of its own; a caller cancelled while that wait is being
cancelled for its timeout (a stop during a MongoDB outage, while an operation waits for a
server) stops waiting for it, so the inner task re-acquires the condition's lock after its
caller has left: the lock is then held by nobody that will release it (every later
operation of that client, `close()` included, waits forever), or released twice ("Lock is
not acquired"). Python 3.12 rewrote `wait_for` on `asyncio.timeout`, which waits in the
caller's own task, so the lock is re-acquired before any exception leaves it. The fix gives
PyMongo that `wait_for` on 3.11 (from 3.11.3, whose `asyncio.timeout` it relies on); nothing
changes on 3.12 and later.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

import pymongo.lock as driver_lock

T = TypeVar("T")


async def wait_for_in_task(aw: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109
    """`asyncio.wait_for` as Python 3.12 has it (its signature: PyMongo calls it so): the
    awaitable runs in the caller's task."""
    if timeout is None:
        return await aw
    async with asyncio.timeout(timeout):
        return await aw


def fix_cancelled_waits() -> bool:
    """Give PyMongo's condition waits `wait_for_in_task` on Python < 3.12 (idempotent).
    True when the fix is in place, False when it does not apply (a newer Python, or a
    PyMongo whose waits no longer go through `asyncio.wait_for`)."""
    if sys.version_info >= (3, 12) or sys.version_info < (3, 11, 3):
        # 3.11.0 to 3.11.2: their asyncio.timeout turns a timeout into a cancellation in a
        # task cancelled before (CPython gh-102780, fixed in 3.11.3): the fix would not hold
        return False
    current: Any = getattr(driver_lock, "wait_for", None)
    if current is wait_for_in_task:
        return True
    if current is not asyncio.wait_for or not hasattr(driver_lock, "_async_cond_wait"):
        return False
    setattr(driver_lock, "wait_for", wait_for_in_task)  # noqa: B010 (a private name of PyMongo)
    return True
