"""The domain records as stored and read back: jobs and events (their deliveries, workers and
status reports are in `reports`, re-exported here); and `Processor`, what a running handler
reaches as `job.processor`.

Statuses and the transition table are in `status`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Generic, Literal, Protocol

from bson import ObjectId
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    model_serializer,
    model_validator,
)
from typing_extensions import TypeVar

from .errors import InvalidArgumentError, JobLostError
from .event_documents import WEBHOOK_JOB
from .notes import JobLogger, NoteSink
from .reports import Delivery as Delivery
from .reports import ProcessorStatus as ProcessorStatus
from .reports import SubscriberInfo as SubscriberInfo
from .reports import Target as Target
from .reports import WorkerInfo as WorkerInfo
from .reports import attempt_in_utc, aware_utc, from_document, jsonable_inside
from .reports import to_jsonable as to_jsonable
from .runs import with_last_run
from .status import HOOKED, JobStatus

S = JobStatus
_HOOKED = {s.value for s in HOOKED}

#: The creation date of a job another program inserted with neither `created_at` nor an
#: ObjectId `_id` (nor a `due_ms`): no date was recorded. Readers show it as "—", not as 1970.
UNRECORDED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def recorded(value: dt.datetime | None) -> dt.datetime | None:
    """A job's date as shown: none where it stands for a date no one recorded (`UNRECORDED`)."""
    return None if value is None or value == UNRECORDED else value


class JobOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    result: Any = None
    error: str | None = None
    duration_ms: int | None = None

    @model_serializer(mode="wrap", when_used="json")
    def _json_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        """The fields another program added made JSON-friendly too (an ObjectId there failed
        every JSON view of the job), its dates kept as the job's own."""
        extra = self.__pydantic_extra__
        if extra:
            shown = {k: jsonable_inside(v) for k, v in extra.items()}
            return handler(self.model_copy(update=shown))
        return handler(self)

    @field_serializer("result", when_used="json")
    def _json_result(self, value: Any) -> Any:
        return to_jsonable(value)


def _aware_inside(doc: dict[str, Any]) -> None:
    """The dates one level down (progress, log lines, history), made aware UTC in place when
    they were read naive (by a client without tz_aware=True, which reads all of a document's
    dates so: the first one tells, and an aware client's documents cost one look each)."""
    progress = doc.get("progress")
    if isinstance(progress, dict) and _naive(progress.get("at")):
        doc["progress"] = {k: aware_utc(v) for k, v in progress.items()}
    for listed, key in (("logs", "at"), ("history", "started_at")):
        items = doc.get(listed)
        if not isinstance(items, list) or not items:
            continue
        first = items[0]
        if isinstance(first, dict) and _naive(first.get(key)):
            doc[listed] = [
                {k: aware_utc(v) for k, v in item.items()} if isinstance(item, dict) else item
                for item in items
            ]


def _naive(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is None


def _derive_missing(doc: dict[str, Any]) -> None:
    """A job inserted by another program (`{name, claim_name, due_ms, payload}`) reads as the
    pending job it is until a worker claims it and writes the rest (documents.completion)."""
    if not isinstance(doc.get("name"), str):  # shown as "" (its run is errored: no name)
        doc["name"] = str(doc["name"]) if doc.get("name") is not None else ""
    if "created_at" in doc and "scheduled_for" in doc:
        return
    oid = doc.get("_id")
    due = doc.get("due_ms")
    if "scheduled_for" not in doc and isinstance(due, int | float) and not isinstance(due, bool):
        with contextlib.suppress(ValueError, OverflowError, OSError):  # a due_ms out of range
            doc["scheduled_for"] = dt.datetime.fromtimestamp(due / 1000, tz=dt.UTC)
    # its insert time (an ObjectId's), else when it is due, else the epoch (a string _id)
    created = oid.generation_time if isinstance(oid, ObjectId) else doc.get("scheduled_for")
    doc.setdefault("created_at", created or UNRECORDED)
    doc.setdefault("scheduled_for", doc["created_at"])  # a minimal insert that gave created_at
    doc.setdefault("updated_at", doc["created_at"])
    doc.setdefault("status", "pending" if doc.get("claim_name") else None)


async def _awaited(call: Awaitable[Any]) -> Any:
    return await call


PayloadT = TypeVar("PayloadT", default=dict[str, Any])

#: The key a payload that is not a document is shown under (`{NOT_A_DOCUMENT: [...]}`).
NOT_A_DOCUMENT = "(not a document)"

ExitHookState = Literal["owed", "done", "failed", "none"]

F = TypeVar("F", bound=Callable[..., Any])


_LOOP_GONE = (
    "the worker's event loop has stopped (this thread outlived its run, which was given up): "
    "nothing was saved"
)


def not_awaited_message(calls: list[str]) -> str:
    """What a run says of its checkpoint()/report_progress() calls never awaited (`calls`, as
    `Job.not_awaited()` lists them): the worker in the job's log, JobHarness as a failure."""
    names = sorted(set(calls))
    said = ", ".join(f"job.{n}()" for n in names)
    sync = ", ".join(f"job.{n}_sync()" for n in names)
    return (
        f"{said} called without `await`: nothing was saved ({len(calls)} call(s)); "
        f"in an async def handler, `await` them; from a plain def handler, call {sync}"
    )


def _async_method(fn: F) -> F:
    """Marks a method that returns a coroutine (without being an `async def`: it notes the call
    first) as async for introspection: mocks (`create_autospec(Job)`, `AsyncMock(spec=Job)`)
    then make it awaitable, as they do for an `async def`."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # Python 3.12+
        return mark(fn)  # type: ignore[no-any-return]
    fn._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]  # 3.11
    return fn


class Job(BaseModel, Generic[PayloadT]):
    """A job as stored in MongoDB. Handlers get one; `await job.checkpoint({...})` saves state.

    `Job[MyModel]` when the JobDef declares `payload_model=MyModel`: `job.payload` is then a
    `MyModel`, validated when the job was scheduled and again when it runs.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    type: Literal["simple", "cron_task"] = "simple"
    status: JobStatus
    payload: PayloadT
    priority: int = 0
    tag: str | None = None
    scheduled_for: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    """When the job first started (kept across resumes)."""
    run_started_at: dt.datetime | None = None
    """When the current (or last) run started."""
    ended_at: dt.datetime | None = None
    worker_id: str | None = None
    run_id: str | None = None
    attempt: int = 0
    """How many runs have started (a resume counts as a run)."""
    failures: int = 0
    """Failed attempts so far: exceptions, max runtime, crashes of its worker."""
    max_attempts: int = 1
    history: list[dict[str, Any]] = Field(default_factory=list)
    """The last runs (bounded): attempt, worker_id, started_at, ended_at, status, error."""
    key: str | None = None
    """Dedup key (scoped by job name): while a job with this key is active, scheduling the same
    name and key returns that job."""
    limit_key: str | None = None
    """The key of the definition's `limit` this job counts against ("tenant:acme"), filled at
    schedule time; None without a limit."""
    state: dict[str, Any] | None = None
    """The last checkpoint saved by the job."""
    output: JobOutput | None = None
    kill_requested_at: dt.datetime | None = None
    skip_reason: str | None = None
    """"exclusive" (a job of that name was active) or "missed" (a cron slot not started in time)."""
    conflicting_job_id: str | None = None
    trigger: str | None = None
    """Cron tasks: "schedule" (a slot; its time is `scheduled_for`) or "manual" (trigger_cron)."""
    start_deadline: dt.datetime | None = None
    """Cron tasks: the slot plus its check-in margin; not started by then, it is never run."""
    exit_hook: ExitHookState | None = None
    """on_job_exited for the last exit: "owed" (recorded by the final write, not run yet),
    "done", "failed" (it raised or timed out; see exit_hook_error), "none" (no hook defined)."""
    exit_hook_error: str | None = None
    exit_hook_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    """When this ended job may be deleted (keep_finished / keep_failed); None: kept."""
    invalid_fields: dict[str, Any] = Field(default_factory=dict)
    """Fields of the stored document that do not have their type (another program wrote them),
    as stored; `Job.read` shows the job without them. A run of such a job is errored."""
    after: list[str] = Field(default_factory=list)
    """The jobs this one was scheduled after (`schedule_job(..., after=[...])`), in order."""
    deps: dict[str, str] = Field(default_factory=dict)
    """Each dependency's id -> "waiting", then the status it ended with."""
    waiting_on: int = 0
    """How many dependencies have not ended yet (a `waiting` job is released at 0)."""
    on_dependency_failure: str | None = None
    """"skip" (default), "run" or "error": what a dependency that does not finish does to it."""
    failed_dependency: str | None = None
    """The dependency whose failure skipped (or errored) this job."""
    has_dependents: bool = False
    """Jobs were scheduled after this one."""
    progress: dict[str, Any] | None = None
    """The last progress the handler reported (`report_progress`): done, total, fraction
    (done / total, or None), message, at. A resumed run sees it."""
    logs: list[dict[str, Any]] = Field(default_factory=list)
    """The handler's own log lines (`job.log`, `job.logger`), the last 200 across its runs:
    at, run (the attempt that wrote it), level, message, fields."""

    _checkpointer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = PrivateAttr(
        default=None
    )
    """Saves a checkpoint, returning the state as saved (a copy, read back through BSON)."""
    _processor: Processor | None = PrivateAttr(default=None)
    _notes: NoteSink | None = PrivateAttr(default=None)
    _given_dependencies: list[Job[Any]] | None = PrivateAttr(default=None)
    _unstarted: list[str] | None = PrivateAttr(default=None)
    """checkpoint/report_progress calls whose coroutine has not started (an `await` forgotten,
    if still there when the handler returns: `not_awaited()`)."""
    _loop: asyncio.AbstractEventLoop | None = PrivateAttr(default=None)
    """The loop the run's checkpoints and progress are written from (its worker's)."""

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = {k: aware_utc(v) for k, v in data.items()}
        _aware_inside(doc)
        _derive_missing(doc)
        payload = doc.get("payload")
        if cls is Job and payload is not None and not isinstance(payload, dict):
            # shown as stored (a run of it fails: see worker.build_job); reading never breaks
            doc["payload"] = {NOT_A_DOCUMENT: payload}
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        for one in ("conflicting_job_id", "failed_dependency"):
            if isinstance(doc.get(one), ObjectId):
                doc[one] = str(doc[one])
        if isinstance(doc.get("after"), list):
            doc["after"] = [str(d) for d in doc["after"]]
        if doc.get("started_at") is None and doc.get("run_started_at") is not None:
            doc["started_at"] = doc["run_started_at"]
        if doc.get("payload") is None:
            doc["payload"] = {}
        if doc.get("updated_at") is None:  # a lean document: its last change is its last date
            doc["updated_at"] = (
                doc.get("ended_at") or doc.get("run_started_at") or doc["created_at"]
            )
        if doc.get("exit_hook") is None and doc.get("status") in _HOOKED and doc.get("attempt"):
            doc["exit_hook"] = "none"  # it ran and ended: a lean final write left "none" out
        if isinstance(doc.get("history", []), list):  # else: invalid_fields shows it as stored
            doc["history"] = with_last_run(doc)  # the last run's record is the job's fields
        return doc

    @field_serializer("payload", "state", "history", "invalid_fields", when_used="json")
    def _json_values(self, value: Any, info: FieldSerializationInfo) -> Any:
        shown = to_jsonable(value)
        if info.field_name == "state" and self.name == WEBHOOK_JOB and isinstance(shown, dict):
            attempts = shown.get("attempts")  # its HTTP attempts, their `at` kept as text
            if isinstance(attempts, list):
                shown["attempts"] = [attempt_in_utc(a) for a in attempts]
        return shown

    @field_serializer("output", mode="wrap", when_used="json")
    def _json_output(self, value: Any, handler: SerializerFunctionWrapHandler) -> Any:
        shown = handler(value)
        if self.name == WEBHOOK_JOB and isinstance(shown, dict):  # its last HTTP attempt
            shown["result"] = attempt_in_utc(shown.get("result"))
        return shown

    @field_serializer("progress", "logs", when_used="json")
    def _json_notes(self, value: Any) -> Any:
        return jsonable_inside(value)  # another program's fields there (an ObjectId)

    @classmethod
    def read(cls, doc: dict[str, Any]) -> Job[Any]:
        """A stored job, for reading (get_job, lists, the dashboard, hooks): never fails on a
        field another program wrote with a wrong type; that field goes to `invalid_fields`.
        (A run validates strictly: see worker.build_job.)"""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} - {"id"}
            if not bad or "_id" not in doc:
                raise
            kept = {k: v for k, v in doc.items() if k not in bad}
            if "created_at" in kept:  # required dates: its creation date stands in
                for when in ("scheduled_for", "updated_at"):
                    if when in bad:
                        kept[when] = kept["created_at"]
            # else it reads as a document another program inserted: dates and status derived
            if "status" in bad:
                # none: a bare insert, pending once a worker adopts it (within a minute); one
                # that is not a job status ("queued"): never claimed, shown as errored with the
                # stored value in `invalid_fields`, to be fixed or deleted
                kept["status"] = S.ERRORED.value if doc.get("status") is not None else "pending"
            job = cls.model_validate(kept)
            shown = [k for k in sorted(bad) if k in doc]  # a bare insert's status is no error
            job.invalid_fields = {k: doc[k] for k in shown if k != "status" or doc[k] is not None}
            return job

    @_async_method
    def checkpoint(self, state: dict[str, Any]) -> Coroutine[Any, Any, None]:
        """Save `state` on the job (`await job.checkpoint({...})`); a resumed or retried run
        sees it as `job.state`.

        While MongoDB is unreachable this waits (up to the processor's `worker_timeout`); past
        that the run is abandoned to recovery and this raises `JobLostError`."""
        return self._started(self._checkpoint(state), "checkpoint")

    def checkpoint_sync(self, state: dict[str, Any]) -> None:
        """`checkpoint()` for a plain `def` handler (which runs in a thread): saves `state`,
        blocking the thread until it is saved. From an `async def` handler, use
        `await job.checkpoint(...)`."""
        self._from_thread(self.checkpoint(state), "checkpoint")

    def report_progress_sync(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """`report_progress()` for a plain `def` handler (which runs in a thread)."""
        self._from_thread(self.report_progress(done, total, message), "report_progress")

    def _from_thread(self, call: Coroutine[Any, Any, None], name: str) -> None:
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is not None:
            call.close()  # never started: not reported as forgotten
            self._now_started(name)
            if running is not None:
                raise RuntimeError(
                    f"{name}_sync() blocks its thread: from an async def handler, use "
                    f"`await job.{name}(...)`"
                )
            raise RuntimeError(
                f"{name}_sync() is only available inside a running handler; in a unit test, "
                "build the job with job_processor.testing.JobHarness"
            )
        if loop.is_closed() or not loop.is_running():  # the worker stopped: the run is over
            call.close()
            self._now_started(name)
            raise JobLostError(f"{name}_sync(): {_LOOP_GONE}")
        future = asyncio.run_coroutine_threadsafe(call, loop)
        while True:
            try:
                future.result(timeout=1.0)
                return
            except concurrent.futures.TimeoutError:  # a slow write, or a loop that stopped
                if loop.is_closed() or not loop.is_running():
                    future.cancel()
                    raise JobLostError(f"{name}_sync(): {_LOOP_GONE}") from None

    def not_awaited(self) -> list[str]:
        """The checkpoint() and report_progress() calls of this run that were never awaited
        (their state or progress was not saved)."""
        return list(self._unstarted) if self._unstarted else []

    def _started(self, call: Coroutine[Any, Any, None], name: str) -> Coroutine[Any, Any, None]:
        if self._unstarted is None:
            self._unstarted = []
        self._unstarted.append(name)
        return call

    def _now_started(self, name: str) -> None:
        if self._unstarted and name in self._unstarted:
            self._unstarted.remove(name)

    async def _checkpoint(self, state: dict[str, Any]) -> None:
        self._now_started("checkpoint")
        if self._checkpointer is None:
            raise RuntimeError(
                "checkpoint() is only available inside a running handler; in a unit test, "
                "build the job with job_processor.testing.JobHarness"
            )
        # as saved (a tuple as a list), not the dict the handler may go on changing
        self.state = await self._on_worker_loop(self._checkpointer(state))

    async def _on_worker_loop(self, call: Awaitable[Any]) -> Any:
        """`call` awaited on the worker's event loop, where its database client lives, even
        from another loop (an `asyncio.run()` in a plain def handler's thread), which cannot
        use that client."""
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            return await call
        if loop.is_closed() or not loop.is_running():  # the worker stopped: the run is over
            if inspect.iscoroutine(call):
                call.close()  # never started: not reported as forgotten
            raise JobLostError(_LOOP_GONE)
        future = asyncio.run_coroutine_threadsafe(_awaited(call), loop)
        waiting = asyncio.wrap_future(future)
        try:
            while True:  # as `_from_thread`: a worker loop that stops meanwhile ends the wait
                done, _ = await asyncio.wait({waiting}, timeout=1.0)
                if done:
                    if waiting.cancelled():  # by the worker's loop, at its shutdown
                        raise JobLostError(_LOOP_GONE)
                    return waiting.result()
                if loop.is_closed() or not loop.is_running():
                    raise JobLostError(_LOOP_GONE)
        finally:
            if not future.done() and not loop.is_closed():
                future.cancel()  # nothing more is sent (a closed loop runs nothing more)

    @_async_method
    def report_progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> Coroutine[Any, Any, None]:
        """Report how far the run is (`await job.report_progress(3, 10)`): `done` of `total`
        (any unit), with an optional message. Shown live by the dashboard and `jobs show`;
        writes are coalesced (at most one per second per job, the last value always written,
        with a checkpoint when both happen)."""
        return self._started(self._report_progress(done, total, message), "report_progress")

    async def _report_progress(self, done: float, total: float | None, message: str | None) -> None:
        self._now_started("report_progress")
        if self._notes is None:
            raise RuntimeError(
                "report_progress() is only available inside a running handler; in a unit test, "
                "build the job with job_processor.testing.JobHarness"
            )
        self.progress = await self._on_worker_loop(self._notes.progress(done, total, message))

    def log(self, message: Any, /, *args: Any, **fields: Any) -> None:
        """Add a line to the job's own log (kept on the job: the last 200 lines, each at most
        2 KB; written with the next progress, checkpoint or final write, at most once a second;
        masked like errors where shown). `args`: %-style arguments, as the stdlib's."""
        self.logger.info(message, *args, **fields)

    @property
    def logger(self) -> JobLogger:
        """A structlog-style bound logger writing the job's log lines, with their level."""
        return JobLogger(self._notes)

    def _carry(self, value: Any) -> None:
        """The run also holds `value` (a delivery's event payload): the worker's log hides the
        secrets it holds too, as the job's page does."""
        if self._notes is not None:
            self._notes.carry(value)

    async def dependencies(self) -> list[Job[Any]]:
        """The jobs this one was scheduled after (`after=[...]`), as they are now: their
        status and result (one read; one that was deleted since is left out, its status stays
        in `job.deps`)."""
        if self._given_dependencies is not None:  # JobHarness(dependencies=[...])
            return list(self._given_dependencies)
        if not self.after:
            return []
        if self._processor is None:
            raise RuntimeError(
                "job.dependencies() is only available inside a running handler; elsewhere, "
                "read them with await processor.get_jobs(job.after)"
            )
        return list(await self._on_worker_loop(self._processor.get_jobs(self.after)))

    @property
    def processor(self) -> Processor:
        """The processor running this job: chain jobs with
        `await job.processor.schedule_job(...)` from inside a handler."""
        if self._processor is None:
            raise RuntimeError("job.processor is only available inside a running handler")
        return self._processor

    @property
    def error(self) -> str | None:
        return self.output.error if self.output else None

    @property
    def result(self) -> Any:
        return self.output.result if self.output else None


# ---- events (their deliveries and the other reports are in `reports`) ----------------------


class Event(BaseModel):
    """An emitted event, as stored. Subscriber handlers get one (with `delivery` set: which
    delivery this run is); `get_event` fills `deliveries`."""

    model_config = ConfigDict(extra="ignore")

    id: str
    """Stable: the `webhook-id` of its webhooks, and what idempotent receivers key on."""
    name: str
    payload: dict[str, Any]
    key: str | None = None
    emitted_at: dt.datetime
    emitted_by: str | None = None
    """The emitting process (its worker id, or a client id when it was not started)."""
    instance_id: str | None = None
    targets: list[Target] = []
    """Who it was for, recorded when it was emitted: subscribers in declaration order, then
    webhook endpoints."""
    fanout: Literal["owed", "done"] = "done"
    """"owed" until every first delivery exists (completed by emit, else by recovery)."""
    replays: int = 0
    last_replayed_at: dt.datetime | None = None
    deliveries: list[Delivery] = []
    delivery: Delivery | None = None
    """In a subscriber's handler: the delivery being run (attempt, replay_id, job_id)."""

    _processor: Processor | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_document(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        doc = from_document(data)
        if doc.get("payload") is None:
            doc["payload"] = {}
        return doc

    @field_serializer("payload", when_used="json")
    def _json_payload(self, value: Any) -> Any:
        return to_jsonable(value)

    @property
    def processor(self) -> Processor:
        """In a handler: the processor running it (emit follow-up events from here)."""
        if self._processor is None:
            raise RuntimeError("event.processor is only available inside a subscriber handler")
        return self._processor


# ---- what a handler reaches through job.processor ------------------------------------------


class Processor(Protocol):
    """What a running handler reaches as `job.processor` (and a subscriber as
    `event.processor`): the processor running it, to chain jobs and emit events. A
    `JobProcessor` is one; `JobHarness(processor=...)` takes any object that is one."""

    @property
    def worker_id(self) -> str: ...

    async def schedule_job(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        scheduled_for: dt.datetime | None = None,
        *,
        priority: int = 0,
        key: str | None = None,
        max_attempts: int | None = None,
        delay: dt.timedelta | float | None = None,
        after: Iterable[Any] | None = None,
        on_dependency_failure: str = "skip",
    ) -> Job[Any]: ...

    async def run_job(
        self, name: str, payload: Mapping[str, Any] | BaseModel | None = None
    ) -> Job[Any]: ...

    async def schedule_jobs(self, items: Iterable[Any]) -> list[Job[Any]]: ...

    async def wait_for(
        self,
        job_id: str | ObjectId,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract (see JobsAPI.wait_for)
    ) -> Job[Any]: ...

    async def result(
        self,
        job_id: str | ObjectId,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract
    ) -> Any: ...

    async def get_job(self, job_id: str | ObjectId) -> Job[Any]: ...

    async def get_jobs(self, job_ids: Iterable[str | ObjectId]) -> list[Job[Any]]: ...

    async def list_jobs(
        self, name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Job[Any]]: ...

    async def kill_job(self, job_id: str | ObjectId) -> Job[Any]: ...

    async def retry_job(self, job_id: str | ObjectId) -> Job[Any]: ...

    async def trigger_cron(self, name: str) -> Job[Any]: ...

    async def emit(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        key: str | None = None,
        sync_timeout: float = 30.0,
    ) -> Event: ...

    async def get_event(self, event_id: str | ObjectId) -> Event: ...


def id_list(job_ids: Any) -> Iterable[Any]:
    """`get_jobs`'s argument: a list (any iterable) of job ids; one id given alone is refused,
    never read as its characters."""
    if isinstance(job_ids, str | bytes | ObjectId | Job) or not isinstance(job_ids, Iterable):
        raise InvalidArgumentError(
            f"get_jobs takes a list of job ids, got a {type(job_ids).__name__}: "
            "get_jobs([job_id]), or get_job(job_id) for one"
        )
    return job_ids
