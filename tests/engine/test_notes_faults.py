"""A running handler's progress and log lines at their edges: text BSON cannot store (a lone
surrogate from a file name that is not UTF-8, a NUL in a field name) never fails a write nor
drops the good lines; notes given back after a checkpoint carried newer ones never revert
the progress nor reorder the lines; a write retried after a lost reply pushes its lines
once; a field that holds itself, or is nested deep, is kept as text."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import AutoReconnect

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.core import notes as N
from job_processor.storage.jobs import JobStore
from tests.helpers import make, wait_status

S = JobStatus

# A str holding a lone surrogate: what os.listdir()/os.fsdecode() give for a file name that is
# not UTF-8 (surrogateescape), or json.loads('"\\ud800"'). A NUL in a key: a C string, a header.
BAD = "report-\udcff.csv"


async def _log_bad_message(job: Job) -> None:
    job.log(f"read {BAD}")


async def _log_bad_field(job: Job) -> None:
    job.log("read", file=BAD)


async def _log_nul_key(job: Job) -> None:
    job.log("headers", **{"x-a\x00b": "1"})


async def _bad_progress_message(job: Job) -> None:
    await job.report_progress(2, 2, f"reading {BAD}")


# ---- 1. text BSON cannot encode in a line or a progress message --------------------------------


@pytest.mark.parametrize(
    "bad", [_log_bad_message, _log_bad_field, _log_nul_key, _bad_progress_message]
)
async def test_a_line_bson_cannot_encode_does_not_fail_the_final_write(db: Any, bad: Any) -> None:
    runs: list[int] = []

    async def h(job: Job, signal: AbortSignal) -> str:
        runs.append(job.attempt)
        await job.report_progress(1, 2)
        job.log("good line")
        await asyncio.sleep(0.05)  # that write goes out now: what follows waits for the final
        await bad(job)
        return "done"

    p = await make(db, {"h": JobDef(handler=h, max_attempts=2)})
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=20)
    # was: errored by the worker's own reconciliation after worker_timeout, "its worker lost
    # track of the run (the final write failed or a reply was lost)", result lost; with attempts
    # left, the successful handler is run again
    assert done.status == S.FINISHED, done.error
    assert runs == [1]
    assert done.result == "done"


async def test_a_line_bson_cannot_encode_does_not_drop_the_good_lines_of_its_write(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = asyncio.Event()
    original = JobStore.save_notes

    async def spy(self: JobStore, *args: Any) -> bool:
        try:
            return await original(self, *args)
        finally:
            tried.set()

    monkeypatch.setattr(JobStore, "save_notes", spy)

    async def h(job: Job, signal: AbortSignal) -> str:
        job.log("good line 1")
        job.log(f"read {BAD}")
        job.log("good line 2")
        await asyncio.wait_for(tried.wait(), 10)  # the coalesced write was made
        return "done"

    p = await make(db, {"h": JobDef(handler=h)})
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED)
    # was: [] (the write raised UnicodeEncodeError inside its task: all three lines gone)
    messages = [line["message"] for line in done.logs]
    assert "good line 1" in messages and "good line 2" in messages, messages


async def test_a_checkpoint_does_not_fail_because_of_an_earlier_log_line(db: Any) -> None:
    errors: list[BaseException] = []

    async def h(job: Job, signal: AbortSignal) -> str:
        job.log(f"read {BAD}")
        try:
            await job.checkpoint({"step": 1})  # a valid state
        except Exception as exc:
            errors.append(exc)
        return "done"

    p = await make(db, {"h": JobDef(handler=h)})
    async with p:
        job = await p.schedule_job("h")
        await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=20)
    assert errors == []  # was: [UnicodeEncodeError(... surrogates not allowed)]


# ---- 2. a coalesced write that fails after a checkpoint carried newer notes --------------------


async def test_notes_given_back_after_a_checkpoint_neither_revert_progress_nor_reorder_lines(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalled = asyncio.Event()
    gate = asyncio.Event()
    original = JobStore.save_notes
    failed = {"n": 0}

    async def flaky(
        self: JobStore, job_id: Any, run_id: str, update: Any, budget: float, *more: Any
    ) -> bool:
        if "state" in update.get("$set", {}) or failed["n"]:
            return await original(self, job_id, run_id, update, budget, *more)
        failed["n"] += 1  # the first write of its own: caught in an outage past its 5 s budget
        stalled.set()
        await gate.wait()
        raise AutoReconnect("connection lost (simulated outage)")

    monkeypatch.setattr(JobStore, "save_notes", flaky)

    async def h(job: Job, signal: AbortSignal) -> str:
        await job.report_progress(1, 2, "first half")
        job.log("one")
        await asyncio.wait_for(stalled.wait(), 10)  # its coalesced write is under way
        await job.report_progress(2, 2, "second half")
        job.log("two")
        # the earlier write gives up (its notes given back) while the checkpoint is under way:
        # the checkpoint waits for it, then carries "one", "two" and the progress 2/2
        asyncio.get_running_loop().call_soon(gate.set)
        await job.checkpoint({"step": 2})
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)})
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED)
    assert done.progress is not None
    # was: the finished job shows 1 / 2 "first half" (the last progress reported was 2 / 2)
    assert (done.progress["done"], done.progress["message"]) == (2, "second half")
    # was: ["two", "one"]
    assert [line["message"] for line in done.logs] == ["one", "two"]


# ---- 3. a notes write whose reply was lost is applied twice ------------------------------------


async def test_a_checkpoint_whose_reply_was_lost_does_not_write_its_lines_twice(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AsyncCollection.update_one
    lost = {"n": 0}

    async def reply_lost(
        self: AsyncCollection, filter: Any, update: Any, *a: Any, **kw: Any
    ) -> Any:
        result = await original(self, filter, update, *a, **kw)
        notes = isinstance(update, dict) and "$push" in update
        if notes and "status" not in update.get("$set", {}) and not lost["n"]:
            lost["n"] += 1  # applied by the server; the connection drops before the reply
            raise AutoReconnect("connection closed (simulated: reply lost)")
        return result

    monkeypatch.setattr(AsyncCollection, "update_one", reply_lost)

    async def h(job: Job, signal: AbortSignal) -> str:
        job.log("indexed", batch=1)
        await job.checkpoint({"batch": 1})  # carries the line; ride_out retries it
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)})
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED)
    assert lost["n"] == 1
    # was: ["indexed", "indexed"]
    assert [line["message"] for line in done.logs] == ["indexed"]


# ---- 5. a field that holds itself, or nested deeply, fails the log call ------------------------


@pytest.mark.parametrize("kind", ["cycle", "deep"])
def test_a_log_field_that_holds_itself_or_is_deep_is_kept_as_text(kind: str) -> None:
    if kind == "cycle":
        value: Any = {"name": "root"}
        value["parent"] = value
    else:
        value = cur = []
        for _ in range(1200):
            cur.append([])
            cur = cur[0]
    now = dt.datetime.now(dt.UTC)
    line = N.log_line(1, "info", "tree", {"tree": value}, now)  # was: RecursionError
    assert line["message"] == "tree"


async def test_a_handler_logging_a_cyclic_field_is_not_failed_by_it(db: Any) -> None:
    async def h(job: Job, signal: AbortSignal) -> str:
        node: dict[str, Any] = {"name": "child"}
        node["parent"] = {"name": "root", "children": [node]}
        job.log("visited", node=node)
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)})
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED)
    assert done.status == S.FINISHED, done.error  # was: errored, "RecursionError: ..."


class _ClosedShelf(Mapping[str, Any]):
    """A mapping whose data is gone (a `shelve` after close(): "invalid operation on closed
    shelf")."""

    def __getitem__(self, key: str) -> Any:
        raise ValueError("invalid operation on closed shelf")

    def __iter__(self) -> Iterator[str]:
        raise ValueError("invalid operation on closed shelf")

    def __len__(self) -> int:
        return 1


class _ClosedRows(list[Any]):
    def __iter__(self) -> Iterator[Any]:
        raise ValueError("cursor closed")


async def test_a_log_field_that_fails_to_iterate_is_kept_as_text_and_never_fails_the_run(
    db: Any,
) -> None:
    """guide.md: "a log call never fails a run". A mapping or a list whose iteration raises
    was: the handler's job.log() raised ValueError, and the run errored."""

    async def h(job: Job, signal: AbortSignal) -> str:
        job.log("cached", cache=_ClosedShelf(), rows=_ClosedRows([1]), nested={"c": _ClosedShelf()})
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)})
    done = await p.run_job("h")
    assert (done.status, done.error, done.result) == (S.FINISHED, None, "ok")
    (line,) = done.logs
    assert line["message"] == "cached"
    fields = line["fields"]
    assert isinstance(fields["cache"], str) and isinstance(fields["rows"], str)
    assert isinstance(fields["nested"]["c"], str)


# ---- a handler cancelled (max runtime) while its checkpoint is under way -----------------------


async def test_a_cancel_while_a_checkpoint_waits_for_a_notes_write_is_not_swallowed(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalled = asyncio.Event()
    handler_task: list[asyncio.Task[Any]] = []
    original = JobStore.save_notes

    async def slow(
        self: JobStore, job_id: Any, run_id: str, update: Any, budget: float, *more: Any
    ) -> bool:
        if "state" in update.get("$set", {}) or stalled.is_set():
            return await original(self, job_id, run_id, update, budget, *more)
        stalled.set()  # the coalesced write is under way (a slow server, an outage ridden out)
        while not handler_task[0].cancelling():  # until the handler is cancelled
            await asyncio.sleep(0.01)
        return await original(self, job_id, run_id, update, budget, *more)

    monkeypatch.setattr(JobStore, "save_notes", slow)
    went_on: list[str] = []

    async def h(job: Job, signal: AbortSignal) -> str:
        handler_task.append(asyncio.current_task())  # type: ignore[arg-type]
        job.log("one")
        await asyncio.wait_for(stalled.wait(), 10)
        job.log("two")
        await job.checkpoint({"step": 1})  # waits for the write under way; max runtime cancels
        went_on.append("past the checkpoint")  # a cancelled handler never gets here
        return "ok"

    definition = JobDef(handler=h, max_runtime_in_minutes=0.01, max_attempts=1)
    p = await make(db, {"h": definition}, shutdown_grace=0.1)
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=20)
    assert went_on == [] and done.status == S.ERRORED
    assert [line["message"] for line in done.logs] == ["one", "two"]


async def test_a_checkpoint_cancelled_after_its_write_landed_pushes_its_lines_once(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AsyncCollection.update_one
    handler_task: list[asyncio.Task[Any]] = []

    async def slow_reply(
        self: AsyncCollection, filter: Any, update: Any, *a: Any, **kw: Any
    ) -> Any:
        result = await original(self, filter, update, *a, **kw)
        if isinstance(update, dict) and "state" in update.get("$set", {}):
            while not handler_task[0].cancelling():  # applied; the reply is slow
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # the cancellation arrives here
        return result

    monkeypatch.setattr(AsyncCollection, "update_one", slow_reply)

    async def h(job: Job, signal: AbortSignal) -> str:
        handler_task.append(asyncio.current_task())  # type: ignore[arg-type]
        job.log("indexed", batch=1)
        await job.checkpoint({"batch": 1})
        return "ok"

    definition = JobDef(handler=h, max_runtime_in_minutes=0.01, max_attempts=1)
    p = await make(db, {"h": definition}, shutdown_grace=0.1)
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=20)
    assert done.state == {"batch": 1}
    assert [line["message"] for line in done.logs] == ["indexed"]


@pytest.mark.parametrize("ends", ["after_the_outage", "during_the_outage"])
async def test_lines_whose_write_landed_before_an_outage_longer_than_its_budget_are_pushed_once(
    db: Any, monkeypatch: pytest.MonkeyPatch, ends: str
) -> None:
    """A coalesced notes write lands, its reply is lost, and MongoDB then stays unreachable
    longer than the write's own budget (FLUSH_BUDGET, shortened here), shorter than
    worker_timeout: the next write that carries lines (here the final one) first asks whether
    it landed, as long as the final write rides the outage out (the run may end during it),
    and its lines are pushed once."""
    from job_processor.engine import notes as engine_notes

    monkeypatch.setattr(engine_notes, "FLUSH_BUDGET", 0.3)
    seconds, resume = (1.0, 0.3) if ends == "after_the_outage" else (3.0, -2.2)
    outage = _outage_after_a_lost_notes_reply(monkeypatch, seconds)
    loop = asyncio.get_running_loop()

    async def h(job: Job, signal: AbortSignal) -> str:
        job.log("indexed", batch=1)
        deadline = loop.time() + 20
        while outage["until"] is None or loop.time() < outage["until"] + resume:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        job.log("done")
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)}, worker_timeout=12.0, heartbeat_interval=1.0)
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=30)
    assert done.status == S.FINISHED and done.attempt == 1
    assert [line["message"] for line in done.logs] == ["indexed", "done"]


def _outage_after_a_lost_notes_reply(
    monkeypatch: pytest.MonkeyPatch,
    seconds: float,
    checkpoint_first: bool = False,
    lost_state: Any = None,
) -> dict[str, Any]:
    """Writes and reads of the running job (their filter names its run_id) fail for `seconds`:
    from a coalesced notes write that reaches the server, its reply lost (or, with
    `checkpoint_first`, from a checkpoint's first try; the next notes write during the outage
    then reaches the server, its reply lost; or, with `lost_state`, from the checkpoint that
    saves that state, which reaches the server, its reply lost)."""
    original_update = AsyncCollection.update_one
    original_find = AsyncCollection.find_one
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"until": None, "lost": False, "stalled": asyncio.Event()}

    def down(filter: Any) -> bool:
        until = state["until"]
        return until is not None and loop.time() < until and "run_id" in (filter or {})

    async def update_one(
        self: AsyncCollection, filter: Any, update: Any, *a: Any, **kw: Any
    ) -> Any:
        fields = set(update.get("$set", {}))
        notes_only = "$push" in update and not {"status", "state"} & fields
        checkpoint = "state" in fields and "status" not in fields
        if lost_state is not None:  # only that checkpoint's write is lost
            notes_only = checkpoint and update["$set"]["state"] == lost_state
        if checkpoint_first and checkpoint and state["until"] is None:
            state["until"] = loop.time() + seconds
            state["stalled"].set()
            raise AutoReconnect("connection refused (simulated outage)")
        lose = notes_only and not state["lost"] and (down(filter) or not checkpoint_first)
        if lose:
            state["lost"] = True  # this one reaches the server; its reply is lost
            await original_update(self, filter, update, *a, **kw)
            if state["until"] is None:
                state["until"] = loop.time() + seconds
            raise AutoReconnect("connection closed (simulated: reply lost)")
        if down(filter):
            raise AutoReconnect("connection refused (simulated outage)")
        return await original_update(self, filter, update, *a, **kw)

    async def find_one(self: AsyncCollection, filter: Any = None, *a: Any, **kw: Any) -> Any:
        if down(filter):
            raise AutoReconnect("connection refused (simulated outage)")
        return await original_find(self, filter, *a, **kw)

    monkeypatch.setattr(AsyncCollection, "update_one", update_one)
    monkeypatch.setattr(AsyncCollection, "find_one", find_one)
    return state


async def test_lines_of_an_unsure_write_are_pushed_once_when_a_checkpoint_lands_after_it(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint carrying a line rides out an outage; meanwhile another task of the handler
    logs. The coalesced write of that line went out during the outage (its reply lost) and the
    checkpoint landed after it; now that write waits for the checkpoint carrying the older
    line: both lines are pushed once, in the order of the calls."""
    from job_processor.engine import notes as engine_notes

    monkeypatch.setattr(engine_notes, "FLUSH_BUDGET", 0.3)
    outage = _outage_after_a_lost_notes_reply(monkeypatch, 3.0, checkpoint_first=True)

    async def h(job: Job, signal: AbortSignal) -> str:
        async def other() -> None:  # another task of the handler, logging meanwhile
            await asyncio.wait_for(outage["stalled"].wait(), 10)
            job.log("two")

        side = asyncio.create_task(other())
        job.log("one")
        await job.checkpoint({"step": 1})  # rides out the outage (budget worker_timeout)
        await side
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)}, worker_timeout=12.0, heartbeat_interval=1.0)
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=30)
    assert not outage["lost"], "the write of 'two' went out while the checkpoint was under way"
    assert done.status == S.FINISHED and done.state == {"step": 1}
    assert [line["message"] for line in done.logs] == ["one", "two"]


@pytest.mark.parametrize("earlier_checkpoint", [False, True])
async def test_a_cancelled_checkpoint_that_landed_before_an_outage_counts_once(
    db: Any, monkeypatch: pytest.MonkeyPatch, earlier_checkpoint: bool
) -> None:
    """A checkpoint carrying a line reaches the server, its reply is lost, and MongoDB then
    stays unreachable longer than FLUSH_BUDGET (shortened here), shorter than worker_timeout;
    max runtime cancels the handler meanwhile. The run's end waits for that save as long as
    the final write rides the outage out: its line is pushed once, and its state (after an
    earlier checkpoint's) is the job's, not restated back to the earlier one."""
    from job_processor.engine import notes as engine_notes

    monkeypatch.setattr(engine_notes, "FLUSH_BUDGET", 0.3)
    outage = _outage_after_a_lost_notes_reply(monkeypatch, 3.0, lost_state={"batch": 1})

    async def h(job: Job, signal: AbortSignal) -> str:
        if earlier_checkpoint:
            await job.checkpoint({"batch": 0})  # lands
        job.log("indexed", batch=1)
        await job.checkpoint({"batch": 1})  # max runtime cancels the handler in here
        return "ok"

    definition = JobDef(handler=h, max_runtime_in_minutes=0.01, max_attempts=1)
    p = await make(
        db, {"h": definition}, worker_timeout=12.0, heartbeat_interval=1.0, shutdown_grace=0.1
    )
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=30)
    assert outage["until"] is not None
    assert done.attempt == 1 and done.state == {"batch": 1}
    assert [line["message"] for line in done.logs] == ["indexed"]


async def test_lines_and_progress_keep_their_order_when_a_checkpoint_lands_after_a_later_write(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint carries "one" and progress 1/2; while its write is under way another task
    reports 2/2 and logs "two", whose coalesced write went out a second later and landed
    first: the checkpoint then pushed "one" after "two" and set the progress back to 1/2 for
    good. The notes' own write now waits for the checkpoint carrying older notes."""
    import contextlib

    original = AsyncCollection.update_one
    checkpoint_sent = asyncio.Event()
    notes_landed = asyncio.Event()

    async def update_one(
        self: AsyncCollection, filter: Any, update: Any, *a: Any, **kw: Any
    ) -> Any:
        fields = set(update.get("$set", {})) if isinstance(update, dict) else set()
        if "state" in fields and "status" not in fields:  # the checkpoint: its reply is slow
            checkpoint_sent.set()
            # it lands after the other task's write if that goes out meanwhile (bounded: a
            # worker that holds that write back until the checkpoint lands is not stuck here)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(notes_landed.wait(), 3)
            return await original(self, filter, update, *a, **kw)
        result = await original(self, filter, update, *a, **kw)
        if isinstance(update, dict) and "$push" in update and "status" not in fields:
            notes_landed.set()  # a notes write of its own landed
        return result

    monkeypatch.setattr(AsyncCollection, "update_one", update_one)

    async def h(job: Job, signal: AbortSignal) -> str:
        async def other() -> None:  # another task of the handler, reporting meanwhile
            await checkpoint_sent.wait()
            await job.report_progress(2, 2, "second half")
            job.log("two")

        side = asyncio.create_task(other())
        await job.report_progress(1, 2, "first half")
        job.log("one")
        await job.checkpoint({"step": 1})
        await side
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)}, worker_timeout=8.0, heartbeat_interval=1.0)
    async with p:
        job = await p.schedule_job("h")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED, timeout=30)
    assert done.status == S.FINISHED and done.state == {"step": 1}
    assert done.progress is not None
    shown = ([line["message"] for line in done.logs], done.progress["message"])
    assert shown == (["one", "two"], "second half")  # was: (["two", "one"], "first half")


async def test_lines_a_plain_def_checkpoint_carries_are_kept_when_its_run_is_killed_meanwhile(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint_sync's save is a task of its own: a kill ending the run meanwhile neither
    cancelled it (no settle_later) nor made close() wait: the final write landed first, the
    checkpoint matched nothing and gave "one" back to closed notes: lost."""
    import contextlib

    original = AsyncCollection.update_one
    checkpoint_sent = asyncio.Event()

    async def update_one(
        self: AsyncCollection, filter: Any, update: Any, *a: Any, **kw: Any
    ) -> Any:
        fields = set(update.get("$set", {})) if isinstance(update, dict) else set()
        if "state" in fields and "status" not in fields:  # the checkpoint: a slow reply
            checkpoint_sent.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3  # bounded: a fixed worker waits for this write
            with contextlib.suppress(Exception):
                while loop.time() < deadline:  # until the run's final write landed
                    doc = await self.find_one({"_id": filter["_id"]}, {"status": 1})
                    if doc is None or doc["status"] != "running":
                        break
                    await asyncio.sleep(0.05)
        return await original(self, filter, update, *a, **kw)

    monkeypatch.setattr(AsyncCollection, "update_one", update_one)

    def h(job: Job, signal: AbortSignal) -> str:
        job.report_progress_sync(0, 1)  # this second's write of its own: "one" waits for the
        job.log("one")  # next, and the checkpoint carries it
        job.checkpoint_sync({"step": 1})
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)}, worker_timeout=8.0, heartbeat_interval=1.0)
    async with p:
        job = await p.schedule_job("h")
        await asyncio.wait_for(checkpoint_sent.wait(), 15)
        await p.kill_job(job.id)
        done = await wait_status(p, job.id, S.KILLED, S.FINISHED, S.ERRORED, timeout=30)
    assert done.status == S.KILLED
    assert [line["message"] for line in done.logs] == ["one"]  # was: []


async def test_lines_keep_their_order_when_a_cancelled_checkpoint_lands_after_the_cleanups(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill cancels a checkpoint carrying "one"; the handler's cleanup logs and checkpoints
    again; that second checkpoint carried "cleanup" and landed first: ['cleanup', 'one']."""
    import contextlib

    original = AsyncCollection.update_one
    first_sent = asyncio.Event()
    second_landed = asyncio.Event()

    async def update_one(
        self: AsyncCollection, filter: Any, update: Any, *a: Any, **kw: Any
    ) -> Any:
        state = update.get("$set", {}).get("state") if isinstance(update, dict) else None
        if state == {"step": 1}:  # the first checkpoint: a slow reply
            first_sent.set()
            with contextlib.suppress(TimeoutError):  # bounded: a fixed worker waits here
                await asyncio.wait_for(second_landed.wait(), 5)
            return await original(self, filter, update, *a, **kw)
        result = await original(self, filter, update, *a, **kw)
        if state == {"step": 2}:
            second_landed.set()
        return result

    monkeypatch.setattr(AsyncCollection, "update_one", update_one)

    async def h(job: Job, signal: AbortSignal) -> str:
        await job.report_progress(0, 1)  # this second's write of its own: "one" waits for the
        job.log("one")  # next, and the checkpoint carries it
        try:
            await job.checkpoint({"step": 1})
        except asyncio.CancelledError:
            job.log("cleanup")
            await job.checkpoint({"step": 2})
            raise
        return "ok"

    p = await make(db, {"h": JobDef(handler=h)}, worker_timeout=8.0, heartbeat_interval=1.0)
    async with p:
        job = await p.schedule_job("h")
        await asyncio.wait_for(first_sent.wait(), 15)
        await p.kill_job(job.id)
        done = await wait_status(p, job.id, S.KILLED, S.FINISHED, S.ERRORED, timeout=30)
    assert done.status == S.KILLED and done.state == {"step": 2}
    assert [line["message"] for line in done.logs] == ["one", "cleanup"]
