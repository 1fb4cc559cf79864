"""Storage: the only code that talks to MongoDB, split by collection.

`Storage.open(db)` checks the database object, detects the server (see `compat`), and gives
`jobs`, `crons` and `workers` stores holding the domain verbs (`claim_next`, `end_run`, `beat`,
...). The same code serves PyMongo's AsyncMongoClient, motor and mongomock-motor.
"""

from __future__ import annotations

from typing import Any

from pymongo import WriteConcern

from ..errors import InvalidDatabaseError
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
from .crons import CronStore
from .definitions import DefinitionStore, PausedStore
from .events import DeliveryStore, EventStore, SubscriberStore
from .jobs import CLAIM_SORT, EndWrite, JobStore, object_id
from .limits import LimitStore
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

#: Writes that change a job's state must survive a replica-set failover.
MAJORITY = WriteConcern("majority")


def check_database(db: Any) -> None:
    """Refuse sync databases and clients with a message that says what to pass instead."""
    from pymongo.database import Database
    from pymongo.mongo_client import MongoClient

    if isinstance(db, Database):
        raise InvalidDatabaseError(
            "db is a synchronous pymongo Database; pass an async one: "
            "pymongo.AsyncMongoClient(url)['mydb'] (or motor's AsyncIOMotorClient(url)['mydb'])"
        )
    if isinstance(db, MongoClient) or type(db).__name__ in {
        "AsyncMongoClient",
        "AsyncIOMotorClient",
        "AsyncMongoMockClient",
    }:
        raise InvalidDatabaseError(
            "db is a client, not a database: pass client['mydb'] (or client.get_default_database())"
        )
    if type(db).__module__.startswith("mongomock.") or not hasattr(db, "get_collection"):
        raise InvalidDatabaseError(
            f"db must be an async MongoDB database (pymongo AsyncDatabase or motor "
            f"AsyncIOMotorDatabase), got {type(db).__name__}"
        )


class Storage:
    def __init__(
        self, db: Any, prefix: str = "job_processor_", profile: ServerProfile | None = None
    ) -> None:
        check_database(db)
        self.db = db
        self.prefix = prefix
        self.profile = profile or ServerProfile()
        self.jobs = JobStore(
            db.get_collection(f"{prefix}jobs", write_concern=MAJORITY), self.profile
        )
        self.workers = WorkerStore(db.get_collection(f"{prefix}workers"))
        self.crons = CronStore(db.get_collection(f"{prefix}crons", write_concern=MAJORITY))
        self.limits = LimitStore(db.get_collection(f"{prefix}limits", write_concern=MAJORITY))
        self.job_admin = JobAdminStore(self.jobs.coll, self.profile)
        self.definitions = DefinitionStore(db.get_collection(f"{prefix}definitions"))
        self.paused = PausedStore(db.get_collection(f"{prefix}paused", write_concern=MAJORITY))
        self.audit = AuditStore(db.get_collection(f"{prefix}audit", write_concern=MAJORITY))
        # events and webhooks (docs/events.md): deliveries are jobs, in the jobs collection
        self.events = EventStore(db.get_collection(f"{prefix}events", write_concern=MAJORITY))
        self.subscribers = SubscriberStore(db.get_collection(f"{prefix}subscribers"))
        self.deliveries = DeliveryStore(self.jobs.coll)
        self.webhooks = WebhookStore(db.get_collection(f"{prefix}webhooks"))

    @classmethod
    async def open(cls, db: Any, prefix: str = "job_processor_") -> Storage:
        check_database(db)
        return cls(db, prefix, await detect(db))

    async def ensure_indexes(self) -> None:
        """Idempotent: created from key specs, never looked up by name."""
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
                await store.coll.create_index(self.profile.index_keys(keys), **opts)
