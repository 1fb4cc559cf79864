"""Claim loop and per-job execution: abort signals, max runtime, grace then cancel, final writes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from pymongo.errors import PyMongoError

from . import sentry
from .clock import Clock, sleep_or_wake
from .definitions import CronDef, JobDef
from .errors import DoNotRetry, JobLostError, RetryLater
from .log import EventLog
from .models import Job, JobStatus
from .retries import after_failure, history_entry, with_history
from .signals import AbortSignal
from .store import Doc, Store

S = JobStatus


@dataclass(frozen=True)
class Settings:
    concurrency: int = 1
    poll_interval: float = 2.0
    heartbeat_interval: float = 5.0
    worker_timeout: float = 30.0
    shutdown_grace: float = 10.0
    change_streams: bool = True
    change_stream_max_await: float = 10.0
    idle_poll_interval: float = 15.0


@dataclass
class Run:
    """One job being executed by this process."""

    doc: Doc
    definition: JobDef
    signal: AbortSignal = field(default_factory=AbortSignal)
    lost: bool = False
    """Set when this process learns it no longer owns the job: it must write nothing."""


def eligible_names(definitions: Mapping[str, JobDef], worker_tags: list[str] | None) -> list[str]:
    """Names this worker may claim: untagged ones, plus those whose tag is in worker_tags."""
    return sorted(
        name
        for name, d in definitions.items()
        if worker_tags is None or d.tag is None or d.tag in worker_tags
    )


def describe_error(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(exc, limit=-5))
    text = f"{type(exc).__name__}: {exc}"
    return f"{text}\n{tb}"[:4000]


def storable(value: Any) -> Any:
    """Return values go into MongoDB as-is when BSON can hold them, as repr() otherwise."""
    try:
        bson.encode({"v": value})
        return value
    except (bson.errors.InvalidDocument, TypeError, OverflowError):
        return repr(value)


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Await async functions; run plain ones in a thread so they never block the event loop."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    ):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Worker:
    """Runs jobs for one processor: the claim loop (when started) and run_job executions."""

    def __init__(
        self,
        store: Store,
        definitions: Mapping[str, JobDef],
        worker_tags: list[str] | None,
        clock: Clock,
        log: EventLog,
        settings: Settings,
    ) -> None:
        self.store = store
        self.definitions = definitions
        self.names = eligible_names(definitions, worker_tags)
        self.clock = clock
        self.log = log
        self.settings = settings
        self.worker_id = ""
        self.runs: dict[str, Run] = {}
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        """Set while the last claim found nothing: only then is a wake-up source worth reading."""
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[Doc | None]] = set()
        self.stream_blocking: Callable[[], bool] = lambda: False
        """Set by the processor: is a blocking change stream watching for this worker?"""
        self._claimed = 0
        """Jobs taken by the claim loop (run_job executions do not use its slots)."""

    # ---- claim loop --------------------------------------------------------------------

    def idle_wait(self) -> float:
        """Seconds an idle worker waits before polling again: `poll_interval`, stretched to
        `idle_poll_interval` while a blocking change stream will wake it."""
        return (
            self.settings.idle_poll_interval
            if self.stream_blocking()
            else self.settings.poll_interval
        )

    async def claim_loop(self) -> None:
        self.log.info("worker_started", worker_id=self.worker_id, jobs=self.names)
        while not self.stopping.is_set():
            if self._claimed >= self.settings.concurrency:
                self._slot_freed.clear()
                await sleep_or_wake(self.clock, self._slot_freed, self.settings.poll_interval)
                continue
            self.wake.clear()
            try:
                doc = await self.claim_once()
            except PyMongoError as exc:
                self.log.warning("claim_failed", worker_id=self.worker_id, error=str(exc))
                doc = None
            if doc is None:
                self.idle.set()
                await sleep_or_wake(self.clock, self.wake, self.idle_wait())
            else:
                self.idle.clear()

    async def claim_once(self) -> Doc | None:
        if not self.names or not self.worker_id:
            return None
        doc = await self.store.claim_next(self.names, self.worker_id, self.clock.now())
        if doc is not None:
            self._claimed += 1
            self.spawn(doc, claimed=True)
        return doc

    def spawn(self, doc: Doc, claimed: bool = False) -> asyncio.Task[Doc | None]:
        task = asyncio.create_task(self.execute(doc), name=f"job-{doc['_id']}")
        self._tasks.add(task)

        def done(t: asyncio.Task[Doc | None]) -> None:
            self._tasks.discard(t)
            if claimed:
                self._claimed -= 1
            self._slot_freed.set()

        task.add_done_callback(done)
        return task

    def wake_at(self, when: Any) -> None:
        """Wake the claim loop when `when` comes (a retry, a job scheduled for later)."""
        delay = (when - self.clock.now()).total_seconds()
        if delay <= 0:
            self.wake.set()
        else:
            asyncio.get_running_loop().call_later(delay, self.wake.set)

    def request_stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self._slot_freed.set()

    async def drain(self) -> None:
        """Abort running jobs with reason 'shutdown' and wait until each has written its status."""
        for run in list(self.runs.values()):
            if run.signal.abort("shutdown"):
                self.log.info("job_abort_requested", reason="shutdown", **self._fields(run.doc))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def abort(self, job_id: str, reason: Any) -> bool:
        run = self.runs.get(job_id)
        if run is None:
            return False
        if run.signal.abort(reason):
            self.log.info("job_abort_requested", reason=reason, **self._fields(run.doc))
        return True

    def abandon_all(self, why: str) -> None:
        """This worker was declared dead: its jobs now belong to the recovery, write nothing."""
        for run in list(self.runs.values()):
            run.lost = True
            run.signal.abort("shutdown")
            self.log.warning("job_abandoned", reason=why, **self._fields(run.doc))

    # ---- executing one job -----------------------------------------------------------

    def _fields(self, doc: Doc) -> dict[str, Any]:
        return {"job_id": str(doc["_id"]), "job_name": doc["name"], "worker_id": self.worker_id}

    async def execute(self, doc: Doc) -> Doc | None:
        """Run a claimed job to its end and write the outcome. Never raises (but CancelledError).

        Returns the final document, or None when the job was lost to another process.
        """
        definition = self.definitions[doc["name"]]
        run = Run(doc=doc, definition=definition)
        job_id = str(doc["_id"])
        self.runs[job_id] = run
        fields = self._fields(doc)
        try:
            if self._claimed_too_late(doc):
                return await asyncio.shield(self._skip_missed(run))
            job = Job.model_validate(doc)
            job._checkpointer = lambda state: self._checkpoint(run, state)
            check_in = self._checkin(run, "in_progress")
            self.log.info(
                "job_started",
                attempt=doc.get("attempt"),
                failures=doc.get("failures", 0),
                from_checkpoint=doc.get("state") is not None,
                **fields,
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            status, output, extra = await self._run_handler(run, job)
            output["duration_ms"] = int((loop.time() - t0) * 1000)
            final = await asyncio.shield(self._finalize(run, status, output, extra))
            if final is not None and status not in (S.PAUSED, S.PENDING):
                ok = "ok" if status == S.FINISHED else "error"
                self._checkin(run, ok, check_in, output["duration_ms"] / 1000)
            return final
        except Exception:  # a bug of ours: never let it kill the worker silently
            self.log.exception("job_execution_failed", **fields)
            return None
        finally:
            self.runs.pop(job_id, None)

    def _claimed_too_late(self, doc: Doc) -> bool:
        """A cron task must start within its check-in margin; a late one is never run late."""
        deadline = doc.get("start_deadline")
        return (
            doc.get("type") == "cron_task"
            and deadline is not None
            and doc.get("started_at") is None  # a resumed task is not late
            and self.clock.now() > deadline
        )

    async def _skip_missed(self, run: Run) -> Doc | None:
        now = self.clock.now()
        updated = await self.store.end_run(
            run.doc, S.SKIPPED, now, None, extra={"skip_reason": "missed"}
        )
        if updated is not None:
            self.log.warning(
                "cron_slot_missed",
                slot=run.doc["scheduled_for"].isoformat(),
                now=now.isoformat(),
                **self._fields(run.doc),
            )
        return updated

    def _checkin(
        self, run: Run, status: str, check_in_id: str | None = None, duration: float | None = None
    ) -> str | None:
        if run.doc.get("type") != "cron_task" or not isinstance(run.definition, CronDef):
            return None
        return sentry.checkin(run.doc["name"], run.definition, status, check_in_id, duration)

    async def _run_handler(self, run: Run, job: Job) -> tuple[JobStatus, Doc, Doc]:
        definition, signal = run.definition, run.signal
        handler = asyncio.create_task(call_maybe_async(definition.handler, job, signal))
        aborted = asyncio.create_task(signal.wait())
        timer: asyncio.Task[None] | None = None
        if definition.max_runtime_in_minutes is not None:
            timer = asyncio.create_task(
                self._abort_after(signal, definition.max_runtime_in_minutes * 60)
            )
        try:
            await asyncio.wait({handler, aborted}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                # asked to stop: the handler has `shutdown_grace` seconds to return
                await asyncio.wait({handler}, timeout=self.settings.shutdown_grace)
            if not handler.done():
                handler.cancel()
                self.log.warning("job_cancelled", reason=signal.reason, **self._fields(run.doc))
                with contextlib.suppress(BaseException):
                    await handler
        finally:
            aborted.cancel()
            if timer is not None:
                timer.cancel()
        return self._outcome(run, handler)

    async def _abort_after(self, signal: AbortSignal, seconds: float) -> None:
        await self.clock.sleep(seconds)
        signal.abort("timeout")

    def _outcome(self, run: Run, handler: asyncio.Task[Any]) -> tuple[JobStatus, Doc, Doc]:
        """(status, output, extra fields). A failed attempt goes back to pending while attempts
        remain (`retries.after_failure`), else errored."""
        reason = run.signal.reason
        exc = None if handler.cancelled() else handler.exception()
        completed = not handler.cancelled() and exc is None
        result = storable(handler.result()) if completed else None
        now = self.clock.now()
        backoff = run.definition.backoff
        if reason == "killed":
            return S.KILLED, {"result": result, "error": "killed"}, {}
        if reason == "timeout":
            status, extra = after_failure(run.doc, backoff, now)
            return status, {"result": result, "error": "max runtime exceeded"}, extra
        if completed:  # returned normally (even if asked to shut down meanwhile)
            return S.FINISHED, {"result": result, "error": None}, {}
        if reason == "shutdown":
            if run.definition.resumable:
                return S.PAUSED, {"result": None, "error": None}, {}
            status, extra = after_failure(run.doc, backoff, now, retry_in=0)
            return status, {"result": None, "error": "interrupted"}, extra
        assert exc is not None
        status, extra = after_failure(
            run.doc,
            backoff,
            now,
            retry_in=exc.delay if isinstance(exc, RetryLater) else None,
            final=isinstance(exc, DoNotRetry),
        )
        return status, {"result": None, "error": describe_error(exc)}, extra

    async def _checkpoint(self, run: Run, state: dict[str, Any]) -> None:
        if run.lost or not await self.store.save_checkpoint(
            run.doc["_id"], run.doc["run_id"], state, self.clock.now()
        ):
            run.lost = True
            run.signal.abort("shutdown")
            raise JobLostError(
                f"job {run.doc['name']!r} {run.doc['_id']} is no longer owned by this worker"
            )

    async def _finalize(self, run: Run, status: JobStatus, output: Doc, extra: Doc) -> Doc | None:
        fields = self._fields(run.doc)
        if run.lost:
            self.log.warning("job_lost", status=status.value, **fields)
            return None
        now = self.clock.now()
        entry = history_entry(run.doc, status, output.get("error"), now)
        extra = extra | {"history": with_history(run.doc, entry)}
        try:
            updated = await self.store.end_run(run.doc, status, now, output, extra)
        except PyMongoError:
            self.log.exception("job_status_write_failed", status=status.value, **fields)
            return None
        if updated is None:
            # someone else moved the job first (we were declared dead): their state stands
            self.log.warning("job_lost", status=status.value, **fields)
            return None
        event = {
            S.FINISHED: "job_finished",
            S.ERRORED: "job_errored",
            S.KILLED: "job_killed",
            S.PAUSED: "job_paused",
            S.PENDING: "job_retry_scheduled",
        }[status]
        if status == S.PENDING:
            fields["retry_at"] = updated["scheduled_for"].isoformat()
            fields["failures"] = updated.get("failures")
            self.wake_at(updated["scheduled_for"])
        extra = {"error": output["error"].splitlines()[0]} if output.get("error") else {}
        log = self.log.warning if status == S.ERRORED else self.log.info
        log(event, duration_ms=output.get("duration_ms"), **extra, **fields)
        if status not in (S.PAUSED, S.PENDING):
            await call_exit_hook(run.definition, updated, self.log)
        return updated


async def call_exit_hook(definition: JobDef | None, doc: Doc, log: EventLog) -> None:
    """on_job_exited, once, by the process whose compare-and-set ended the job."""
    if definition is None or definition.on_job_exited is None:
        return
    try:
        await call_maybe_async(definition.on_job_exited, Job.model_validate(doc))
    except Exception:
        log.exception("on_job_exited_failed", job_id=str(doc["_id"]), job_name=doc["name"])
