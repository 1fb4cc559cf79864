"""Where plain (non-async) handlers, hooks and subscribers run: threads of this process's own.

A Python thread cannot be cancelled. A plain function that outlives its timeout (a handler past
its grace period, a hook past `on_job_exited_timeout`) keeps running, and with
`asyncio.to_thread` it would keep one of the loop's default executor threads (min(32, cores + 4)
of them): a handful of such calls and no plain function would run any more, and
`asyncio.run` (so `job-processor run`) would wait for them before exiting. Here instead:

- an idle thread is reused, and a new one is started whenever none is idle, so a stuck call
  never delays another one;
- the threads are daemon threads: the process exits when its work is done, whatever they are
  still doing (the job's status was written when its run was given up);
- a call given up while its function is still running is counted (`UserThreads.stuck`) until
  it returns, and logged when it does: the heartbeat records the count on the worker document
  and `job-processor health` shows it.

Each call runs in a copy of the caller's context (contextvars), as with `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_names = itertools.count(1)


class GiveUps:
    """Whether a call given up in a context left its function running on its thread (a call
    given up before a thread took it never runs): see `watched_context`."""

    left_running = False


_GIVE_UPS: contextvars.ContextVar[GiveUps | None] = contextvars.ContextVar(
    "job_processor_give_ups", default=None
)


def watched_context() -> tuple[contextvars.Context, GiveUps]:
    """A copy of the current context in which the calls given up are recorded: run a task in
    it (`asyncio.create_task(coro, context=...)`), then read `GiveUps.left_running`."""
    context, give_ups = contextvars.copy_context(), GiveUps()
    context.run(_GIVE_UPS.set, give_ups)
    return context, give_ups


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    given_up: bool = False
    running: bool = False
    finished: bool = False
    on_late_return: Callable[[str, float], None] | None = field(default=None, repr=False)
    started: float = 0.0


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled meanwhile: nobody waits for it any more
        return
    if ok:
        future.set_result(value)
    elif isinstance(value, StopIteration):  # a future refuses it (as a coroutine would)
        future.set_exception(RuntimeError(f"the function raised StopIteration: {value!r}"))
    else:
        future.set_exception(value)


class UserThreads:
    """Runs plain functions on reusable daemon threads, one per concurrent call (see the module
    docstring). `idle_timeout`: how long an idle thread waits for work before it ends."""

    def __init__(self, idle_timeout: float = 60.0) -> None:
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._idle = 0
        self._threads = 0
        self._busy = 0
        self._stuck = 0

    @property
    def stuck(self) -> int:
        """Calls given up (timed out or cancelled) whose function is still running."""
        return self._stuck

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"threads": self._threads, "busy": self._busy, "stuck": self._stuck}

    async def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_late_return: Callable[[str, float], None] | None = None,
    ) -> Any:
        """fn(*args) on a thread; its result or exception. Cancelling the caller gives the call
        up: the function goes on running and is counted as stuck until it returns (then
        `on_late_return(name, seconds_since_start)` is called, from that thread)."""
        loop = asyncio.get_running_loop()
        call = _Call(fn, args, contextvars.copy_context(), loop, loop.create_future())
        call.on_late_return = on_late_return
        self._submit(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            with self._lock:
                if not call.finished and not call.given_up:
                    call.given_up = True
                    if call.running:  # else its thread will skip it
                        self._stuck += 1
                        give_ups = _GIVE_UPS.get()
                        if give_ups is not None:
                            give_ups.left_running = True
            raise

    def _after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads: start from nothing (else its first
        plain call would wait for a thread that does not exist there)."""
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._idle = self._threads = self._busy = self._stuck = 0

    def _submit(self, call: _Call) -> None:
        with self._lock:
            self._busy += 1
            if self._idle > 0:
                self._idle -= 1  # that thread's next get() is this call
                self._queue.put(call)
                return
            self._threads += 1
        thread = threading.Thread(
            target=self._serve, args=(call,), name=f"job-processor-user-{next(_names)}", daemon=True
        )
        try:
            thread.start()
        except BaseException:  # "can't start new thread": the call fails, nothing waits for it
            with self._lock:
                self._busy -= 1
                self._threads -= 1
            raise

    def _serve(self, call: _Call) -> None:
        while True:
            self._execute(call)  # this thread is idle again once it has returned
            try:
                call = self._queue.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counted on this thread: it ends
                        self._idle -= 1
                        self._threads -= 1
                        return
                # a submitter took this thread's idle slot just now: its call is on its way
                call = self._queue.get()

    def _execute(self, call: _Call) -> None:
        with self._lock:
            if call.given_up:  # given up before it started: it does not run at all
                call.finished = True
                self._busy -= 1
                self._idle += 1
                return
            call.running = True
        call.started = time.monotonic()
        ok = True
        try:
            value: Any = call.context.run(call.fn, *call.args)
        except BaseException as exc:  # handed to the awaiting coroutine
            ok, value = False, exc
        with self._lock:
            call.finished = True
            late = call.given_up
            if late:
                self._stuck -= 1
            else:
                # idle before the result is handed back: the caller's next call reuses this thread
                self._busy -= 1
                self._idle += 1
        if late:
            try:
                if call.on_late_return is not None:
                    elapsed = time.monotonic() - call.started
                    with contextlib.suppress(Exception):  # a log line must not kill the thread
                        call.on_late_return(getattr(call.fn, "__name__", repr(call.fn)), elapsed)
            finally:
                with self._lock:  # idle again once its late return was reported
                    self._busy -= 1
                    self._idle += 1
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            call.loop.call_soon_threadsafe(_settle, call.future, ok, value)


USER_THREADS = UserThreads()
"""The process's threads for plain user code (handlers, hooks, subscribers)."""

if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=USER_THREADS._after_fork_in_child)
