"""JobProcessor, the public object, and init_job_processor."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import bson
from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from . import sentry
from .clock import Clock, SystemClock, to_millis
from .crons import CronScheduler, schedule_of
from .definitions import CronDef, JobDef, parse_crons, parse_jobs
from .errors import (
    InvalidDefinitionError,
    InvalidPayloadError,
    JobNotFoundError,
    JobProcessorError,
    UnknownJobError,
)
from .heartbeat import Heartbeat
from .log import EventLog, make_log
from .models import Job, JobStatus, ProcessorStatus, WorkerInfo
from .signals import KillWatcher, stop_on_signals
from .store import Doc, Store, epoch_ms, object_id
from .wakeup import ChangeStreamWaker
from .worker import Settings, Worker, call_exit_hook

S = JobStatus


class JobProcessor:
    """Schedules, runs and supervises jobs. Create it with `await init_job_processor(...)`."""

    def __init__(
        self,
        store: Store,
        jobs: dict[str, JobDef],
        crons: dict[str, CronDef],
        worker_tags: list[str] | None,
        clock: Clock,
        log: EventLog,
        settings: Settings,
        instance_id: str | None,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.crons = crons
        self.definitions: dict[str, JobDef] = {**jobs, **crons}
        self.worker_tags = worker_tags
        self.clock = clock
        self.log = log
        self.settings = settings
        self.instance_id = instance_id
        self.worker = Worker(store, self.definitions, worker_tags, clock, log, settings)
        self.heartbeat = Heartbeat(
            store, self.worker, self.definitions, clock, log, worker_tags, instance_id
        )
        self.kill_watcher = KillWatcher(self.worker, store, clock, settings.poll_interval)
        self.scheduler = CronScheduler(store, crons, clock, log, self._on_cron_task)
        self.waker = ChangeStreamWaker(
            store, self.worker, clock, log, settings.change_stream_max_await
        )
        self.worker.stream_blocking = lambda: self.waker.active and self.waker.blocking is True
        self._users = 0
        self._runtime_lock = asyncio.Lock()
        self._side_loops: asyncio.Task[None] | None = None
        self._worker_loops: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()
        """Set when a background loop died: `serve()` then exits with an error."""

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    @property
    def started(self) -> bool:
        return self._worker_loops is not None

    # ---- lifecycle ------------------------------------------------------------------------

    async def _acquire_runtime(self) -> None:
        """Worker document + heartbeat + kill delivery, held while started or running run_job."""
        async with self._runtime_lock:
            self._users += 1
            if self._users > 1:
                return
            self.heartbeat.stop_event.clear()
            self.kill_watcher.stop_event.clear()
            await self.heartbeat.register()
            self._side_loops = asyncio.create_task(self._run_side_loops(), name="side-loops")

    async def _run_side_loops(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.heartbeat.loop(), name="heartbeat")
                tg.create_task(self.kill_watcher.loop(), name="kill-watcher")
        except Exception:
            self.log.exception("processor_loop_crashed", worker_id=self.worker_id)
            self.failed.set()
            raise

    async def _release_runtime(self) -> None:
        async with self._runtime_lock:
            self._users -= 1
            if self._users > 0:
                return
            self.heartbeat.stop_event.set()
            self.kill_watcher.stop_event.set()
            if self._side_loops is not None:
                with contextlib.suppress(Exception):
                    await self._side_loops
                self._side_loops = None
            await self.heartbeat.unregister()

    async def start(self) -> None:
        """Start claiming and running jobs in the background; returns at once."""
        if self.started:
            return
        self.worker.stopping.clear()
        self.scheduler.stop_event.clear()
        self.waker.stop_event.clear()
        await self._acquire_runtime()
        # recover what dead workers left behind before taking new work
        await self.heartbeat.sweep(self.clock.now())
        self._worker_loops = asyncio.create_task(self._run_worker_loops(), name="worker-loops")

    async def _run_worker_loops(self) -> None:
        """The claim loop and the cron scheduler: if one dies, both stop, loudly."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.worker.claim_loop(), name="claim-loop")
                tg.create_task(self.scheduler.loop(), name="cron-scheduler")
                if self.settings.change_streams and self.worker.names:
                    tg.create_task(self.waker.loop(), name="change-stream")
        except Exception:
            self.log.exception("processor_loop_crashed", worker_id=self.worker_id)
            self.failed.set()
            raise

    async def stop(self) -> None:
        """Graceful: no new claims; running handlers get the abort signal (reason "shutdown") and
        `shutdown_grace` seconds, then are cancelled. Resumable jobs become paused, others
        errored ("interrupted"). Returns when every final status is written."""
        if not self.started:
            return
        self.log.info("worker_stopping", worker_id=self.worker_id)
        self.worker.request_stop()
        self.scheduler.stop_event.set()
        self.waker.stop_event.set()
        assert self._worker_loops is not None
        with contextlib.suppress(Exception):
            await self._worker_loops
        await self.worker.drain()
        self._worker_loops = None
        await self._release_runtime()

    async def serve(self) -> None:
        """start(), block until SIGTERM/SIGINT (or a crashed loop), then stop()."""
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await self.start()
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self.failed.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
                await self.stop()
        if self.failed.is_set():
            raise RuntimeError("a job-processor loop crashed; see the processor_loop_crashed log")

    async def __aenter__(self) -> JobProcessor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- jobs -----------------------------------------------------------------------------

    def _definition(self, name: str) -> JobDef:
        if not isinstance(name, str) or name not in self.jobs:
            raise UnknownJobError(str(name), list(self.jobs))
        return self.jobs[name]

    @staticmethod
    def _check_payload(name: str, payload: Any) -> dict[str, Any]:
        if payload is None:
            return {}
        if not isinstance(payload, Mapping):
            raise InvalidPayloadError(
                f"job {name!r}: payload must be a dict, got {type(payload).__name__}"
            )
        try:
            bson.encode(dict(payload))
        except (bson.errors.InvalidDocument, TypeError, OverflowError) as exc:
            raise InvalidPayloadError(
                f"job {name!r}: payload cannot be stored in MongoDB ({exc}); "
                "use str, int, float, bool, None, datetime, lists and dicts"
            ) from None
        return dict(payload)

    async def schedule_job(
        self,
        name: str,
        payload: Mapping[str, Any] | None = None,
        scheduled_for: dt.datetime | None = None,
        *,
        priority: int = 0,
        key: str | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Queue a job; a worker whose tags allow it runs it at `scheduled_for` (default: now).

        priority: higher first (then scheduled_for, then insertion order).
        key: dedup key; while a job with this key is pending, running or paused, that job is
        returned instead of a new one.
        max_attempts: overrides the definition's (1 = no retry).
        An exclusive job whose name already has an active job is recorded as skipped."""
        definition = self._definition(name)
        body = self._check_payload(name, payload)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidPayloadError(
                f"job {name!r}: priority must be an integer, got {priority!r}"
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidPayloadError(f"job {name!r}: key must be a non-empty string, got {key!r}")
        attempts = definition.max_attempts if max_attempts is None else max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise InvalidPayloadError(
                f"job {name!r}: max_attempts must be an integer >= 1, got {max_attempts!r}"
            )
        now = self.clock.now()
        when = to_millis(scheduled_for) if scheduled_for is not None else now
        doc = self.store.new_job(
            name,
            body,
            now=now,
            scheduled_for=when,
            tag=definition.tag,
            priority=priority,
            exclusive=definition.concurrency == "exclusive",
            key=key,
            max_attempts=attempts,
        )
        job = Job.model_validate(await self._insert(doc))
        if job.id != str(doc["_id"]):
            self.log.info("job_deduplicated", job_id=job.id, job_name=name, key=key)
            return job
        if job.status == S.SKIPPED:
            self.log.info(
                "job_skipped",
                job_id=job.id,
                job_name=name,
                conflicting_job_id=job.conflicting_job_id,
            )
            return job
        self.log.info("job_scheduled", job_id=job.id, job_name=name, scheduled_for=when.isoformat())
        if self.started and name in self.worker.names:
            self.worker.wake_at(when)
        return job

    async def retry_job(self, job_id: str | ObjectId) -> Job:
        """Re-queue an errored or killed job now, keeping its history; its attempts count afresh."""
        oid = object_id(job_id)
        current = await self.get_job(oid)
        definition = self.definitions.get(current.name)
        exclusive = definition is not None and definition.concurrency == "exclusive"
        try:
            doc = await self.store.retry(oid, self.clock.now(), exclusive)
        except DuplicateKeyError:
            doc = None
        if doc is None:
            after = await self.get_job(oid)
            if after.status in (S.ERRORED, S.KILLED):
                raise JobProcessorError(
                    f"job {after.name!r} {after.id}: cannot retry while another job with the same "
                    f"{'key' if after.key else 'name (exclusive)'} is active; retry it later"
                )
            raise JobProcessorError(
                f"job {after.name!r} {after.id} is {after.status.value}: only errored or killed "
                "jobs can be retried"
            )
        job = Job.model_validate(doc)
        self.log.info("job_retried", job_id=job.id, job_name=job.name)
        if self.started and job.name in self.worker.names:
            self.worker.wake.set()
        return job

    async def run_job(self, name: str, payload: Mapping[str, Any] | None = None) -> Job:
        """Run a job now in this process (recorded in MongoDB like any other) and return the
        final Job. The process heartbeats meanwhile, so a crash here is recovered as usual."""
        definition = self._definition(name)
        body = self._check_payload(name, payload)
        await self._acquire_runtime()
        try:
            now = self.clock.now()
            doc = self.store.new_job(
                name,
                body,
                now=now,
                tag=definition.tag,
                exclusive=definition.concurrency == "exclusive",
                max_attempts=definition.max_attempts,
            )
            doc = await self._insert(self.store.mark_running(doc, self.worker_id, now))
            if doc["status"] == S.SKIPPED:
                return Job.model_validate(doc)
            final = await self.worker.spawn(doc)
            if final is None:  # lost to another process: report what the database says
                return await self.get_job(str(doc["_id"]))
            return Job.model_validate(final)
        finally:
            await self._release_runtime()

    async def _insert(self, doc: Doc) -> Doc:
        inserted = await self.store.insert_job(doc)
        assert inserted is not None  # None only for cron slots, which these are not
        return inserted

    def _on_cron_task(self, task: Doc) -> None:
        if task["status"] == S.PENDING and task["name"] in self.worker.names:
            self.worker.wake.set()
        elif task["status"] == S.SKIPPED and task.get("skip_reason") == "exclusive":
            # the previous run covers this slot: tell monitoring it is fine, not missed
            sentry.checkin(task["name"], self.crons[task["name"]], "ok")

    async def trigger_cron(self, name: str) -> Job:
        """Run a cron once now, outside its schedule (recorded with trigger "manual")."""
        if name not in self.crons:
            known = ", ".join(sorted(self.crons)) or "none"
            raise UnknownJobError.for_cron(name, known)
        cron = self.crons[name]
        doc = self.store.new_job(
            name,
            {},
            now=self.clock.now(),
            tag=cron.tag,
            exclusive=cron.concurrency == "exclusive",
            job_type="cron_task",
            extra={"trigger": "manual", "start_deadline": None},
        )
        job = Job.model_validate(await self._insert(doc))
        self.log.info("cron_triggered", job_id=job.id, job_name=name, status=job.status.value)
        if job.status == S.PENDING and self.started and name in self.worker.names:
            self.worker.wake.set()
        return job

    async def get_job(self, job_id: str | ObjectId) -> Job:
        doc = await self.store.get_job(object_id(job_id))
        if doc is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        return Job.model_validate(doc)

    async def list_jobs(
        self, name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Job]:
        """Most recent first."""
        return [Job.model_validate(d) for d in await self.store.list_jobs(name, status, limit)]

    async def kill_job(self, job_id: str | ObjectId) -> Job:
        """Kill a job from any process. Pending/paused jobs are killed at once; a running job's
        handler gets the abort signal (reason "killed") on whichever process runs it."""
        outcome, doc = await self.store.kill(object_id(job_id), self.clock.now())
        fields = {"job_id": str(doc["_id"]), "job_name": doc["name"], "worker_id": self.worker_id}
        if outcome == "killed":
            self.log.info("job_killed", **fields)
            await call_exit_hook(self.definitions.get(doc["name"]), doc, self.log)
        elif outcome == "requested":
            self.log.info("job_kill_requested", running_on=doc.get("worker_id"), **fields)
            self.worker.abort(str(doc["_id"]), "killed")  # at once when it runs in this process
        return Job.model_validate(doc)

    async def get_status(self) -> ProcessorStatus:
        now = self.clock.now()
        running = await self.store.running_jobs()
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for r in running:
            by_worker.setdefault(str(r.get("worker_id")), []).append(
                {"id": str(r["_id"]), "name": r["name"], "started_at": r.get("run_started_at")}
            )
        workers = []
        for w in await self.store.list_workers():
            info = WorkerInfo.model_validate(w)
            info.alive = info.last_seen >= now - dt.timedelta(seconds=self.settings.worker_timeout)
            info.running_jobs = by_worker.get(info.id, [])
            workers.append(info)
        jobs: dict[str, dict[str, int]] = {name: {} for name in self.definitions}
        for status in S:
            for name, n in (await self.store.counts_by_name(status)).items():
                jobs.setdefault(name, {})[status.value] = n
        queue = {
            "pending": sum(j.get("pending", 0) for j in jobs.values()),
            "due": await self.store.count(
                {"status": S.PENDING.value, "due_ms": {"$lte": epoch_ms(now)}}
            ),
            "paused": sum(j.get("paused", 0) for j in jobs.values()),
            "running": len(running),
        }
        return ProcessorStatus(
            now=now,
            worker_id=self.worker_id,
            workers=workers,
            queue=queue,
            jobs=jobs,
            crons=await self._cron_status(running),
        )

    async def _cron_status(self, running: list[Doc]) -> list[dict[str, Any]]:
        docs = {d["_id"]: d for d in await self.store.cron_docs(list(self.crons))}
        out = []
        for name, cron in self.crons.items():
            schedule = schedule_of(cron)
            next_slot = docs.get(name, {}).get("next_slot")
            out.append(
                {
                    "name": name,
                    "cron_string": cron.cron_string,
                    "timezone": cron.timezone,
                    "next_slot_utc": next_slot,
                    "next_slot_local": schedule.local(next_slot) if next_slot else None,
                    "running": [str(r["_id"]) for r in running if r["name"] == name],
                    "recent": [
                        {
                            "id": str(t["_id"]),
                            "slot": t["scheduled_for"],
                            "trigger": t.get("trigger"),
                            "status": t["status"],
                            "skip_reason": t.get("skip_reason"),
                            "error": (t.get("output") or {}).get("error"),
                        }
                        for t in await self.store.recent_tasks(name)
                    ],
                }
            )
        return out


def _check_positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise InvalidDefinitionError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


async def init_job_processor(
    db: Any,
    logger: Any | None = None,
    jobs: Mapping[str, JobDef | Mapping[str, Any]] | None = None,
    crons: Mapping[str, CronDef | Mapping[str, Any]] | None = None,
    worker_tags: list[str] | None = None,
    concurrency: int = 1,
    *,
    poll_interval: float = 2.0,
    heartbeat_interval: float = 5.0,
    worker_timeout: float = 30.0,
    shutdown_grace: float = 10.0,
    change_streams: bool = True,
    change_stream_max_await: float = 10.0,
    idle_poll_interval: float = 15.0,
    collection_prefix: str = "job_processor_",
    clock: Clock | None = None,
    instance_id: str | None = None,
) -> JobProcessor:
    """Validate the definitions, create the collections' indexes, return a JobProcessor.

    worker_tags: None = this process runs every job; ["main"] = untagged jobs + jobs tagged main.
    instance_id defaults to the INSTANCE_ID environment variable (recorded on the worker).
    """
    job_defs = parse_jobs(jobs)
    cron_defs = parse_crons(crons)
    clash = set(job_defs) & set(cron_defs)
    if clash:
        raise InvalidDefinitionError(
            f"names used both as a job and a cron: {sorted(clash)}; give each a distinct name"
        )
    if worker_tags is not None:
        if isinstance(worker_tags, str) or not isinstance(worker_tags, list | tuple):
            raise InvalidDefinitionError(
                f"worker_tags must be a list of strings or None, got {worker_tags!r}"
            )
        if not worker_tags:
            raise InvalidDefinitionError(
                "worker_tags=[] would run no job: pass None to run every job, "
                "or a list such as ['main']"
            )
        worker_tags = [str(t) for t in worker_tags]
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise InvalidDefinitionError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    settings = Settings(
        concurrency=concurrency,
        poll_interval=_check_positive("poll_interval", poll_interval),
        heartbeat_interval=_check_positive("heartbeat_interval", heartbeat_interval),
        worker_timeout=_check_positive("worker_timeout", worker_timeout),
        shutdown_grace=_check_positive("shutdown_grace", shutdown_grace),
        change_streams=bool(change_streams),
        change_stream_max_await=_check_positive("change_stream_max_await", change_stream_max_await),
        idle_poll_interval=max(
            _check_positive("idle_poll_interval", idle_poll_interval), float(poll_interval)
        ),
    )
    if settings.worker_timeout < 2 * settings.heartbeat_interval:
        raise InvalidDefinitionError(
            f"worker_timeout ({worker_timeout}s) must be at least twice heartbeat_interval "
            f"({heartbeat_interval}s), or live workers would be declared dead"
        )
    if not collection_prefix or "." in collection_prefix or "$" in collection_prefix:
        raise InvalidDefinitionError(
            f"collection_prefix {collection_prefix!r} must be non-empty, without '.' or '$'"
        )
    store = Store(db, collection_prefix)
    await store.ensure_indexes()
    log = make_log(logger)
    now = (clock or SystemClock()).now()
    registered = await store.register_crons(
        cron_defs, {name: schedule_of(c).next_after(now) for name, c in cron_defs.items()}, now
    )
    for name, what in registered.items():
        if what != "kept":
            log.info(f"cron_{what}", job_name=name)
    processor = JobProcessor(
        store,
        job_defs,
        cron_defs,
        worker_tags,
        clock or SystemClock(),
        log,
        settings,
        instance_id if instance_id is not None else os.environ.get("INSTANCE_ID"),
    )
    log.info(
        "job_processor_initialized",
        jobs=sorted(job_defs),
        crons=sorted(cron_defs),
        worker_tags=worker_tags,
        eligible=processor.worker.names,
    )
    return processor
