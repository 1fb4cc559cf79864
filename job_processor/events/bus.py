"""The event bus on the job engine: emit, fan-out, sync waits, serial chains, fan-out recovery.

Every delivery is a job (claimed, retried with its backoff, killable, recovered after a crash,
listed like any other). This module decides which jobs exist and when:

- emit: reads who the event is for (the subscriber registry and the enabled webhook endpoints),
  stores the event with those targets and `fanout: "owed"` (one insert: the commit point), then
  creates the first deliveries in one `insert_many` (unique delivery keys: creating them twice
  is harmless) and records the fan-out as done. A process that dies in between leaves the
  fan-out owed; the periodic recovery sweep of any live worker completes it after
  `worker_timeout`. So no stored event lacks its deliveries, and no (event, target) gets two
  (replays apart, each recorded with its own replay id).
- sync subscribers: emit then waits (polling their delivery jobs) until they end; raises
  EventDeliveryError if one failed for good, EventTimeoutError past `sync_timeout`.
- serial subscribers: only the first delivery is created by the fan-out; it carries the rest of
  the chain. Its `on_job_exited` hook (recorded as owed by the final write, run again by
  recovery if its process dies) creates the next one when it finished, or records the rest as
  skipped ("chain_stopped", with the reason) when it failed for good or was killed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId

from ..core import event_documents as E
from ..core.abort import AbortSignal
from ..core.clock import Clock, to_millis
from ..core.commands import command
from ..core.definitions import (
    HOOK_RETRIED_MARK,
    HOOK_WHEN_MARK,
    JobDef,
    Subscriber,
    check_event_name,
)
from ..core.errors import (
    DoNotRetry,
    InvalidArgumentError,
    InvalidDefinitionError,
    did_you_mean,
)
from ..core.lenient import texts
from ..core.log import EventLog
from ..core.models import Delivery, Event, Job, Processor
from ..core.settings import MAX_SETTING_SECONDS
from ..core.status import JobStatus
from ..core.values import is_utf8
from ..engine.execution import call_maybe_async
from ..engine.runtime import Runtime
from ..storage import Storage
from .queries import (
    check_payload,
    complete_fanout,
    complete_owed,
    current_targets,
    event_id_of,
    get_event,
)
from .sender import WebhookSender
from .sync_wait import SyncWait, first_line
from .webhooks import Format, Secret, WebhookOptions, Webhooks, standard_format

Doc = dict[str, Any]
S = JobStatus
#: Seconds a serial chain's hook may take; recovery takes over a dead owner's hook after
#: worker_timeout + this.
CHAIN_HOOK_TIMEOUT = 10.0
#: Owed fan-outs completed per read, and at most per sweep (a larger backlog: the next sweeps).
OWED_BATCH = 200
OWED_PER_SWEEP = 2000


class EventBus:
    def __init__(
        self,
        storage: Storage,
        subscribers: Mapping[str, list[Subscriber]],
        clock: Clock,
        log: EventLog,
        *,
        secrets: Mapping[str, Secret],
        formats: Mapping[str, Format] | None,
        options: WebhookOptions,
        worker_timeout: float,
        instance_id: str | None,
        keep_events: dt.timedelta | None = None,
        strict_events: bool = False,
    ) -> None:
        self.keep_events = keep_events
        self.strict_events = strict_events
        """Raise, instead of warning, on an event no subscriber or endpoint listens to."""
        self._known_events: tuple[float, set[str]] | None = None
        """How long events are kept (None: forever); their deliveries follow job retention."""
        self.storage = storage
        self.subscribers = dict(subscribers)
        self.clock = clock
        self.log = log
        self.options = options
        self.worker_timeout = worker_timeout
        self.sync_wait = SyncWait(storage, clock, worker_timeout)
        self.instance_id = instance_id
        self.formats: dict[str, Format] = {"standard": standard_format, **(formats or {})}
        self.sender = WebhookSender(storage, secrets, self.formats, options, clock, log)
        self.webhooks = Webhooks(storage, self.formats, secrets, clock, log)
        self.runtime: Runtime | None = None
        """The process emitting and delivering (its identity; its worker, woken for new work)."""
        self.processor: Processor | None = None
        """What `event.processor` returns in a subscriber's handler."""

    # ---- setup -----------------------------------------------------------------------------

    def definitions(self) -> dict[str, JobDef]:
        """The delivery jobs this process runs: one per declared subscriber, and the webhook
        delivery (unless `webhook_options.deliver` is False)."""
        defs: dict[str, JobDef] = {}
        for event, subs in self.subscribers.items():
            for sub in subs:
                defs[E.delivery_job_name(event, sub.name)] = JobDef(
                    handler=self._subscriber_handler(sub),
                    tag=sub.tag,
                    max_attempts=sub.max_attempts,
                    backoff=sub.backoff,
                    max_runtime_in_minutes=sub.max_runtime_in_minutes,
                    # serial: the chain's next step (or its stop) after every exit; the other
                    # modes too, for a delivery made under another process's registry (a
                    # rolling deploy that changed the mode) that carries a chain, and only for
                    # those (`HOOK_WHEN_MARK`)
                    on_job_exited=self._chain_hook(sub.mode != "serial"),
                    # two writes at most: a dead owner's hook is taken over sooner
                    on_job_exited_timeout=CHAIN_HOOK_TIMEOUT,
                )
        if self.options.deliver:

            async def deliver_webhook(job: Job[Any], signal: AbortSignal) -> Any:
                return await self._webhook_handler(job, signal)

            setattr(deliver_webhook, E.DELIVERY_MARK, True)
            defs[E.WEBHOOK_JOB] = JobDef(
                handler=deliver_webhook,
                max_attempts=self.options.max_attempts,
                backoff=self.options.backoff,
            )
        return defs

    @staticmethod
    def delivery_names(subscribers: Mapping[str, Sequence[Subscriber]], deliver: bool) -> list[str]:
        """The names of the delivery jobs `definitions` makes (known before any I/O)."""
        names = [
            E.delivery_job_name(e, sub.name) for e, subs in subscribers.items() for sub in subs
        ]
        return [*names, E.WEBHOOK_JOB] if deliver else names

    @staticmethod
    async def check_registered(
        storage: Storage, jobs: Sequence[str], deliveries: Sequence[str]
    ) -> None:
        """Names another process took, either way round: a job named like a subscriber it
        declared, or a subscriber named like a job it runs (the job's workers would claim the
        deliveries, the subscriber's handler never called). Refused, naming who took it."""
        mine = set(jobs)
        declared = await storage.subscribers.all()
        for row in declared:
            if row.get("job_name") in mine:
                raise InvalidDefinitionError(
                    f"job or cron name {row['job_name']!r} is taken by the deliveries of a "
                    f"subscriber declared by {row.get('declared_by') or 'another process'} "
                    "(in the subscribers registry); rename the job, or, if that subscriber is "
                    "gone, remove it: prune_subscribers() in a process that declares the "
                    "subscribers that remain"
                )
        ours = set(deliveries) - {E.WEBHOOK_JOB}
        subscriber_jobs = {str(r.get("job_name")) for r in declared}
        for row in await storage.definitions.all():  # a row from before the mark: is_delivery
            if row["_id"] in ours and not E.is_delivery(row["_id"], row, subscriber_jobs):
                raise InvalidDefinitionError(
                    f"subscriber delivery name {row['_id']!r} ('<event>:<subscriber>') is a "
                    f"job that {row.get('registered_by') or 'another process'} runs (in the "
                    "names registry): its workers would claim the deliveries; rename the "
                    "subscriber, or, if that job is gone, "
                    f"`{command('names forget', str(row['_id']))}`"
                )

    @staticmethod
    def check_names(jobs: Sequence[str], deliveries: Sequence[str]) -> None:
        clash = sorted(set(jobs) & set(deliveries))
        if clash:
            raise InvalidDefinitionError(
                f"job or cron names {clash} are taken by event deliveries ('<event>:<subscriber>' "
                f"and {E.WEBHOOK_JOB!r}); rename the job"
            )

    def bind(self, runtime: Runtime, processor: Processor) -> None:
        runtime.recovery.recovered.append(self.sender.recovered)  # crash-ended: counted too
        self.runtime = runtime
        self.processor = processor

    def _who(self) -> str:
        return self.runtime.identity if self.runtime is not None else "unknown"

    async def register(self) -> None:
        """Upsert this process's subscribers in the registry (publishers elsewhere read it)."""
        now = self.clock.now()
        rows = [
            E.subscriber_row(
                event,
                sub.name,
                mode=sub.mode,
                position=i,
                tag=sub.tag,
                max_attempts=sub.max_attempts,
                now=now,
                declared_by=self._who(),
            )
            for event, subs in self.subscribers.items()
            for i, sub in enumerate(subs)
        ]
        await self.storage.subscribers.register(rows)

    async def prune_subscribers(self) -> list[str]:
        """Remove registry entries this process does not declare ("<event>:<subscriber>")."""
        mine = {f"{e}|{s.name}" for e, subs in self.subscribers.items() for s in subs}
        gone = [r for r in await self.storage.subscribers.all() if r["_id"] not in mine]
        await self.storage.subscribers.remove([r["_id"] for r in gone])
        names = sorted(r["job_name"] for r in gone)
        for name in names:
            self.log.info("subscriber_removed", job_name=name)
        return names

    async def close(self) -> None:
        await self.sender.close()

    def _wake(self, docs: Sequence[Doc]) -> None:
        if self.runtime is not None:
            self.runtime.wake_for(list(docs))

    # ---- emit ------------------------------------------------------------------------------

    async def emit(
        self,
        name: str,
        payload: Mapping[str, Any] | Any = None,
        *,
        key: str | None = None,
        sync_timeout: float = 30.0,
    ) -> Event:
        check_event_name(name)
        body = check_payload(name, payload)
        if key is not None and (not isinstance(key, str) or not key or not is_utf8(key)):
            raise InvalidArgumentError(  # a lone surrogate (a non-UTF-8 argv): bson refuses it
                f"event {name!r}: key must be a non-empty string of valid text, got {key!r}"
            )
        if (
            not isinstance(sync_timeout, int | float)
            or isinstance(sync_timeout, bool)
            or not 0 < sync_timeout <= MAX_SETTING_SECONDS  # NaN fails this too
        ):
            raise InvalidArgumentError(
                "sync_timeout must be a finite positive number of seconds, at most a year "
                f"({MAX_SETTING_SECONDS}), got {sync_timeout!r}"
            )
        now = self.clock.now()
        produce = self.storage.producer.run  # short outages are ridden out (never twice)
        targets = await produce(
            lambda _: current_targets(self.storage, name, self.options.max_attempts)
        )
        if not targets:
            await self._untargeted(name)
        doc = E.new_event(
            name,
            body,
            key=key,
            now=now,
            emitted_by=self._who(),
            instance_id=self.instance_id,
            targets=targets,
            expires_at=now + self.keep_events if self.keep_events is not None else None,
        )
        stored = await produce(
            lambda retried: self.storage.events.insert(doc, retried=retried, now=now)
        )
        fields = {"event_id": str(stored["_id"]), "event_name": name}
        created: list[Doc] = []
        made = stored.get("fanout") != "owed"  # whether every delivery was made by now
        if not made:  # idempotent: unique delivery keys
            created, made = await produce(lambda _: self._fan_out(stored, now))
            stored["fanout"] = "done" if made else "owed"
        self._wake(created)
        if stored["_id"] != doc["_id"]:
            self.log.info("event_deduplicated", key=key, **fields)
            event = await self.get_event(str(stored["_id"]))
        else:
            event = Event.model_validate(stored)
            event.deliveries = [Delivery.of_job(d) for d in created]
            self.log.info("event_emitted", deliveries=len(created), **fields)
        sync = [t.target for t in event.targets if t.mode == "sync"]
        if sync:
            await self.sync_wait.wait(event, sync, float(sync_timeout), made)
        return event

    async def _fan_out(self, stored: Doc, now: dt.datetime) -> tuple[list[Doc], bool]:
        """The emitter's own fan-out, only while it is still its to make: past
        `worker_timeout` after the event (a process frozen meanwhile: a pause, a VM
        migration), a sweep completes it, and retention may since have removed deliveries
        that an insert now would make a second time. Then the deliveries are read, not made
        (and False says that some may not be made yet)."""
        if (self.clock.now() - now).total_seconds() >= self.worker_timeout:
            self.log.warning(
                "event_fanout_left_to_sweep", event_id=str(stored["_id"]), event_name=stored["name"]
            )
            keys = [
                E.delivery_key(str(stored["_id"]), t["target"], None)
                for t in stored.get("targets") or []
            ]
            return await self.storage.deliveries.by_keys(keys), False
        return await complete_fanout(self.storage, stored, now), True

    async def _untargeted(self, name: str) -> None:
        """An event nobody listens to: often a misspelt name. Warn with the closest known event
        names (or raise, with `strict_events=True`, before anything is stored)."""
        # strict: refused or stored on a fresh read (a cached name may have lost its listener)
        known = await self.known_event_names(fresh=self.strict_events)
        # not a typo: its only listeners are disabled webhook endpoints (naming it, or "*")
        if name in known or E.ANY_EVENT in known:
            self.log.warning(
                "event_without_target",
                event_name=name,
                hint="every webhook endpoint listening to it is disabled; it is stored, and a "
                "replay delivers it once one is enabled again",
            )
            return
        hint = did_you_mean(name, known)
        if self.strict_events:
            listing = ", ".join(sorted(known)) or "none"  # (no "*": it would have listened)
            raise InvalidArgumentError(
                f"event {name!r}{hint}: no subscriber and no webhook endpoint listens to it "
                f"(strict_events=True); known events: {listing}"
            )
        self.log.warning(
            "event_without_target",
            event_name=name,
            hint=f"no subscriber and no webhook endpoint listens to it{hint}; it is stored, "
            "and a replay delivers it once one does",
        )

    async def known_event_names(self, fresh: bool = False) -> set[str]:
        """The event names subscribers and webhook endpoints listen to, "*" among them when an
        endpoint listens to every event (read at most once a minute per process, unless
        `fresh`)."""
        at = self.clock.now().timestamp()
        if fresh or self._known_events is None or at - self._known_events[0] > 60:
            names = {str(r["event"]) for r in await self.storage.subscribers.all()}
            for endpoint in await self.storage.webhooks.all():
                names |= set(texts(endpoint.get("events")))
                if not isinstance(endpoint.get("events"), list | str):  # one text: one name
                    self.log.warning(
                        "webhook_endpoint_misread",
                        endpoint_id=str(endpoint["_id"]),
                        fields=["events"],
                        hint="another program wrote it with a wrong type: read as none",
                    )
            self._known_events = (at, names)
        return self._known_events[1]

    # ---- reads and replays (the events module's functions, with this process's settings) ----

    async def get_event(self, event_id: str | ObjectId) -> Event:
        return await get_event(self.storage, event_id)

    async def replayed(self, deliveries: list[Delivery], **fields: Any) -> list[Delivery]:
        if deliveries:
            self.log.info("event_replayed", deliveries=len(deliveries), **fields)
            if self.runtime is not None and self.runtime.started:
                if any(d.kind == "webhook" for d in deliveries):
                    self.runtime.worker.expect(E.WEBHOOK_JOB)
                self.runtime.worker.wake.set()
        return deliveries

    # ---- delivery handlers -----------------------------------------------------------------

    async def _load(self, job: Job[Any]) -> Event:
        event_id = str(job.payload.get("event_id"))
        doc = await self.storage.events.get(event_id_of(event_id))
        if doc is None:
            raise DoNotRetry(f"event {event_id} no longer exists")
        event = Event.model_validate(doc)
        event.delivery = Delivery.of_job(
            {
                "_id": job.id,
                "event_id": event_id,
                "payload": job.payload,
                "status": job.status.value,
                "attempt": job.attempt,
                "failures": job.failures,
                "max_attempts": job.max_attempts,
                "created_at": job.created_at,
                "scheduled_for": job.scheduled_for,
            }
        )
        event._processor = self.processor
        job._carry(event.payload)  # the worker's log hides its secrets too
        return event

    def _subscriber_handler(self, sub: Subscriber) -> Any:
        async def deliver(job: Job[Any], signal: AbortSignal) -> Any:
            event = await self._load(job)

            def returned_late(function: str, seconds: float) -> None:  # a plain def, given up
                self.log.warning(
                    "subscriber_returned_late",
                    function=function,
                    seconds=round(seconds, 3),
                    subscriber=sub.name,
                    event_id=event.id,
                    job_id=job.id,
                    job_name=job.name,
                )

            return await call_maybe_async(sub.handler, event, signal, on_late_return=returned_late)

        deliver.__qualname__ = deliver.__name__ = f"deliver_to_{sub.name}"
        setattr(deliver, E.DELIVERY_MARK, True)
        return deliver

    async def _webhook_handler(self, job: Job[Any], signal: AbortSignal) -> Any:
        return await self.sender.deliver(job, signal, await self._load(job))

    # ---- serial chains ---------------------------------------------------------------------

    def _chain_hook(self, only_when_chained: bool = False) -> Any:
        """`_advance_chain` as an on_job_exited that is called again until it succeeds (an
        outage or a timeout never stops a chain for good: `HOOK_RETRIED_MARK`); with
        `only_when_chained`, owed only by deliveries that carry a chain."""

        async def advance_chain(job: Job[Any]) -> None:
            await self._advance_chain(job)

        setattr(advance_chain, HOOK_RETRIED_MARK, True)
        if only_when_chained:
            setattr(advance_chain, HOOK_WHEN_MARK, E.carries_chain)
        return advance_chain

    async def _advance_chain(self, job: Job[Any]) -> None:
        """on_job_exited of a serial delivery: the next one, or the rest recorded as skipped.
        Idempotent (unique delivery keys): recovery may call it again after a crash."""
        payload = job.payload
        chain: list[Doc] = list(payload.get("chain") or [])
        if not chain:
            return
        event = {"_id": payload["event_id"], "name": payload["event"]}
        replay_id = payload.get("replay_id")
        now = self.clock.now()
        fields = {"event_id": payload["event_id"], "event_name": payload["event"]}
        if job.status == S.FINISHED:
            nxt = E.next_in_chain(event, chain, now=now, replay_id=replay_id)
            stored = (await self.storage.deliveries.create([nxt]))[0]
            if stored.get("skip_reason") == "chain_stopped":
                # the chain had stopped here and resumes (the delivery before was retried)
                await self.storage.deliveries.delete_chain_stopped(nxt["delivery_key"])
                stored = (await self.storage.deliveries.create([nxt]))[0]
            self.log.info(
                "serial_chain_advanced",
                after=payload["target"],
                next=chain[0]["target"],
                job_id=str(stored["_id"]),
                **fields,
            )
            self._wake([stored])
            return
        # kept like a delivery that ran (deliveries follow the processor's retention)
        keep = self.runtime.settings.retention if self.runtime is not None else None
        expires_at = keep.expires_at(S.SKIPPED, now) if keep is not None else None
        reason = (
            f"not run: serial subscriber {payload['target']!r} before it ended {job.status.value}"
            + (f" ({first_line(job.error)})" if job.error else "")
        )
        docs = [
            E.chain_stopped(
                event, t, now=now, replay_id=replay_id, reason=reason, expires_at=expires_at
            )
            for t in chain
        ]
        await self.storage.deliveries.create(docs)
        self.log.warning(
            "serial_chain_stopped",
            at=payload["target"],
            status=job.status.value,
            skipped=[t["target"] for t in chain],
            **fields,
        )

    # ---- recovery --------------------------------------------------------------------------

    async def sweep(self, now: dt.datetime) -> int:
        """Complete the fan-outs still owed `worker_timeout` after their event was stored (its
        emitter died, or lost MongoDB, in between). Called by the periodic recovery sweep."""
        cutoff = to_millis(now - dt.timedelta(seconds=self.worker_timeout))
        done, damaged = 0, set[Any]()  # said once a sweep, left owed: skipped (come first)
        while done < OWED_PER_SWEEP:
            batch = await self.storage.events.owed(cutoff, OWED_BATCH, skip=len(damaged))
            fresh = [d for d in batch if d["_id"] not in damaged]
            for doc in fresh:
                created = await complete_owed(self.storage, doc, now, self.log, damaged)
                if created is None:
                    continue
                done += 1
                self.log.warning(
                    "event_fanout_recovered",
                    event_id=str(doc["_id"]),
                    event_name=doc["name"],
                    emitted_by=doc.get("emitted_by"),
                    deliveries=len(created),
                )
                self._wake(created)
            if len(batch) < OWED_BATCH or not fresh:
                break
        return done
