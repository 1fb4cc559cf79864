"""OS signal handling for `serve()`: SIGTERM / SIGINT stop gracefully; another one forces it."""

from __future__ import annotations

import asyncio
import contextlib
import signal as os_signal
import weakref
from collections.abc import Iterator
from typing import Any

#: Per event loop and signal, the (event, then) pairs inside `stop_on_signals` now: one handler
#: per signal serves them all (two processors served in one process both stop on one SIGTERM).
_LISTENERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[int, list[tuple[asyncio.Event, asyncio.Event | None]]]
] = weakref.WeakKeyDictionary()


def _received(loop: asyncio.AbstractEventLoop, sig: int) -> None:
    pairs = list(_LISTENERS.get(loop, {}).get(sig, []))
    already = [event.is_set() for event, _ in pairs]  # before any is set by this signal
    for (event, then), was_set in zip(pairs, already, strict=True):
        if then is not None and was_set:
            then.set()
        event.set()


#: What stops a command that owns a server running in a session of its own (`job-processor
#: server`, the demo): a closed terminal (SIGHUP) too, or its server would stay, orphaned.
STOP_OR_HANGUP = (os_signal.SIGTERM, os_signal.SIGINT, os_signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(
    event: asyncio.Event,
    signals: tuple[os_signal.Signals, ...] = (os_signal.SIGTERM, os_signal.SIGINT),
    *,
    then: asyncio.Event | None = None,
    ignore_after: bool = False,
) -> Iterator[None]:
    """While inside, SIGTERM/SIGINT set `event` instead of killing the process; with `then`,
    a signal that finds `event` already set sets `then` (a second signal forces the stop).
    Nested or concurrent uses each get every signal; the default action comes back when the
    last one leaves, unless `ignore_after` (a command whose stop is over: a signal repeated
    while the process exits would kill it by the signal, an exit code no one documents)."""
    loop = asyncio.get_running_loop()
    listeners = _LISTENERS.setdefault(loop, {})
    pair = (event, then)
    installed = []
    for sig in signals:
        pairs = listeners.setdefault(sig, [])
        if not pairs:
            try:
                loop.add_signal_handler(sig, _received, loop, sig)
            except (NotImplementedError, RuntimeError):
                continue
        pairs.append(pair)
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            pairs = listeners[sig]
            pairs.remove(pair)
            if not pairs:
                loop.remove_signal_handler(sig)
                if ignore_after:
                    os_signal.signal(sig, os_signal.SIG_IGN)


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
    # wait for its end, never swallowing the caller's own cancellation (it goes on)
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a forced task's outcome is nobody's
    return False
