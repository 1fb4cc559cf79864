"""JobProcessor, the public object (thin: it validates arguments and delegates), and
init_job_processor."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .core import documents as D
from .core import retention as R
from .core.clock import Clock, SystemClock
from .core.cron_text import cron_reading, cron_step_reading
from .core.definitions import (
    CronDef,
    JobDef,
    Subscriber,
    parse_crons,
    parse_jobs,
    parse_subscribers,
)
from .core.errors import (
    DatabaseUnreachableError,
    InvalidArgumentError,
    InvalidDefinitionError,
    InvalidPayloadError,
    UnknownJobError,
    field_errors,
    keywords_checked,
)
from .core.log import EventLog, make_log
from .core.models import Job, ProcessorStatus
from .core.producing import checked_payload
from .core.retention import Keep, floor_of
from .core.schedule import schedule_of
from .core.settings import (
    Settings,
    check_concurrency,
    check_flag,
    check_instance_id,
    check_keep_events,
    check_positive,
    check_prefix,
    check_retry_budget,
    check_worker_tags,
    retention_of,
)
from .core.status import JobStatus
from .engine import sentry
from .engine.jobs_api import JobsAPI
from .events.api import EventsAPI
from .events.bus import EventBus
from .events.queries import untargeted_warnings
from .events.webhooks import (
    Format,
    WebhookOptions,
    check_formats,
    load_secrets,
    webhook_warnings,
)
from .ops.status import build_status
from .storage import PRODUCER_RETRY_SECONDS, Storage
from .storage.connect import check_reachable
from .storage.jobs import MAX_SORTED_NAMES

S = JobStatus
Doc = dict[str, Any]


class JobProcessor(JobsAPI, EventsAPI):
    """Schedules, runs and supervises jobs; emits events and delivers them.

    The engine underneath (worker, hooks, recovery, heartbeat, crons: `engine.runtime.Runtime`),
    the producer's verbs on jobs (`engine.jobs_api.JobsAPI`) and the event methods
    (`events.api.EventsAPI`) are its bases; this class adds run_job and the crons' verbs.
    Create it with `await init_job_processor(...)`."""

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

    async def run_job(
        self, name: str, payload: Mapping[str, Any] | BaseModel | None = None
    ) -> Job[Any]:
        """Run a job now in this process (recorded in MongoDB like any other) and return the
        final Job. The process heartbeats meanwhile, so a crash here is recovered as usual.

        An explicit call: the first attempt runs here even when this processor's worker_tags
        leave the job's tag out or its name is paused (a pause stops workers claiming, not
        this call). A retry it leaves `pending` is claimed as any job is: by a worker whose
        tags include it, once the name is not paused."""
        definition = self._definition(name)
        body = checked_payload(name, definition.payload_model, payload)
        limit, limit_key = definition.limit, None
        if limit is not None:  # a per-value limit: its key, from the payload
            try:
                limit_key = limit.key_for(body)
            except ValueError as exc:
                raise InvalidPayloadError(f"job {name!r}: {exc}") from None
        await self._acquire_runtime()
        try:
            me = await self._registration()
            run_id = await self._slot(definition, limit_key, me)
            now = self.clock.now()
            doc = D.new_job(
                name,
                body,
                now=now,
                tag=definition.tag,
                exclusive=definition.concurrency == "exclusive",
                max_attempts=definition.attempts,
                resumable=definition.resumable,
                limit_key=limit_key,
            )
            try:
                doc = await self._insert(D.as_running(doc, me, now, run_id))
            except BaseException:
                if run_id is not None:
                    await self.worker.limiter.release(doc | {"run_id": run_id}, started=False)
                raise
            if doc["status"] == S.SKIPPED:
                if run_id is not None:  # never ran: its slot and its start go back
                    await self.worker.limiter.release(doc | {"run_id": run_id}, started=False)
                return Job.read(doc)
            if not self.worker.may_claim(me):
                # declared dead while it was written: never run under that id (its recovery
                # would run it again beside this run); put back, then claimed under the new one
                why = "written as its worker's lease was ending (or it was declared dead)"
                await self.recovery.reconcile(doc, started=False, why=why)  # its slot given back
                me = await self._registration()
                run_id = await self._slot(definition, limit_key, me)  # a slot again, then claim
                again = await self.storage.jobs.claim_next(
                    [name],
                    me,
                    self.clock.now(),
                    run_id=run_id,
                    limit_key=limit_key,
                    only=doc["_id"],
                )
                if again is None:  # another worker took it: it ends there
                    if run_id is not None:  # this run never started: nor did its start
                        await self.worker.limiter.release(doc | {"run_id": run_id}, started=False)
                    return await self.wait_for(str(doc["_id"]))
                doc = again
            final = await self._awaited(self.worker.spawn(doc), str(doc["_id"]))
            if final is None:  # lost to another process: report what the database says
                return await self.get_job(str(doc["_id"]))
            return Job.read(final)
        finally:
            await self._release_runtime()

    async def _slot(self, definition: JobDef, limit_key: str | None, me: str) -> str | None:
        """A slot of the job's limit for a run of it here (waited for: cluster-wide), as the
        run id that holds it; None for a job without a limit."""
        limit = definition.limit
        if limit is None or limit_key is None:
            return None
        return await self.worker.limiter.reserve(
            limit.for_key(limit_key),
            me,
            self.clock,
            self.settings.poll_interval,
            limit.key if limit.templated else None,
        )

    async def _awaited(self, run: asyncio.Task[Any], job_id: str) -> Any:
        """The run's end. A caller that stops waiting (cancelled: `asyncio.wait_for`, a request
        timeout) never drops the run half-way, whose handler would go on unowned while the job
        is run again beside it: in a started processor the run goes on as any job its worker
        runs; otherwise it ends as a graceful stop ends a run (signal "shutdown", the grace,
        then cancel) before this process stops heartbeating."""
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            if not self.started:
                self.worker.abort(job_id, "shutdown")
                while not run.done():  # bounded: the run ends within its shutdown grace
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(run)
            raise

    async def _registration(self) -> str:
        """This worker's id once its registration can be trusted (a worker that declared
        itself dead registers afresh at its next heartbeat: within about heartbeat_interval
        once MongoDB answers). DatabaseUnreachableError past worker_timeout."""
        waited = 0.0
        while not self.worker.may_claim(self.worker_id):
            if waited >= self.settings.worker_timeout:
                raise DatabaseUnreachableError(
                    f"this worker's registration has not been current for {waited:.0f}s (its "
                    "heartbeat is late, or it registers afresh): MongoDB may be unreachable"
                )
            # real time, polled: what ends the wait is the heartbeat's round trips
            await asyncio.sleep(0.05)
            waited += 0.05
        return self.worker_id

    async def trigger_cron(self, name: str) -> Job[Any]:
        """Run a cron once now, outside its schedule (recorded with trigger "manual")."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"name must be a cron name, got {name!r:.60}")
        if name not in self.crons:
            raise UnknownJobError.for_cron(name, sorted(self.crons))
        cron = self.crons[name]
        doc = D.manual_cron_task(
            name,
            now=self.clock.now(),
            tag=cron.tag,
            exclusive=cron.concurrency == "exclusive",
            max_attempts=cron.attempts,
            resumable=cron.resumable,
        )
        # a producer call: rides out a short outage, a lost reply's insert recognised
        job = Job.read(await self.storage.producer.run(lambda retried: self._insert(doc, retried)))
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
            # their pending tasks first: an outage between leaves the crons stored, so a
            # second call finishes (the other way round, their tasks stayed for ever)
            await self.storage.jobs.delete_pending_tasks_of(gone, self.clock.now())
            await self.storage.crons.remove(gone)
            for name in gone:
                self.log.info("cron_removed", job_name=name)
        return sorted(gone)

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
        fields = field_errors(exc.errors())
        raise InvalidDefinitionError(f"webhook_options: {fields}") from None


def warn_unexpanded_instance_id(instance_id: str | None, log: EventLog) -> None:
    if instance_id and "{{" in instance_id:
        log.warning(
            "instance_id_not_expanded",
            instance_id=instance_id,
            hint="plain `docker compose` does not expand {{.Task.Slot}} (only swarm does): every "
            "replica gets the same INSTANCE_ID and tags; see docs/operations.md",
        )


@keywords_checked
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
    loop_lag_warning: float = 1.0,
    keep_events: dt.timedelta | bool = dt.timedelta(days=30),
    subscribers: Mapping[str, list[Subscriber] | list[Mapping[str, Any]]] | None = None,
    webhook_secrets: Mapping[str, str] | None = None,
    webhook_formats: Mapping[str, Format] | None = None,
    webhook_options: WebhookOptions | Mapping[str, Any] | None = None,
    strict_events: bool = False,
    producer_retry_seconds: float = PRODUCER_RETRY_SECONDS,
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
    producer_retry_seconds: how long schedule_job(s), kill_job, retry_job, emit and the reads
    ride out a MongoDB outage before raising DatabaseUnreachableError (0: no retry).
    See docs/events.md.
    loop_lag_warning: seconds late the heartbeat's timer may wake before `event_loop_blocked`
    is logged (a handler blocking the event loop: see the guide's Handlers section).
    """
    job_defs = parse_jobs(jobs)
    cron_defs = parse_crons(crons)
    clash = set(job_defs) & set(cron_defs)
    if clash:
        raise InvalidDefinitionError(
            f"names used both as a job and a cron: {sorted(clash)}; give each a distinct name"
        )
    worker_tags = check_worker_tags(worker_tags)
    instance_id = check_instance_id(instance_id)
    if clock is not None and not (
        callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))
    ):
        raise InvalidDefinitionError(
            f"clock must have now() and sleep() (job_processor.SystemClock(), or FakeClock() "
            f"in tests), got {clock!r:.60}"
        )
    settings = Settings(
        concurrency=check_concurrency(concurrency),
        poll_interval=check_positive("poll_interval", poll_interval),
        heartbeat_interval=check_positive("heartbeat_interval", heartbeat_interval),
        worker_timeout=check_positive("worker_timeout", worker_timeout),
        shutdown_grace=check_positive("shutdown_grace", shutdown_grace),
        change_streams=check_flag("change_streams", change_streams),
        change_stream_max_await=check_positive("change_stream_max_await", change_stream_max_await),
        idle_poll_interval=max(
            check_positive("idle_poll_interval", idle_poll_interval), float(poll_interval)
        ),
        retention=retention_of(
            keep_finished,
            keep_failed,
            floor_of(
                check_positive("worker_timeout", worker_timeout),
                check_retry_budget(producer_retry_seconds),
            ),
        ),
        unknown_name_grace=check_positive("unknown_name_grace", unknown_name_grace),
        loop_lag_warning=check_positive("loop_lag_warning", loop_lag_warning),
    )
    if settings.worker_timeout < 2 * settings.heartbeat_interval:
        raise InvalidDefinitionError(
            f"worker_timeout ({worker_timeout}s) must be at least twice heartbeat_interval "
            f"({heartbeat_interval}s), or live workers would be declared dead"
        )
    check_prefix(collection_prefix)
    strict = check_flag("strict_events", strict_events)
    check_positive("connect_timeout", connect_timeout)
    retry_budget = check_retry_budget(producer_retry_seconds)
    subscriber_defs = parse_subscribers(subscribers)
    secrets = load_secrets(webhook_secrets)
    formats = check_formats(webhook_formats)
    hook_options = _webhook_options(webhook_options)
    kept_events = check_keep_events(keep_events)
    # reserved whether or not this process delivers webhooks (another one does)
    deliveries = EventBus.delivery_names(subscriber_defs, deliver=True)
    EventBus.check_names([*job_defs, *cron_defs], deliveries)  # all refused before any write
    Storage(db, collection_prefix)  # refuses a sync database or a client, before any I/O
    log = make_log(logger)
    await check_reachable(db, connect_timeout)
    storage = await Storage.open(db, collection_prefix)
    storage.producer.budget = retry_budget
    await EventBus.check_registered(storage, [*job_defs, *cron_defs], deliveries)
    await storage.ensure_indexes()
    clock = clock or SystemClock()
    now = clock.now()
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
        step = cron_step_reading(cron.cron_string)
        if step is not None:  # "*/90" minutes is minute 0 of every hour, not every 90 minutes
            log.warning(
                "cron_step_too_large",
                job_name=name,
                cron_string=cron.cron_string,
                reading=step,
                hint="a step counts within its field only: for a longer period, list the "
                "values in the next field (every 3 hours: '0 */3 * * *'), or use several crons",
            )
    instance = (instance_id if instance_id is not None else os.environ.get("INSTANCE_ID")) or None
    warn_unexpanded_instance_id(instance, log)
    bus = EventBus(
        storage,
        subscriber_defs,
        clock,
        log,
        secrets=secrets,
        formats=formats,
        options=hook_options,
        worker_timeout=settings.worker_timeout,
        instance_id=instance,
        keep_events=_at_least(kept_events, settings.retention.floor),
        strict_events=strict,
    )
    processor = JobProcessor(
        storage, job_defs, cron_defs, worker_tags, clock, log, settings, instance, bus
    )
    # the crons' schedules are written once nothing more can be refused
    registered = await storage.crons.register(
        cron_defs, {name: schedule_of(c).next_after(now) for name, c in cron_defs.items()}, now
    )
    for name, what in registered.items():
        if what != "kept":
            log.info(f"cron_{what}", job_name=name)
    await bus.register()
    log.info(
        "job_processor_initialized",
        database=getattr(db, "name", None),  # a typo in MONGODB_URL's database shows here
        jobs=sorted(job_defs),
        crons=sorted(cron_defs),
        worker_tags=worker_tags,
        eligible=processor.worker.names,
    )
    if (version := sentry.unsupported_version()) is not None:
        log.warning(
            "sentry_sdk_unsupported",
            version=version,
            hint="runs and cron check-ins are reported with sentry-sdk 2.x's and 3.x's APIs: "
            "pin sentry-sdk>=2,<4, or runs may not reach Sentry",
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


def _at_least(keep: dt.timedelta | None, floor: dt.timedelta) -> dt.timedelta | None:
    """An event is kept at least the retention floor (None: for ever): the sweep completing
    a fan-out left owed, and an emit retried after a lost reply, find it."""
    return None if keep is None else max(keep, floor)
