"""OS signal handling for `serve()`: SIGTERM / SIGINT start a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal as os_signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def stop_on_signals(
    event: asyncio.Event,
    signals: tuple[os_signal.Signals, ...] = (os_signal.SIGTERM, os_signal.SIGINT),
) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set `event` instead of killing the process."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def unless_set(task: asyncio.Task[Any], event: asyncio.Event) -> bool:
    """Wait for `task` to end, unless `event` is set first: then cancel `task` and wait for its
    end. True when `task` ended on its own (its result or error is then the caller's)."""
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return True
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False
