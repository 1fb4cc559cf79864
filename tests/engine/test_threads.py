"""Plain (non-async) user code runs on the process's own threads (`engine.threads`): a call that
outlives its timeout never keeps another one from running, is counted until it returns, and
never keeps the process alive. No server needed."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from job_processor.engine.execution import call_maybe_async
from job_processor.engine.threads import UserThreads, _Call

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("WHO", default="nobody")


async def test_a_stuck_call_never_keeps_others_from_running() -> None:
    threads = UserThreads()
    release = threading.Event()
    loop = asyncio.get_running_loop()
    late: list[tuple[str, float]] = []
    all_back = asyncio.Event()

    def returned_late(name: str, seconds: float) -> None:  # called from the thread
        late.append((name, seconds))
        if len(late) == 40:
            loop.call_soon_threadsafe(all_back.set)

    for _ in range(40):  # far more than asyncio's default executor (min(32, cores + 4))
        started = threading.Event()

        def stuck(started: threading.Event = started) -> None:
            started.set()
            release.wait()

        call = asyncio.create_task(threads.run(stuck, on_late_return=returned_late))
        while not started.is_set():  # given up once running (one given up before it starts
            await asyncio.sleep(0.001)  # is skipped by its thread, never counted as stuck)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert threads.stuck == 40
    # every later call still runs at once, on a thread of its own
    results = await asyncio.gather(*(threads.run(lambda i=i: i * 2) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert threads.stats()["stuck"] == 40
    assert late == []

    # the calls given up are counted until they return, then reported
    release.set()
    await asyncio.wait_for(all_back.wait(), 10)
    assert all(name == "stuck" and seconds >= 0 for name, seconds in late)
    assert threads.stuck == 0
    async with asyncio.timeout(10):  # each thread is idle once its late return was reported
        while threads.stats()["busy"]:
            await asyncio.sleep(0.01)


async def test_a_call_given_up_before_it_started_does_not_run() -> None:
    threads = UserThreads()
    loop = asyncio.get_running_loop()
    ran: list[int] = []
    call = _Call(ran.append, (1,), contextvars.copy_context(), loop, loop.create_future())
    call.given_up = True  # as `run` does when its caller is cancelled before a thread took it
    threads._busy = 1
    threads._execute(call)
    assert ran == []
    assert call.finished
    assert threads.stats() == {"threads": 0, "busy": 0, "stuck": 0}
    assert threads._idle == 1  # the thread it was queued for is free for the next call


def test_a_forked_child_runs_plain_calls_on_threads_of_its_own() -> None:
    """The child inherits the parent's counters (an idle thread) but none of its threads."""
    code = textwrap.dedent(
        """
        import asyncio, os
        from job_processor.engine.execution import call_maybe_async

        async def one(x):
            async with asyncio.timeout(10):
                return await call_maybe_async(lambda: x * 2)

        assert asyncio.run(one(1)) == 2  # the parent now has one idle thread
        pid = os.fork()
        if pid == 0:
            try:
                print("child", asyncio.run(one(2)), flush=True)
                os._exit(0)
            except BaseException as exc:
                print("child failed", repr(exc), flush=True)
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print("parent", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "4", "parent", "0"], done.stdout + done.stderr


async def test_threads_are_reused_and_results_errors_and_context_come_back() -> None:
    threads = UserThreads()
    for i in range(20):
        assert await threads.run(lambda i=i: i + 1) == i + 1
    assert threads.stats()["threads"] == 1  # one after the other: the same thread

    with pytest.raises(ValueError, match="bad"):
        await threads.run(lambda: (_ for _ in ()).throw(ValueError("bad")))

    def stop_iteration() -> None:
        raise StopIteration("x")

    with pytest.raises(RuntimeError, match="StopIteration"):
        await threads.run(stop_iteration)

    WHO.set("caller")
    assert await threads.run(WHO.get) == "caller"


async def test_call_maybe_async_runs_plain_functions_on_the_process_threads() -> None:
    names: list[str] = []

    def plain(x: int) -> int:
        names.append(threading.current_thread().name)
        return x * 3

    async def coroutine(x: int) -> int:
        return x * 4

    async def forgot_await(x: int) -> Any:
        return coroutine(x)  # `return helper()`: a coroutine, not its result

    def plain_forgot(x: int) -> Any:
        return coroutine(x)

    assert await call_maybe_async(plain, 2) == 6
    assert await call_maybe_async(coroutine, 2) == 8
    assert await call_maybe_async(forgot_await, 2) == 8  # awaited, as for a plain def
    assert await call_maybe_async(plain_forgot, 2) == 8
    assert names[0].startswith("job-processor-user-")
    assert threading.current_thread().name not in names


async def test_idle_threads_end_and_new_ones_start_when_needed() -> None:
    threads = UserThreads(idle_timeout=0.05)
    assert await threads.run(lambda: 1) == 1
    while threads.stats()["threads"]:
        await asyncio.sleep(0.01)
    assert await threads.run(lambda: 2) == 2


def test_the_process_exits_while_a_given_up_call_still_runs() -> None:
    """asyncio.run waits for the default executor's threads; these are daemon threads."""
    code = textwrap.dedent(
        """
        import asyncio, threading
        from job_processor.engine.execution import call_maybe_async

        async def main():
            try:
                async with asyncio.timeout(0.05):
                    await call_maybe_async(threading.Event().wait)  # never returns
            except TimeoutError:
                print("given up", flush=True)

        asyncio.run(main())
        print("exiting", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["given", "up", "exiting"]


async def test_a_thread_that_cannot_start_fails_the_call_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = UserThreads()

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            async with asyncio.timeout(5):
                await threads.run(lambda: 1)
    assert threads.stats() == {"threads": 0, "busy": 0, "stuck": 0}
    assert await threads.run(lambda: 2) == 2


async def test_a_watched_context_says_whether_a_given_up_call_left_its_thread_running() -> None:
    from job_processor.engine.threads import watched_context

    threads = UserThreads()
    started, release = threading.Event(), threading.Event()

    def blocks() -> None:
        started.set()
        release.wait()

    async def hands_to_a_thread() -> None:
        await threads.run(blocks)

    async def only_awaits() -> None:
        await asyncio.Event().wait()

    try:
        for coro, left_running in ((hands_to_a_thread(), True), (only_awaits(), False)):
            context, give_ups = watched_context()
            task = asyncio.create_task(coro, context=context)
            if left_running:
                await asyncio.wait_for(asyncio.to_thread(started.wait), 5)
            else:
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert give_ups.left_running is left_running
    finally:
        release.set()
