"""Test your handlers and flows without a MongoDB server.

Handler unit tests (no database at all)::

    from job_processor.testing import JobHarness

    async def test_reindex_resumes_from_its_checkpoint():
        harness = JobHarness(payload={"index": "users"}, state={"batch": 98})
        assert await harness.run(reindex) == 100
        assert harness.checkpoints == [{"batch": 99}, {"batch": 100}]

    async def test_reindex_stops_on_shutdown():
        harness = JobHarness(abort_after_checkpoints=(1, "shutdown"))
        with pytest.raises(JobAbortedError):
            await harness.run(reindex)

Flows (an in-memory database and a fake clock; needs `pip install job-processor[testing]`)::

    from job_processor.testing import in_memory_processor, run_until_idle

    async def test_signup_sends_the_welcome_email():
        async with in_memory_processor(jobs=JOBS) as processor:
            await processor.schedule_job("signup", {"email": "ada@example.com"})
            ran = await run_until_idle(processor)   # runs due jobs, and retries as they come due
            assert [j.name for j in ran] == ["signup", "send-email"]

The in-memory database is mongomock-motor: right on the features the processor uses, but one
process only and no change streams. Keep a few tests on a real server too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, get_args

import bson
from bson.codec_options import CodecOptions
from pydantic import BaseModel

from .core import documents as D
from .core import notes as N
from .core import values as V
from .core.abort import AbortReason, AbortSignal
from .core.clock import FakeClock
from .core.definitions import CronDef, JobDef
from .core.documents import Doc
from .core.errors import InvalidArgumentError, InvalidPayloadError
from .core.models import Job, Processor, not_awaited_message
from .core.payload_forms import stored_form
from .core.producing import checked_payload as checked_job_payload
from .core.protocols import ClaimingWorker
from .core.settings import Settings
from .engine.execution import (
    ExitCalled,
    ResultTooLarge,
    build_job,
    call_maybe_async,
    check_state,
    storable,
)
from .processor import JobProcessor, init_job_processor

#: The reasons a worker aborts a run with (`AbortReason`).
ABORT_REASONS: tuple[AbortReason, ...] = get_args(AbortReason)

__all__ = ["JobHarness", "in_memory_processor", "run_until_idle"]


class JobHarness:
    """A Job and an AbortSignal for calling a handler directly, the test in control.

    - `checkpoints`: every state the handler saved, in order (`job.state` is the last).
    - `progress_reports`: every `report_progress`, in order (`job.progress` is the last).
    - `log_lines`: every line of `job.log` / `job.logger`, as the job would keep it.
    - `abort(reason)`: fire the signal ("shutdown", "killed" or "timeout").
    - `abort_after_checkpoints=(n, reason)`: fire it as the n-th checkpoint is saved.
    - `processor`: what `job.processor` returns inside the handler (e.g. a processor from
      `in_memory_processor`, to test chaining); unset, `job.processor` raises.
    - `dependencies`: the jobs `await job.dependencies()` returns (a parent of a flow), e.g.
      `JobHarness.ended("part", result=3)`; `job.after` and `job.deps` follow them.
    - `progress`: the progress a resumed run starts with (`job.progress`).
    """

    def __init__(
        self,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        name: str = "job",
        state: dict[str, Any] | None = None,
        attempt: int = 1,
        failures: int = 0,
        max_attempts: int = 1,
        payload_model: type[BaseModel] | None = None,
        now: dt.datetime | None = None,
        abort_after_checkpoints: tuple[int, AbortReason] | None = None,
        processor: Processor | None = None,
        dependencies: Sequence[Job[Any]] | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> None:
        now = FakeClock(now).now()  # an aware datetime (a naive one raises ValueError)
        if abort_after_checkpoints is not None:
            _check_abort_after(abort_after_checkpoints)
        _check_counts(attempt, failures, max_attempts)
        if state is not None:
            state = _state_as_read_back(state)
        if isinstance(payload, BaseModel):
            payload_model = payload_model or type(payload)
            checked_job_payload(name, payload_model, payload)  # as schedule_job checks it
            payload = stored_form(type(payload), payload)  # by alias where the model has them
        doc = D.as_running(
            D.new_job(name, _as_read_back(name, payload), now=now, max_attempts=max_attempts),
            "test-worker",
            now,
        ) | {"state": state, "attempt": attempt, "failures": failures}
        definition = JobDef(handler=lambda job, signal: None, payload_model=payload_model)
        try:
            self.job: Job[Any] = build_job(doc, definition)
        except ValueError as exc:
            raise InvalidPayloadError(f"JobHarness payload: {exc}") from None
        self.signal = AbortSignal()
        self.checkpoints: list[dict[str, Any]] = []
        self.progress_reports: list[dict[str, Any]] = []
        self.log_lines: list[dict[str, Any]] = []
        self.stored_result: Any = None
        """What a worker would store of the last run's result (NaN as 'nan', a set as its
        repr(), ...): `run()` returns what the handler returned."""
        self._abort_after = abort_after_checkpoints
        self._now = now
        self.job._checkpointer = self._save
        self.job._processor = processor
        self.job._notes = self
        if progress is not None:
            self.job.progress = _progress_as_stored(progress, now)
        if dependencies is not None:
            if isinstance(dependencies, Job) or not isinstance(dependencies, Iterable):
                raise InvalidArgumentError(
                    "JobHarness dependencies= takes a list of jobs, e.g. "
                    f"[JobHarness.ended('part', result=3)], got {dependencies!r:.60}"
                )
            deps = list(dependencies)
            bad = next((d for d in deps if not isinstance(d, Job)), None)
            if bad is not None:
                raise InvalidArgumentError(
                    "JobHarness dependencies= takes the jobs themselves, e.g. "
                    f"[JobHarness.ended('part', result=3)], got {bad!r:.60}"
                )
            self.job._given_dependencies = deps
            self.job.after = [d.id for d in deps]
            self.job.deps = {d.id: d.status.value for d in deps}

    @staticmethod
    def ended(
        name: str,
        *,
        result: Any = None,
        status: str = "finished",
        error: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Job[Any]:
        """A job that has ended, to give a JobHarness as a dependency: `status` is one of
        finished, errored, killed, skipped."""
        if status not in _ENDED:
            raise InvalidArgumentError(
                f"JobHarness.ended: status must be one of {', '.join(_ENDED)} (a job that has "
                f"ended), got {status!r}"
            )
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"JobHarness.ended: name must be a job name (a non-empty str), got {name!r:.60}"
            )
        if error is not None and not isinstance(error, str):  # read as no output at all
            raise InvalidArgumentError(
                f"JobHarness.ended: error= takes the error's text (a str) or None, got "
                f"{error!r:.60}"
            )
        if payload is not None and not isinstance(payload, Mapping):
            raise InvalidArgumentError(
                "JobHarness.ended: payload= takes the job's payload, a dict such as "
                f"{{'order_id': 7}}, or None, got {payload!r:.60}"
            )
        now = FakeClock().now()
        # as `dependencies()` reads a real one: its payload and result read back from MongoDB
        try:
            stored_result = storable(result)
        except ResultTooLarge as exc:
            raise InvalidArgumentError(f"JobHarness.ended: result= {exc}") from None
        doc = D.new_job(name, _as_read_back(name, payload or {}), now=now) | {
            "status": status,
            "ended_at": now,
            "output": {"result": stored_result, "error": error},
        }
        doc.pop("claim_name", None)
        return Job.read(doc)

    # ---- the job's NoteSink: recorded, as a worker would write them --------------------------

    async def progress(self, done: Any, total: Any, message: Any) -> dict[str, Any]:
        try:
            report = N.progress_of(done, total, message, self._now)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self.progress_reports.append(report)
        return report

    def line(self, level: str, message: Any, fields: Mapping[str, Any]) -> None:
        self.log_lines.append(N.log_line(self.job.attempt, level, message, fields, self._now))

    def carry(self, value: Any) -> None:
        """Nothing is logged here: nothing to hide."""

    async def _save(self, state: dict[str, Any]) -> dict[str, Any]:
        # refused as a worker refuses it (naive datetime, NaN, Decimal, ...), kept as a worker
        # saves it (a tuple as a list), not as the handler goes on changing its dict
        saved = check_state(state)
        self.checkpoints.append(saved)
        if self._abort_after is not None and len(self.checkpoints) == self._abort_after[0]:
            self.signal.abort(self._abort_after[1])
        return copy.deepcopy(saved)  # job.state: the handler's to change

    def abort(self, reason: AbortReason = "shutdown") -> None:
        _check_reason(reason)
        self.signal.abort(reason)

    async def run(self, handler: Callable[..., Awaitable[Any] | Any]) -> Any:
        """Call `handler(job, signal)` (a plain function runs in a thread, as in a worker) and
        return what it returned (`stored_result`: what a worker would store of it). A result a
        worker could not store at all (a naive datetime, over the size limit) raises
        InvalidPayloadError, as the worker would error the job. A checkpoint() or
        report_progress() called without `await` (nothing saved; a worker says so in the job's
        log) fails the test: AssertionError."""
        if not callable(handler):
            raise InvalidArgumentError(
                "JobHarness.run takes the handler to call, a function (job, signal) such as "
                f"run(reindex), got {handler!r:.60}"
            )
        self.stored_result = None
        self.job._loop = asyncio.get_running_loop()  # checkpoint_sync from a plain def handler
        try:
            result = await call_maybe_async(handler, self.job, self.signal)
        except ExitCalled as exc:  # raised as the handler raised it: pytest.raises(SystemExit)
            raise exc.__cause__ or exc from None
        forgotten = self.job.not_awaited()
        if forgotten:
            raise AssertionError(not_awaited_message(forgotten))
        try:
            self.stored_result = storable(result)
        except ResultTooLarge as exc:
            raise InvalidPayloadError(f"the worker could not store this result: {exc}") from None
        return result


#: The statuses of a job that has ended (`JobHarness.ended`).
_ENDED = ("finished", "errored", "killed", "skipped")


def _as_read_back(name: str, payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload as a worker's handler reads it: refused as `schedule_job` refuses it (a
    naive datetime, a Decimal, too large: InvalidPayloadError), and through BSON (a tuple
    becomes a list)."""
    checked = V.checked_payload("job", name, payload, D.MAX_PAYLOAD_BYTES)
    return bson.decode(bson.encode(checked), codec_options=CodecOptions(tz_aware=True))


def _check_counts(attempt: Any, failures: Any, max_attempts: Any) -> None:
    """The counts of a run a worker could start: attempt >= 1 (this run is one), failures
    below both attempt (each failure was a run) and max_attempts (a job that used them all
    has errored, it does not run again)."""
    for field, value, least in (("attempt", attempt, 1), ("failures", failures, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgumentError(
                f"JobHarness {field}= must be an integer >= {least}, got {value!r}"
            )
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidArgumentError(
            f"JobHarness max_attempts= must be an integer >= 1, got {max_attempts!r}"
        )
    if failures >= attempt:
        raise InvalidArgumentError(
            f"JobHarness failures={failures} with attempt={attempt}: each failure was an "
            f"earlier run, so failures is at most attempt - 1 (pass attempt={failures + 1})"
        )
    if failures >= max_attempts:
        raise InvalidArgumentError(
            f"JobHarness failures={failures} with max_attempts={max_attempts}: a job that "
            f"failed max_attempts times has errored and does not run again (pass "
            f"max_attempts={failures + 1} or more)"
        )


def _state_as_read_back(state: Any) -> dict[str, Any]:
    """A resumed run's state as the worker reads it back: refused as a checkpoint is (a naive
    datetime, NaN, what BSON cannot hold: InvalidPayloadError), and through BSON (a tuple
    becomes a list)."""
    try:
        check_state(state)
    except InvalidPayloadError as exc:
        raise InvalidPayloadError(f"JobHarness state=: {exc}") from None
    return bson.decode(bson.encode(state), codec_options=CodecOptions(tz_aware=True))


#: What a stored progress holds (`report_progress` writes them; `JobHarness(progress=)`).
_PROGRESS_FIELDS = frozenset({"done", "total", "message", "fraction", "at", "cut"})


def _progress_as_stored(progress: Any, now: dt.datetime) -> dict[str, Any]:
    """A resumed run's progress as `report_progress(done, total, message)` stored it (its
    fraction and time computed again)."""
    if not isinstance(progress, Mapping) or "done" not in progress:
        raise InvalidArgumentError(
            "JobHarness progress= must be a mapping with done (and total, message), as "
            f"report_progress stores it, e.g. {{'done': 3, 'total': 10}}; got {progress!r}"
        )
    unknown = sorted(str(k) for k in progress if k not in _PROGRESS_FIELDS)
    if unknown:
        raise InvalidArgumentError(
            f"JobHarness progress= has fields a progress does not: {', '.join(unknown)} "
            f"(it holds {', '.join(sorted(_PROGRESS_FIELDS))})"
        )
    at = progress.get("at")
    try:
        stored = N.progress_of(
            progress["done"],
            progress.get("total"),
            progress.get("message"),
            at if isinstance(at, dt.datetime) and at.tzinfo is not None else now,
        )
    except ValueError as exc:
        raise InvalidArgumentError(f"JobHarness progress=: {exc}") from None
    if progress.get("cut") is True and stored.get("message"):
        stored["cut"] = True  # a message report_progress cut, as read back
    return stored


def _check_abort_after(abort_after: Any) -> None:
    if not isinstance(abort_after, tuple | list) or len(abort_after) != 2:
        raise InvalidArgumentError(
            "abort_after_checkpoints=(n, reason): a pair, e.g. (2, 'shutdown'), got "
            f"{abort_after!r}"
        )
    count, reason = abort_after
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgumentError(
            "abort_after_checkpoints=(n, reason): n counts checkpoints from 1 (the signal fires "
            f"as the n-th is saved), got {count!r}"
        )
    _check_reason(reason)


def _check_reason(reason: Any) -> None:
    if reason not in ABORT_REASONS:
        raise InvalidArgumentError(
            f"abort reason must be one of {', '.join(ABORT_REASONS)}, got {reason!r}"
        )


@contextlib.asynccontextmanager
async def in_memory_processor(
    jobs: Mapping[str, JobDef | Mapping[str, Any]] | None = None,
    crons: Mapping[str, CronDef | Mapping[str, Any]] | None = None,
    *,
    clock: FakeClock | None = None,
    **options: Any,
) -> AsyncIterator[JobProcessor]:
    """A JobProcessor on a fresh in-memory database (mongomock-motor) and a FakeClock
    (`processor.clock`). It is not started: drive it with `run_until_idle`, or `start()` it."""
    try:
        from mongomock_motor import AsyncMongoMockClient
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "in_memory_processor needs mongomock-motor: pip install 'job-processor[testing]'"
        ) from None
    client: Any = AsyncMongoMockClient(tz_aware=True)
    processor = await init_job_processor(
        client["job_processor_tests"],
        jobs=jobs,
        crons=crons,
        clock=clock or FakeClock(),
        **({"change_streams": False} | options),  # mongomock has no change streams
    )
    try:
        yield processor
    finally:
        await processor.stop()


async def run_until_idle(
    processor: JobProcessor,
    *,
    advance_clock: bool = True,
    until: dt.datetime | None = None,
    max_runs: int = 1000,
) -> list[Job[Any]]:
    """Run the jobs that are due, one at a time in this process, until none is left. With a
    FakeClock and `advance_clock`, move the clock to the next scheduled job (a retry's backoff,
    a job scheduled for later) and go on; with `until`, also to each cron slot up to that time
    (without it, the cron slots the clock moves past are recorded as missed, as after a
    downtime). Returns each run's final Job, in order (a retried job appears once per
    attempt)."""
    if not isinstance(processor, JobProcessor):
        raise InvalidArgumentError(
            "run_until_idle takes the JobProcessor to drive (from in_memory_processor or "
            f"init_job_processor), got {processor!r:.60}"
        )
    if processor.started:
        raise RuntimeError("run_until_idle drives a processor that is not started")
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise InvalidArgumentError(
            f"run_until_idle max_runs= must be an integer >= 1, got {max_runs!r}"
        )
    if until is not None and (not isinstance(until, dt.datetime) or until.tzinfo is None):
        raise InvalidArgumentError(
            f"run_until_idle until= must be an aware datetime, got {until!r}: e.g. "
            "datetime(2030, 1, 1, tzinfo=UTC) (a naive one is never taken as UTC silently)"
        )
    worker = processor.worker
    clock = processor.clock
    ran: list[Job[Any]] = []
    stalled = 0  # moves to a limit's wait in a row with no run: a limit that never frees
    room_at: list[dt.datetime] = []  # when the limits' full keys have room (the last claim's)
    # a worker document, but no heartbeat loop: the test moves the clock in big steps
    await processor.heartbeat.register()
    try:
        while len(ran) < max_runs and stalled < _MAX_STALLED:
            if processor.crons:
                await processor.scheduler.tick()
            # as a worker claims: paused names left out, limited ones through their limits
            doc = await worker.jobs.claim_next(
                worker.claimable_names(), worker.worker_id, clock.now()
            )
            docs = [doc] if doc is not None else await _claim_limited(processor, room_at)
            if docs:
                stalled = 0
                for claimed in docs:
                    final = await worker.spawn(claimed)
                    after = final or await processor.storage.jobs.get(claimed["_id"])
                    if after is not None:
                        ran.append(Job.read(after))
                continue
            # a hook recorded with no owner (a job errored by its failed dependency): a
            # worker's sweep calls it; no sweep runs here, so it is called here (it may
            # schedule jobs: look again)
            hook_at = clock.now() + dt.timedelta(milliseconds=1)  # recorded at `now`: owed
            ownerless = [  # only those: another processor's (live) hooks are its own
                h
                for h in await processor.storage.jobs.owed_hooks(hook_at)
                if h.get("exit_hook_owner") is None
            ]
            timeout = processor.settings.worker_timeout
            if ownerless and await processor.hooks.recover(hook_at, set(), timeout, ownerless):
                await processor.hooks.drain()
                stalled += 1  # bounded, should a hook be taken again and again
                continue
            if not (advance_clock and isinstance(clock, FakeClock)):
                break
            names = [n for n in worker.names if n not in worker.paused]
            upcoming = [await processor.storage.jobs.next_due(names)]
            if until is not None:
                upcoming += [d["next_slot"] for d in await processor.storage.crons.docs()]
            later = _ahead(upcoming, clock.now(), until)
            # a full limit: a key found full by this claim (blocked), or a per-value limit's
            # keys known rate-full from their documents (only a worker wake-up says when)
            full = [*worker.limiter.blocked.values(), *room_at]
            waits = _ahead(full, clock.now(), until)
            if not later and not waits:
                break
            step = min(later + waits)
            clock.set(step)
            # only moves to a limit's wait count: a job or a cron slot (a paused cron's too) is
            # progress towards `until`
            stalled = 0 if later and step == min(later) else stalled + 1
    finally:
        await processor.heartbeat.unregister()
        worker.worker_id = ""
    if len(ran) >= max_runs:  # said, not returned as if idle with jobs left
        names = [n for n in worker.names if n not in worker.paused]
        # the claim's filter: a job waiting on a dependency keeps an old scheduled_for
        left = await processor.storage.jobs.any_due(names, clock.now())
        if not left and advance_clock and isinstance(clock, FakeClock):  # one it would move to
            upcoming = [await processor.storage.jobs.next_due(names)]
            if until is not None:  # as the loop: it moves to cron slots up to `until` too
                upcoming += [d["next_slot"] for d in await processor.storage.crons.docs()]
            left = bool(_ahead(upcoming, clock.now(), until))
        if left:
            raise RuntimeError(
                f"run_until_idle stopped after max_runs={max_runs} runs with jobs still due "
                "or to come (a retry's backoff, a job scheduled for later): pass a larger "
                "max_runs (run_until_idle(processor, max_runs=...)), or a handler retries "
                "for ever"
            )
    return ran


#: run_until_idle stops after this many moves in a row to a limit's wait that start no job.
_MAX_STALLED = 1000


def _ahead(
    times: Iterable[dt.datetime | None], now: dt.datetime, until: dt.datetime | None
) -> list[dt.datetime]:
    return [t for t in times if t is not None and t > now and (until is None or t <= until)]


async def _claim_limited(processor: JobProcessor, room_at: list[dt.datetime]) -> list[Doc]:
    """One job of a limited name, claimed through its limit as a worker claims it (a slot, a
    rate), or none; the caller runs it. `room_at` is set to the times the limiter would wake
    a worker at (a full key's room)."""
    worker = processor.worker
    room_at.clear()
    if not worker.limiter.groups:
        return []
    taker = _Taker(worker, room_at)
    await worker.limiter.claim(taker, 1)
    return taker.taken


class _Taker:
    """The worker, as the limiter sees it, but the jobs it claims are handed back instead of
    started (run_until_idle runs them one at a time)."""

    def __init__(self, worker: Any, room_at: list[dt.datetime]) -> None:
        self.taken: list[Doc] = []
        self.room_at = room_at
        self.worker_id: str = worker.worker_id
        self.paused: frozenset[str] = worker.paused
        self.clock = worker.clock
        self.settings: Settings = worker.settings
        self.wake: asyncio.Event = worker.wake

    def start_claimed(self, doc: Doc) -> bool:
        self.taken.append(doc)
        return True

    def may_claim(self, worker_id: str) -> bool:
        """No lease to keep: no heartbeat loop runs, and no sweep, while the test moves the
        clock in big steps."""
        return bool(worker_id) and worker_id == self.worker_id

    def claim_bound(self) -> float | None:
        """No lease: the driver's own timeouts bound its claims."""
        return None

    def wake_at(self, when: dt.datetime) -> None:
        """Kept for run_until_idle, which moves the clock to it (a per-value limit's keys
        found rate-full from their documents are not in the limiter's `blocked`)."""
        self.room_at.append(when)


_: type[ClaimingWorker] = _Taker  # the limiter's Protocol, checked by mypy
