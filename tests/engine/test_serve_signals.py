"""`serve()` and signals: one SIGTERM/SIGINT stops gracefully, a second one forces the stop,
even when both came while `start()` was still running (the second was absorbed before)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from job_processor import AbortSignal, Job, JobDef
from job_processor.engine.signals import stop_on_signals
from tests.helpers import make


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


async def delivered() -> None:
    """Let the loop read the signal from its wake-up fd and call the handler (a few turns)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_signal_once_the_event_is_set_sets_then() -> None:
    stop, force = asyncio.Event(), asyncio.Event()
    with stop_on_signals(stop, then=force):
        os.kill(os.getpid(), signal.SIGTERM)
        await delivered()
        assert stop.is_set() and not force.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        await delivered()
        assert force.is_set()


async def _serve_with_signals_during_start(db: Any, signals: int) -> bool:
    processor = await make(db, {"noop": JobDef(handler=noop)})
    start = processor.start

    async def start_then_signalled() -> None:
        await start()
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            await delivered()

    processor.start = start_then_signalled  # type: ignore[method-assign]
    stop = asyncio.Event()
    await asyncio.wait_for(processor.serve(stop), 30)
    assert stop.is_set()
    return processor.stop_forced


async def test_one_signal_during_start_stops_gracefully(db: Any) -> None:
    assert await _serve_with_signals_during_start(db, 1) is False


async def test_a_second_signal_during_start_forces_the_stop(db: Any) -> None:
    assert await _serve_with_signals_during_start(db, 2) is True


async def test_signals_during_the_stop_of_a_cancelled_serve_still_force_it(db: Any) -> None:
    """serve(): "A second signal, during that stop ... ends the stop at once". A serve()
    cancelled by its caller (a TaskGroup whose sibling failed) ran a graceful stop no signal
    could cut short: the process ignored Ctrl-C / SIGTERM for the whole shutdown_grace."""
    from job_processor.engine.signals import _LISTENERS
    from tests.helpers import wait_for

    started = asyncio.Event()

    async def stubborn(job: Job, signal: AbortSignal) -> None:
        started.set()
        for _ in range(200):  # ignores the abort signal: only a cancel ends it
            await asyncio.sleep(0.05)

    p = await make(db, {"stubborn": JobDef(handler=stubborn)}, shutdown_grace=8.0)
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(p.serve())
    try:
        await wait_for(lambda: p.started)
        await p.schedule_job("stubborn")
        await asyncio.wait_for(started.wait(), 15)
        serving.cancel()  # e.g. a TaskGroup sibling failed
        await delivered()
        for sig in (signal.SIGTERM, signal.SIGINT):  # the operator insists: force it
            if serving.done():  # forced by the first: its handlers are gone (SIG_DFL)
                break
            assert _LISTENERS.get(loop, {}).get(sig), "serve() no longer handles signals"
            os.kill(os.getpid(), sig)
            await delivered()
        done, _ = await asyncio.wait({serving}, timeout=4)
        assert done, "two signals during a cancelled serve()'s stop did not end it"
        assert p.stop_forced
    finally:
        await asyncio.wait({serving}, timeout=20)
        await p.stop()


async def test_a_cancel_landing_as_a_signal_forces_the_stop_is_not_swallowed(db: Any) -> None:
    """unless_set()'s last await swallowed every BaseException once a second signal forced
    the stop: a cancel landing there (a wait_for expiring, a TaskGroup sibling failing) was
    lost and serve() returned normally."""
    from tests.helpers import wait_for

    began = asyncio.Event()

    async def stubborn(job: Job, signal: AbortSignal) -> None:
        began.set()
        for _ in range(200):  # ignores the abort signal: only a cancel ends it
            await asyncio.sleep(0.05)

    p = await make(db, {"stubborn": JobDef(handler=stubborn)}, shutdown_grace=8.0)
    stop = asyncio.Event()
    serving = asyncio.create_task(p.serve(stop))
    try:
        await wait_for(lambda: p.started)
        await p.schedule_job("stubborn")
        await asyncio.wait_for(began.wait(), 15)
        stop.set()  # the first SIGTERM: the graceful stop begins
        await wait_for(lambda: any(t.get_name() == "graceful-stop" for t in asyncio.all_tasks()))
        graceful = [t for t in asyncio.all_tasks() if t.get_name() == "graceful-stop"]
        os.kill(os.getpid(), signal.SIGTERM)  # the second: forces it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not graceful[0].cancelling():  # serve() is now cancelling its stop ...
            assert loop.time() < deadline, "the second signal did not force the stop"
            await asyncio.sleep(0)
        serving.cancel()  # ... as its caller gives up (a wait_for timeout, a TaskGroup)
        done, _ = await asyncio.wait({serving}, timeout=10)
        assert done and p.stop_forced
        assert serving.cancelled(), f"serve() returned normally ({serving.exception()!r})"
    finally:
        await asyncio.wait({serving}, timeout=20)
        await p.stop()
