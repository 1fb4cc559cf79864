"""OS signal handling for `serve()`: SIGTERM / SIGINT start a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal as os_signal
from collections.abc import Iterator


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
