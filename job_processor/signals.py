"""Abort signals handed to handlers, and OS signal handling for `serve()`."""

from __future__ import annotations

import asyncio
import contextlib
import signal as os_signal
from collections.abc import Iterator
from typing import Any, Literal

from .errors import JobAbortedError

AbortReason = Literal["killed", "shutdown", "timeout"]


class AbortSignal:
    """Tells a handler to stop: `.aborted`, `.reason`, `await .wait()`, `.raise_if_aborted()`.

    The first reason wins. Reading `.aborted` is safe from a thread (plain handlers run in one).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reason: AbortReason | None = None

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
        return True

    async def wait(self) -> AbortReason:
        await self._event.wait()
        assert self._reason is not None
        return self._reason

    def raise_if_aborted(self) -> None:
        if self._reason is not None:
            raise JobAbortedError(self._reason)

    def __repr__(self) -> str:
        return f"AbortSignal(aborted={self.aborted}, reason={self._reason!r})"


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


class KillWatcher:
    """Delivers kill requests made from any process to the handlers running here.

    `kill_job` writes `kill_requested_at` on the job; while this process runs jobs it asks MongoDB
    ONE query per `poll_interval` for "my running jobs with a kill request" (never per job)."""

    def __init__(self, worker: Any, store: Any, clock: Any, interval: float) -> None:
        self.worker = worker
        self.store = store
        self.clock = clock
        self.interval = interval
        self.stop_event = asyncio.Event()

    async def loop(self) -> None:
        from pymongo.errors import PyMongoError

        from .clock import sleep_or_wake

        while not self.stop_event.is_set():
            if self.worker.runs:
                try:
                    await self.check()
                except PyMongoError as exc:
                    self.worker.log.warning("kill_check_failed", error=str(exc))
            await sleep_or_wake(self.clock, self.stop_event, self.interval)

    async def check(self) -> int:
        delivered = 0
        for doc in await self.store.kill_requests(self.worker.worker_id):
            run = self.worker.runs.get(str(doc["_id"]))
            if (
                run is not None
                and run.doc["run_id"] == doc["run_id"]
                and run.signal.abort("killed")
            ):
                self.worker.log.info(
                    "job_abort_requested",
                    reason="killed",
                    job_id=str(doc["_id"]),
                    job_name=run.doc["name"],
                    worker_id=self.worker.worker_id,
                )
                delivered += 1
        return delivered
