"""The abort signal handed to handlers."""

from __future__ import annotations

import asyncio
from typing import Literal

from .errors import JobAbortedError

AbortReason = Literal["killed", "shutdown", "timeout"]


class AbortSignal:
    """Tells a handler to stop: `.aborted`, `.reason`, `await .wait()`, `.raise_if_aborted()`.

    The first reason wins. Reading `.aborted` is safe from a thread (plain handlers run in one).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reason: AbortReason | None = None
        self._waiters: list[asyncio.Future[AbortReason]] = []

    @property
    def aborted(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> AbortReason | None:
        return self._reason

    def abort(self, reason: AbortReason) -> bool:
        """Fire the signal. Returns False if it had already fired (the first reason is kept)."""
        if self._reason is not None:
            return False
        self._reason = reason
        self._event.set()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(reason)
        self._waiters.clear()
        return True

    def future(self) -> asyncio.Future[AbortReason]:
        """A future resolved with the reason when the signal fires (no task: for the worker,
        which waits on the handler and on this together)."""
        fut: asyncio.Future[AbortReason] = asyncio.get_running_loop().create_future()
        if self._reason is not None:
            fut.set_result(self._reason)
        else:
            self._waiters.append(fut)
        return fut

    async def wait(self) -> AbortReason:
        await self._event.wait()
        assert self._reason is not None
        return self._reason

    def raise_if_aborted(self) -> None:
        if self._reason is not None:
            raise JobAbortedError(self._reason)

    def __repr__(self) -> str:
        return f"AbortSignal(aborted={self.aborted}, reason={self._reason!r})"
