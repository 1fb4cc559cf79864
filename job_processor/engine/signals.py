"""OS signal handling for `serve()`: SIGTERM / SIGINT stop gracefully; another one forces it."""

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
    *,
    then: asyncio.Event | None = None,
) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set `event` instead of killing the process; with `then`,
    a signal that finds `event` already set sets `then` (a second signal forces the stop)."""
    loop = asyncio.get_running_loop()

    def received() -> None:
        if then is not None and event.is_set():
            then.set()
        event.set()

    installed = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, received)
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
