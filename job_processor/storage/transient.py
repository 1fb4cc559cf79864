"""Riding out short database outages: retry an operation on transient errors, within a budget.

A worker's writes that must land (final writes, checkpoints, hook records) go through
`ride_out`. Within `budget` seconds (the processor's `worker_timeout`: past it, other workers
consider this one dead and recover its jobs) the operation is retried with backoff; then the
last error is raised and the caller abandons the run to recovery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pymongo.errors import AutoReconnect, ConnectionFailure

T = TypeVar("T")

#: Errors after which the same operation may succeed (AutoReconnect covers NetworkTimeout,
#: NotPrimaryError and ServerSelectionTimeoutError).
TRANSIENT: tuple[type[BaseException], ...] = (AutoReconnect, ConnectionFailure, TimeoutError)


async def ride_out(
    op: Callable[[], Awaitable[T]],
    budget: float,
    *,
    on_retry: Callable[[BaseException, int], Awaitable[None] | None] | None = None,
) -> T:
    """Run `op()`; on a transient error, again after 0.1 s, 0.2 s, ... (at most 2 s apart),
    until `budget` seconds have passed. Each attempt is itself bounded by what remains."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = 0.1
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - loop.time()
        try:
            async with asyncio.timeout(max(remaining, 0.5)):
                return await op()
        except TRANSIENT as exc:
            if loop.time() + delay >= deadline:
                raise
            if on_retry is not None:
                maybe = on_retry(exc, attempt)
                if maybe is not None:
                    await maybe
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
