"""A checkpoint cut short by a cancel (max runtime, then the grace's cancel) whose write may land
yet (outside reviews' findings, each failing before its fix): the final document and
on_job_exited hold the state MongoDB holds, whether that write landed, a cleanup checkpoint
came after it, or a retry of the earlier write landed last; a cleanup checkpoint is never cut
off nor turned into an internal error by the settling of an earlier one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, Job, JobDef, JobStatus, init_job_processor
from tests.helpers import FAST, make, wait_for, wait_status

S = JobStatus
ENDED = (S.ERRORED, S.FINISHED, S.PAUSED)


class Run:
    """The handler's task (to see its cancel) and the state writes the server applied."""

    def __init__(self) -> None:
        self.task: list[asyncio.Task[Any]] = []
        self.state_writes: list[Any] = []
        self.hook_saw: list[Any] = []
        self.cleaned: list[str] = []

    async def until_cancelled(self) -> None:
        while not self.task[0].cancelling():
            await asyncio.sleep(0.01)

    def slow_reply(self, monkeypatch: pytest.MonkeyPatch, after_cancel: float, first: bool) -> None:
        """A state write's reply (the first one only, with `first`) comes `after_cancel`
        seconds after the handler was cancelled; the write itself is applied at once."""
        original = AsyncCollection.update_one

        async def update_one(self_: Any, filter: Any, update: Any, *a: Any, **kw: Any) -> Any:
            result = await original(self_, filter, update, *a, **kw)
            if isinstance(update, dict) and "state" in update.get("$set", {}):
                self.state_writes.append(update["$set"]["state"])
                if not first or len(self.state_writes) == 1:
                    await self.until_cancelled()
                    await asyncio.sleep(after_cancel)
            return result

        monkeypatch.setattr(AsyncCollection, "update_one", update_one)

    def handler(self, cleanup: bool, line: bool = False) -> Callable[..., Awaitable[str]]:
        """Checkpoints {"batch": 1}; with `cleanup`, checkpoints {"batch": 2} when cancelled."""

        async def h(job: Job, signal: AbortSignal) -> str:
            self.task.append(asyncio.current_task())  # type: ignore[arg-type]
            if line:
                job.log("indexed", batch=1)
            try:
                await job.checkpoint({"batch": 1})
            except asyncio.CancelledError:
                if cleanup:  # save where we are, then stop (not swallowed)
                    try:
                        await job.checkpoint({"batch": 2})
                        self.cleaned.append("saved")
                    except Exception as exc:
                        self.cleaned.append(type(exc).__name__)
                raise
            return "ok"

        return h

    async def hook(self, job: Job) -> None:
        self.hook_saw.append(job.state)

    def definition(self, cleanup: bool, line: bool = False) -> JobDef:
        return JobDef(
            handler=self.handler(cleanup, line),
            on_job_exited=self.hook,
            max_runtime_in_minutes=0.01,
            max_attempts=1,
        )

    async def ended(self, db: Any, definition: JobDef, **options: Any) -> Any:
        """Run the job to its end and its hook; the job as stored."""
        p = await make(db, {"h": definition}, shutdown_grace=0.1, **options)
        async with p:
            job = await p.schedule_job("h")
            done = await wait_status(p, job.id, *ENDED, timeout=20)
            await wait_for(lambda: len(self.hook_saw) == 1, timeout=10)
        return done


@pytest.mark.parametrize("with_line", [True, False])
async def test_hook_sees_a_checkpoint_that_landed_while_its_call_was_cancelled(
    db: Any, monkeypatch: pytest.MonkeyPatch, with_line: bool
) -> None:
    """The write landed, its reply came after the cancel: the final document and the hook
    kept the previous state."""
    run = Run()
    run.slow_reply(monkeypatch, after_cancel=0, first=False)
    done = await run.ended(db, run.definition(cleanup=False, line=with_line))
    assert done.state == {"batch": 1}  # stored in MongoDB
    assert run.hook_saw == [{"batch": 1}]  # the hook is given the job as its worker wrote it


async def test_hook_sees_the_state_mongodb_holds_after_a_cleanup_checkpoint(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run()
    run.slow_reply(monkeypatch, after_cancel=0.3, first=True)
    done = await run.ended(db, run.definition(cleanup=True))
    assert run.state_writes[:2] == [{"batch": 1}, {"batch": 2}]
    assert done.state == {"batch": 2}  # stored in MongoDB: the later checkpoint
    assert run.hook_saw == [{"batch": 2}], f"the hook saw {run.hook_saw}, MongoDB: {done.state}"


async def test_cleanup_checkpoint_waiting_on_a_slow_cancelled_one_is_no_internal_error(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier write's reply 2.5 s after the cancel: under FLUSH_BUDGET (5 s), over the
    second a cancelled handler is given."""
    run = Run()
    run.slow_reply(monkeypatch, after_cancel=2.5, first=True)
    done = await run.ended(db, run.definition(cleanup=True))
    await wait_for(lambda: bool(run.cleaned), timeout=10)  # the cleanup checkpoint ends too
    assert "internal error" not in (done.error or ""), done.error


async def test_a_cleanup_checkpoint_behind_a_slow_cancelled_one_is_not_cut_off(
    db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The earlier write's reply 1.5 s after the cancel (under worker_timeout and
    FLUSH_BUDGET): the handler re-raised its cancellation, its cleanup checkpoint is kept."""
    run = Run()
    run.slow_reply(monkeypatch, after_cancel=1.5, first=True)
    logger = logging.getLogger("test.checkpoint_cancel.cleanup")
    p = await init_job_processor(
        db,
        jobs={"h": run.definition(cleanup=True)},
        logger=logger,
        **(FAST | {"shutdown_grace": 0.1}),
    )
    with caplog.at_level(logging.INFO, logger=logger.name):
        async with p:
            job = await p.schedule_job("h")
            done = await wait_status(p, job.id, *ENDED, timeout=20)
            await wait_for(lambda: bool(run.cleaned), timeout=10)
    events = [r.__dict__.get("event") for r in caplog.records]
    assert "internal error" not in (done.error or ""), done.error
    assert "handler_ignored_cancel" not in events, "the handler re-raised its cancellation"
    assert run.cleaned == ["saved"], run.cleaned
    assert done.state == {"batch": 2}, done.state


async def test_mongodb_state_is_the_cleanup_checkpoints_after_a_retried_cancelled_one(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier write's first try is lost to a reset (not applied), seen only once the
    cleanup checkpoint was written: its retry lands last."""
    run = Run()
    original = AsyncCollection.update_one

    async def first_try_drops(self: Any, filter: Any, update: Any, *a: Any, **kw: Any) -> Any:
        state = update.get("$set", {}).get("state") if isinstance(update, dict) else None
        if state == {"batch": 1} and not run.state_writes:
            await run.until_cancelled()
            await wait_for(lambda: {"batch": 2} in run.state_writes, timeout=5)
            run.state_writes.append("reset")
            raise AutoReconnect("connection reset")
        result = await original(self, filter, update, *a, **kw)
        if state is not None and result.matched_count:
            run.state_writes.append(state)
        return result

    monkeypatch.setattr(AsyncCollection, "update_one", first_try_drops)
    done = await run.ended(db, run.definition(cleanup=True))
    # the cleanup checkpoint was written, then the retry of the cancelled one overwrote it
    assert run.state_writes[:3] == [{"batch": 2}, "reset", {"batch": 1}], run.state_writes
    assert run.hook_saw == [done.state], f"the hook saw {run.hook_saw}, MongoDB: {done.state}"
    assert done.state == {"batch": 2}, f"MongoDB holds the earlier state {done.state}"
