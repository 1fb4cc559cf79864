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

import pytest

from job_processor.engine.execution import call_maybe_async
from job_processor.engine.threads import UserThreads

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
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await threads.run(release.wait, on_late_return=returned_late)
    assert threads.stuck == 40
    # every later call still runs at once, on a thread of its own
    results = await asyncio.gather(*(threads.run(lambda i=i: i * 2) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert threads.stats()["stuck"] == 40
    assert late == []

    # the calls given up are counted until they return, then reported
    release.set()
    await asyncio.wait_for(all_back.wait(), 10)
    assert all(name == "wait" and seconds >= 0 for name, seconds in late)
    assert threads.stuck == 0
    assert threads.stats()["busy"] == 0


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

    assert await call_maybe_async(plain, 2) == 6
    assert await call_maybe_async(coroutine, 2) == 8
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
