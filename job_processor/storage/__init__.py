"""Storage: the only code that talks to MongoDB, split by collection.

`Storage.open(db)` checks the database object, detects the server (see `compat`), and gives
one store per collection holding its domain verbs (`jobs.claim_next`, `jobs.end_run`,
`workers.beat`, ...). The same code serves PyMongo's AsyncMongoClient, motor and
mongomock-motor. `connect` opens databases from a URL and checks that MongoDB answers;
`compat` names every workaround for the test servers, `driver_fixes` those for the drivers'
own bugs; `kinds` pages a listing through values of several BSON types (the audit log's
`_id`, the events' `emitted_at`) one type at a time; `local_server` starts the embedded server
(nx-27017) for the demo, development and the tests.

May import: `core` (documents are built there), the drivers. Nothing above.
"""

from __future__ import annotations

from typing import Any

from pymongo import ReadPreference, WriteConcern
from pymongo.errors import OperationFailure

from ..core.documents import CLAIM_SORT
from ..core.errors import JobProcessorError
from . import audit as audit_mod
from . import crons as crons_mod
from . import definitions as definitions_mod
from . import events as events_mod
from . import jobs as jobs_mod
from . import limits as limits_mod
from . import webhooks as webhooks_mod
from . import workers as workers_mod
from .admin import JobAdminStore, JobQuery
from .audit import AuditStore
from .compat import ServerProfile, decode, detect
from .connect import address, check_database
from .crons import CronStore
from .definitions import DefinitionStore, PausedStore
from .driver_fixes import fix_cancelled_waits
from .events import DeliveryStore, EventStore, SubscriberStore
from .jobs import EndWrite, JobStore, object_id
from .limits import LimitStore
from .sync_adapter import is_sync
from .transient import ProducerRetry
from .webhooks import WebhookStore
from .workers import WorkerStore

__all__ = [
    "CLAIM_SORT",
    "AuditStore",
    "CronStore",
    "DefinitionStore",
    "DeliveryStore",
    "EndWrite",
    "EventStore",
    "JobAdminStore",
    "JobQuery",
    "JobStore",
    "LimitStore",
    "PausedStore",
    "ServerProfile",
    "Storage",
    "SubscriberStore",
    "WebhookStore",
    "WorkerStore",
    "check_database",
    "decode",
    "object_id",
]

#: How long producer calls (schedule, kill, retry, emit) ride out an outage by default.
PRODUCER_RETRY_SECONDS = 10.0

#: Writes that change a job's state must survive a replica-set failover.
MAJORITY = WriteConcern("majority")

#: Reads of state (a lost claim read back by its run id, a dedup key's holder, the sweep's
#: liveness reads, wait_for) must see the writes acknowledged: never a lagging secondary,
#: whatever the URL's readPreference says.
PRIMARY = ReadPreference.PRIMARY


class Storage:
    def __init__(
        self, db: Any, prefix: str = "job_processor_", profile: ServerProfile | None = None
    ) -> None:
        check_database(db)
        fix_cancelled_waits()  # PyMongo on Python 3.11: see driver_fixes
        self.db = db
        self.prefix = prefix
        self.profile = profile or ServerProfile()
        # datetimes read back aware UTC wherever they are (a payload's, a result's), whatever
        # the client's tz_aware; the client's other codec options kept
        # plain dicts (a client's RawBSONDocument or SON would break every write-back), aware
        # datetimes in UTC (tzinfo None), the client's other options kept
        codec = db.codec_options.with_options(document_class=dict, tz_aware=True, tzinfo=None)

        def coll(name: str, majority: bool = True) -> Any:
            concern = MAJORITY if majority else None
            return db.get_collection(
                prefix + name, codec_options=codec, write_concern=concern, read_preference=PRIMARY
            )

        self.jobs = JobStore(coll("jobs"), self.profile)
        self.workers = WorkerStore(coll("workers", majority=False))
        self.crons = CronStore(coll("crons"))
        self.limits = LimitStore(coll("limits"))
        self.job_admin = JobAdminStore(self.jobs.coll, self.profile)
        self.definitions = DefinitionStore(coll("definitions", majority=False))
        self.paused = PausedStore(coll("paused"))
        self.audit = AuditStore(coll("audit"))
        # events and webhooks (docs/events.md): deliveries are jobs, in the jobs collection
        self.events = EventStore(coll("events"))
        self.subscribers = SubscriberStore(coll("subscribers", majority=False))
        self.deliveries = DeliveryStore(self.jobs.coll)
        self.webhooks = WebhookStore(coll("webhooks", majority=False))
        #: How producer calls ride out outages (init_job_processor sets the budget).
        self.producer = ProducerRetry(PRODUCER_RETRY_SECONDS, is_sync(db), lambda: address(db))

    @classmethod
    async def open(cls, db: Any, prefix: str = "job_processor_") -> Storage:
        check_database(db)
        return cls(db, prefix, await detect(db))

    async def ensure_indexes(self) -> None:
        """Idempotent: created from key specs, never looked up by name (on nx-27017 only the
        unique, TTL and claim ones: see `ServerProfile.wants_index`)."""
        for store, specs in (
            (self.jobs, jobs_mod.INDEXES),
            (self.workers, workers_mod.INDEXES),
            (self.crons, crons_mod.INDEXES),
            (self.limits, limits_mod.INDEXES),
            (self.definitions, definitions_mod.INDEXES),
            (self.paused, definitions_mod.PAUSED_INDEXES),
            (self.audit, audit_mod.INDEXES),
            (self.events, events_mod.EVENT_INDEXES),
            (self.subscribers, events_mod.SUBSCRIBER_INDEXES),
            (self.deliveries, events_mod.DELIVERY_INDEXES),
            (self.webhooks, webhooks_mod.INDEXES),
        ):
            for keys, opts in specs:
                if self.profile.wants_index(keys, opts):
                    await _create_index(store.coll, self.profile.index_keys(keys), opts)


#: MongoDB's codes for an index of the same name or keys with other options.
_INDEX_CONFLICTS = (85, 86)


async def _create_index(coll: Any, keys: Any, opts: dict[str, Any]) -> None:
    """`create_index`; an index on these keys made with other options (by an operator, or a
    TTL changed by hand) is said plainly, naming the collection, the index and the fix."""
    try:
        await coll.create_index(keys, **opts)
    except OperationFailure as exc:
        if exc.code not in _INDEX_CONFLICTS and "already exists with" not in str(exc):
            raise
        wanted = ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "no options"
        said = (exc.details or {}).get("errmsg") or str(exc)
        raise JobProcessorError(
            f"collection {coll.name!r}: an index on {dict(keys)} already exists with other "
            f"options than job-processor's ({wanted}): {said}; drop that index "
            f"(db.{coll.name}.dropIndex(<its name>)) and start again: job-processor creates it"
        ) from None
