"""Every read of job state goes to the primary, whatever MONGODB_URL's readPreference says
(docs/guide.md, "Durability"): a lost claim's read-back by run id, a dedup conflict's read of
the holder, the sweep's liveness reads and wait_for must not read a lagging secondary. Checked on
the collections of every store, through PyMongo's async client, motor and the sync JobClient."""

from __future__ import annotations

import uuid
from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient, MongoClient, ReadPreference

from job_processor.storage import Storage
from job_processor.sync import JobClient

#: A URL asking for a weaker write concern and reads from secondaries.
URL_OPTIONS = "w=1&readPreference=secondaryPreferred"

#: The stores Storage has today: the test fails if one is left out of the walk below.
STORES = {
    "jobs",
    "workers",
    "crons",
    "limits",
    "job_admin",
    "definitions",
    "paused",
    "audit",
    "events",
    "subscribers",
    "deliveries",
    "webhooks",
}


def with_options(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{URL_OPTIONS}"


def collections_of(storage: Storage) -> dict[str, Any]:
    """Every store's collection, by the store's attribute name."""
    found = {
        name: store.coll
        for name, store in vars(storage).items()
        if type(store).__name__.endswith("Store")
    }
    assert set(found) >= STORES, sorted(found)
    return found


def assert_primary(storage: Storage) -> None:
    for name, coll in collections_of(storage).items():
        assert coll.read_preference == ReadPreference.PRIMARY, (name, coll.read_preference)


async def test_state_reads_go_to_the_primary_whatever_the_url_says(mongo_url: str) -> None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(with_options(mongo_url), tz_aware=True)
    try:
        assert client.read_preference == ReadPreference.SECONDARY_PREFERRED  # the URL's
        assert_primary(await Storage.open(client["jp_test_readpref"], "t_"))
    finally:
        await client.close()


async def test_with_motor_state_reads_go_to_the_primary_too(mongo_url: str) -> None:
    client: Any = AsyncIOMotorClient(with_options(mongo_url), tz_aware=True)
    try:
        assert client.read_preference == ReadPreference.SECONDARY_PREFERRED
        assert_primary(await Storage.open(client["jp_test_readpref"], "t_"))
    finally:
        client.close()


def test_the_sync_clients_state_reads_go_to_the_primary_too(mongo_url: str) -> None:
    client: MongoClient[Any] = MongoClient(with_options(mongo_url), tz_aware=True)
    name = f"jp_test_{uuid.uuid4().hex[:12]}"  # the client creates its indexes: dropped after
    try:
        assert client.read_preference == ReadPreference.SECONDARY_PREFERRED
        jobs = JobClient(client[name], prefix="t_")
        assert_primary(jobs._processor("get_job").storage)
    finally:
        client.drop_database(name)
        client.close()
