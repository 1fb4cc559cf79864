"""JobProcessor, the public object (thin: it validates arguments and delegates), and
init_job_processor."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from pydantic import BaseModel, ValidationError
from pymongo.errors import DuplicateKeyError

from .core import documents as D
from .core import retention as R
from .core.clock import Clock, SystemClock, to_millis
from .core.definitions import (
    CronDef,
    JobDef,
    Subscriber,
    cron_reading,
    parse_crons,
    parse_jobs,
    parse_subscribers,
)
from .core.errors import (
    InvalidArgumentError,
    InvalidDefinitionError,
    InvalidPayloadError,
    JobNotFoundError,
    JobProcessorError,
    UnknownJobError,
)
from .core.log import EventLog, make_log
from .core.models import Job, ProcessorStatus
from .core.retention import Keep
from .core.retries import RETRYABLE, retry_refusal
from .core.schedule import schedule_of
from .core.settings import Settings, check_keep_events, check_positive, retention_of
from .core.status import JobStatus, parse_status
from .engine.runtime import Runtime
from .events.api import EventsAPI
from .events.bus import EventBus
from .events.queries import untargeted_warnings
from .events.webhooks import Format, WebhookOptions, load_secrets, webhook_warnings
from .ops.status import build_status
from .storage import Storage, object_id
from .storage.connect import check_reachable
from .storage.jobs import MAX_SORTED_NAMES, MAX_VALUE_BYTES

S = JobStatus
Doc = dict[str, Any]


class JobProcessor(Runtime, EventsAPI):
    """Schedules, runs and supervises jobs; emits events and delivers them.

    The engine underneath (worker, hooks, recovery, heartbeat, crons: `engine.runtime.Runtime`)
    and the event methods (`events.api.EventsAPI`) are its bases; this class adds the
    scheduling API. Create it with `await init_job_processor(...)`."""

    def __init__(
        self,
        storage: Storage,
        jobs: dict[str, JobDef],
        crons: dict[str, CronDef],
        worker_tags: list[str] | None,
        clock: Clock,
        log: EventLog,
        settings: Settings,
        instance_id: str | None,
        bus: EventBus | None = None,
    ) -> None:
        self.jobs = jobs
        self.crons = crons
        # events (docs/events.md): delivery jobs are defined by the bus, run like any job
        self.events = bus or EventBus(
            storage,
            {},
            clock,
            log,
            secrets={},
            formats=None,
            options=WebhookOptions(),
            worker_timeout=settings.worker_timeout,
            instance_id=instance_id,
        )
        definitions = {**jobs, **crons, **self.events.definitions()}
        super().__init__(
            storage, definitions, crons, worker_tags, clock, log, settings, instance_id
        )
        self.worker.processor = self
        self.recovery.sweeps.append(self.events.sweep)  # owed event fan-outs
        self.events.bind(self, self)
        self.on_stop.append(self.events.close)  # the webhooks' HTTP client

    def _definition(self, name: str) -> JobDef:
        if not isinstance(name, str) or name not in self.jobs:
            raise UnknownJobError(str(name), list(self.jobs))
        return self.jobs[name]

    @staticmethod
    def _check_payload(name: str, definition: JobDef, payload: Any) -> dict[str, Any]:
        model = definition.payload_model
        if model is not None:
            if isinstance(payload, BaseModel) and not isinstance(payload, model):
                raise InvalidPayloadError(
                    f"job {name!r}: payload must be a {model.__name__}, got "
                    f"{type(payload).__name__}"
                )
            try:
                value = payload if isinstance(payload, model) else model.model_validate(payload)
            except ValidationError as exc:
                fields = "; ".join(
                    f"field {'.'.join(str(p) for p in e['loc']) or '(payload)'!r}: {e['msg']}"
                    for e in exc.errors()
                )
                raise InvalidPayloadError(
                    f"job {name!r}: payload does not match {model.__name__}: {fields}"
                ) from None
            payload = value.model_dump(mode="json")
        return D.checked_payload("job", name, payload, MAX_VALUE_BYTES)

    @staticmethod
    def _check_when(name: str, scheduled_for: Any) -> dt.datetime | None:
        if scheduled_for is None:
            return None
        if not isinstance(scheduled_for, dt.datetime):
            raise InvalidArgumentError(
                f"job {name!r}: scheduled_for must be a timezone-aware datetime, got "
                f"{type(scheduled_for).__name__} {scheduled_for!r}"
            )
        if scheduled_for.tzinfo is None or scheduled_for.utcoffset() is None:
            raise InvalidArgumentError(
                f"job {name!r}: scheduled_for {scheduled_for.isoformat()} has no timezone; "
                "pass an aware datetime, e.g. datetime.now(UTC) + timedelta(hours=1) or "
                "datetime(2030, 1, 1, 9, tzinfo=ZoneInfo('Europe/Paris'))"
            )
        return to_millis(scheduled_for)

    async def schedule_job(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        scheduled_for: dt.datetime | None = None,
        *,
        priority: int = 0,
        key: str | None = None,
        max_attempts: int | None = None,
    ) -> Job[Any]:
        """Queue a job; a worker whose tags allow it runs it at `scheduled_for` (aware; default
        now).

        priority: higher first (then scheduled_for, then insertion order).
        key: dedup key, scoped by job name: while a job of this name with this key is pending,
        running or paused, that job is returned instead of a new one.
        max_attempts: overrides the definition's (1 = no retry).
        An exclusive job whose name already has an active job is recorded as skipped."""
        definition = self._definition(name)
        body = self._check_payload(name, definition, payload)
        when = self._check_when(name, scheduled_for)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidPayloadError(
                f"job {name!r}: priority must be an integer, got {priority!r}"
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidPayloadError(f"job {name!r}: key must be a non-empty string, got {key!r}")
        attempts = definition.attempts if max_attempts is None else max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise InvalidPayloadError(
                f"job {name!r}: max_attempts must be an integer >= 1, got {max_attempts!r}"
            )
        now = self.clock.now()
        when = when or now
        doc = D.new_job(
            name,
            body,
            now=now,
            scheduled_for=when,
            tag=definition.tag,
            priority=priority,
            exclusive=definition.concurrency == "exclusive",
            key=key,
            max_attempts=attempts,
            resumable=definition.resumable,
            limit_key=definition.limit.key if definition.limit else None,
        )
        job = Job.read(await self._insert(doc))
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

    async def retry_job(self, job_id: str | ObjectId) -> Job[Any]:
        """Re-queue an errored or killed job now, keeping its history and checkpoint; its
        attempts count afresh. Its next exit calls on_job_exited again. If the hook of the exit
        being retried has not run yet, it runs here first (with that exit's status)."""
        oid = object_id(job_id)
        stored = await self.storage.jobs.get(oid)
        if stored is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        if stored.get("exit_hook") == "owed" and stored.get("status") in RETRYABLE:
            settled = await self.hooks.settle(stored, self.identity, self.settings.worker_timeout)
            stored = settled or stored
        definition = self.definitions.get(str(stored["name"]))
        exclusive = definition is not None and definition.concurrency == "exclusive"
        try:
            doc = await self.storage.jobs.retry(oid, self.clock.now(), exclusive)
        except DuplicateKeyError:
            what = "key" if stored.get("key") else "name (exclusive)"
            raise JobProcessorError(
                f"job {stored['name']!r} {oid}: cannot retry while another job with the same "
                f"{what} is active; retry it later"
            ) from None
        if doc is None:
            why = retry_refusal(await self.storage.jobs.get(oid))
            raise JobProcessorError(f"job {stored['name']!r} {oid}: {why}")
        job = Job.read(doc)
        self.log.info("job_retried", job_id=job.id, job_name=job.name)
        if self.started and job.name in self.worker.names:
            self.worker.wake.set()
        return job

    async def run_job(
        self, name: str, payload: Mapping[str, Any] | BaseModel | None = None
    ) -> Job[Any]:
        """Run a job now in this process (recorded in MongoDB like any other) and return the
        final Job. The process heartbeats meanwhile, so a crash here is recovered as usual."""
        definition = self._definition(name)
        body = self._check_payload(name, definition, payload)
        await self._acquire_runtime()
        try:
            run_id = None
            if definition.limit is not None:  # wait for a slot: it is cluster-wide
                run_id = await self.worker.limiter.reserve(
                    definition.limit, self.worker_id, self.clock, self.settings.poll_interval
                )
            now = self.clock.now()
            doc = D.new_job(
                name,
                body,
                now=now,
                tag=definition.tag,
                exclusive=definition.concurrency == "exclusive",
                max_attempts=definition.attempts,
                resumable=definition.resumable,
                limit_key=definition.limit.key if definition.limit else None,
            )
            try:
                doc = await self._insert(D.as_running(doc, self.worker_id, now, run_id))
            except BaseException:
                if run_id is not None:
                    await self.worker.limiter.release(doc | {"run_id": run_id})
                raise
            if doc["status"] == S.SKIPPED:
                if run_id is not None:  # never ran: its slot goes back
                    await self.worker.limiter.release(doc | {"run_id": run_id})
                return Job.read(doc)
            final = await self.worker.spawn(doc)
            if final is None:  # lost to another process: report what the database says
                return await self.get_job(str(doc["_id"]))
            return Job.read(final)
        finally:
            await self._release_runtime()

    async def _insert(self, doc: Doc) -> Doc:
        """Insert; an exclusive conflict records the job as skipped, kept like a finished one."""
        keep = R.of(self.definitions.get(doc["name"]), self.settings.retention)
        skipped_expiry = keep.expires_at(S.SKIPPED, doc["created_at"]) if keep else None
        inserted = await self.storage.jobs.insert(doc, skipped_expiry)
        assert inserted is not None  # None only for cron slots, which these are not
        return inserted

    async def trigger_cron(self, name: str) -> Job[Any]:
        """Run a cron once now, outside its schedule (recorded with trigger "manual")."""
        if name not in self.crons:
            known = ", ".join(sorted(self.crons)) or "none"
            raise UnknownJobError.for_cron(name, known)
        cron = self.crons[name]
        doc = D.manual_cron_task(
            name,
            now=self.clock.now(),
            tag=cron.tag,
            exclusive=cron.concurrency == "exclusive",
            max_attempts=cron.attempts,
            resumable=cron.resumable,
        )
        job = Job.read(await self._insert(doc))
        self.log.info("cron_triggered", job_id=job.id, job_name=name, status=job.status.value)
        if job.status == S.PENDING and self.started and name in self.worker.names:
            self.worker.wake.set()
        return job

    async def prune_crons(self) -> list[str]:
        """Remove the crons stored in MongoDB that this processor does not define, with their
        pending tasks. Explicit on purpose: init_job_processor never removes anything (an old
        replica restarting during a rolling deploy must not delete the new crons)."""
        gone = await self.storage.crons.names_other_than(list(self.crons))
        if gone:
            await self.storage.crons.remove(gone)
            await self.storage.jobs.delete_pending_tasks_of(gone)
            for name in gone:
                self.log.info("cron_removed", job_name=name)
        return sorted(gone)

    # ---- reading and killing ----------------------------------------------------------------

    async def get_job(self, job_id: str | ObjectId) -> Job[Any]:
        doc = await self.storage.jobs.get(object_id(job_id))
        if doc is None:
            raise JobNotFoundError(f"no job with id {str(job_id)!r}")
        return Job.read(doc)

    async def list_jobs(
        self, name: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Job[Any]]:
        """Most recent first. `status` is one of the JobStatus values."""
        wanted = parse_status(status) if status is not None else None
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidArgumentError(f"limit must be a positive integer, got {limit!r}")
        docs = await self.storage.jobs.find(name, wanted, limit)
        return [Job.read(d) for d in docs]

    async def kill_job(self, job_id: str | ObjectId) -> Job[Any]:
        """Kill a job from any process. Pending/paused jobs are killed at once (this process
        calls on_job_exited); a running job's handler gets the abort signal (reason "killed")
        on whichever process runs it."""
        writer = self.worker_id or self.client_id
        outcome, doc = await self.storage.jobs.kill(object_id(job_id), self.clock.now(), writer)
        fields = {"job_id": str(doc["_id"]), "job_name": doc["name"], "worker_id": self.worker_id}
        if outcome == "killed":
            self.log.info("job_killed", **fields)
            await self.hooks.after_write(self.definitions.get(doc["name"]), doc)
        elif outcome == "requested":
            self.log.info("job_kill_requested", running_on=doc.get("worker_id"), **fields)
            self.worker.abort(str(doc["_id"]), "killed")  # at once when it runs in this process
        return Job.read(doc)

    async def get_status(self) -> ProcessorStatus:
        status = await build_status(
            self.storage,
            self.definitions,
            self.crons,
            self.worker_id,
            self.settings.worker_timeout,
            self.clock.now(),
        )
        status.warnings += await webhook_warnings(self.storage)
        status.warnings += await untargeted_warnings(self.storage, status.now)
        return status


def _webhook_options(value: Any) -> WebhookOptions:
    if value is None or isinstance(value, WebhookOptions):
        return value or WebhookOptions()
    try:
        return WebhookOptions.model_validate(value)
    except ValidationError as exc:
        fields = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc'])!r}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidDefinitionError(f"webhook_options: {fields}") from None


def warn_unexpanded_instance_id(instance_id: str | None, log: EventLog) -> None:
    if instance_id and "{{" in instance_id:
        log.warning(
            "instance_id_not_expanded",
            instance_id=instance_id,
            hint="plain `docker compose` does not expand {{.Task.Slot}} (only swarm does): every "
            "replica gets the same INSTANCE_ID and tags; see docs/operations.md",
        )


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
    connect_timeout: float = 10.0,
    keep_finished: Keep = R.DEFAULT_KEEP_FINISHED,
    keep_failed: Keep = R.DEFAULT_KEEP_FAILED,
    unknown_name_grace: float = 3600.0,
    keep_events: dt.timedelta | bool = dt.timedelta(days=30),
    subscribers: Mapping[str, list[Subscriber] | list[Mapping[str, Any]]] | None = None,
    webhook_secrets: Mapping[str, str] | None = None,
    webhook_formats: Mapping[str, Format] | None = None,
    webhook_options: WebhookOptions | Mapping[str, Any] | None = None,
    strict_events: bool = False,
) -> JobProcessor:
    """Validate the definitions, check MongoDB answers, create the collections' indexes,
    register the crons (never removing any: see `JobProcessor.prune_crons`), return a
    JobProcessor.

    worker_tags: None = this process runs every job; ["main"] = untagged jobs + jobs tagged main.
    instance_id defaults to the INSTANCE_ID environment variable (recorded on the worker).
    subscribers: event name -> [Subscriber, ...] (registered in MongoDB for every publisher);
    webhook_secrets: secret_ref -> "whsec_..." (default: JSON in JOB_PROCESSOR_WEBHOOK_SECRETS);
    webhook_formats: format name -> fn(event, endpoint); webhook_options: WebhookOptions.
    strict_events: emit() raises (naming the closest known event names) for an event no
    subscriber and no webhook endpoint listens to, instead of storing it with a warning.
    See docs/events.md.
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
        poll_interval=check_positive("poll_interval", poll_interval),
        heartbeat_interval=check_positive("heartbeat_interval", heartbeat_interval),
        worker_timeout=check_positive("worker_timeout", worker_timeout),
        shutdown_grace=check_positive("shutdown_grace", shutdown_grace),
        change_streams=bool(change_streams),
        change_stream_max_await=check_positive("change_stream_max_await", change_stream_max_await),
        idle_poll_interval=max(
            check_positive("idle_poll_interval", idle_poll_interval), float(poll_interval)
        ),
        retention=retention_of(keep_finished, keep_failed),
        unknown_name_grace=check_positive("unknown_name_grace", unknown_name_grace),
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
    check_positive("connect_timeout", connect_timeout)
    subscriber_defs = parse_subscribers(subscribers)
    secrets = load_secrets(webhook_secrets)
    hook_options = _webhook_options(webhook_options)
    Storage(db, collection_prefix)  # refuses a sync database or a client, before any I/O
    log = make_log(logger)
    await check_reachable(db, connect_timeout)
    storage = await Storage.open(db, collection_prefix)
    await storage.ensure_indexes()
    clock = clock or SystemClock()
    now = clock.now()
    registered = await storage.crons.register(
        cron_defs, {name: schedule_of(c).next_after(now) for name, c in cron_defs.items()}, now
    )
    for name, what in registered.items():
        if what != "kept":
            log.info(f"cron_{what}", job_name=name)
    for name, cron in cron_defs.items():
        reading = cron_reading(cron.cron_string)
        if reading is not None:  # "*/5 * * * * 1" is every 5 s on Mondays, not what was meant?
            log.warning(
                "cron_string_has_seconds",
                job_name=name,
                cron_string=cron.cron_string,
                reading=reading,
                hint="write 5 fields (minute hour day month weekday) unless seconds are meant",
            )
    instance = instance_id if instance_id is not None else os.environ.get("INSTANCE_ID")
    warn_unexpanded_instance_id(instance, log)
    bus = EventBus(
        storage,
        subscriber_defs,
        clock,
        log,
        secrets=secrets,
        formats=webhook_formats,
        options=hook_options,
        worker_timeout=settings.worker_timeout,
        instance_id=instance,
        keep_events=check_keep_events(keep_events),
        strict_events=bool(strict_events),
    )
    EventBus.check_names([*job_defs, *cron_defs], list(bus.definitions()))
    processor = JobProcessor(
        storage, job_defs, cron_defs, worker_tags, clock, log, settings, instance, bus
    )
    await bus.register()
    log.info(
        "job_processor_initialized",
        jobs=sorted(job_defs),
        crons=sorted(cron_defs),
        worker_tags=worker_tags,
        eligible=processor.worker.names,
    )
    if len(processor.worker.names) > MAX_SORTED_NAMES:
        log.warning(
            "too_many_job_names",
            names=len(processor.worker.names),
            most=MAX_SORTED_NAMES,
            hint="past this many names a claim on MongoDB sorts in memory (a blocking SORT "
            "over every due job): split the names between workers with tags",
        )
    return processor
