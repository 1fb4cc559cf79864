"""Shared fixtures.

Tests that need a server use `mongo_url`: a real MongoDB when JOB_PROCESSOR_TEST_MONGODB_URL is
set, otherwise an nx-27017 server started here on a free port. If it cannot start, the session
fails loudly (never a silent skip). Every test gets a database of its own (`db`, `scratch_url`),
dropped after it, so that several sessions and xdist workers can share one real server.

`SERVER_KIND` is what that server is, asked once at collection ("nx-27017" when no URL is set):
"replica set", "sharded" (a mongos), "standalone" (a real MongoDB without change streams), or
"nx-27017" (the variable points at one). An unreachable URL fails the collection, loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import pytest
from pymongo import AsyncMongoClient, MongoClient

from job_processor.storage.local_server import local_server

ServerKind = Literal["nx-27017", "replica set", "sharded", "standalone"]


def server_kind(url: str) -> ServerKind:
    """What answers at `url`: nx-27017 (whatever it says of its topology) or a real MongoDB as a
    replica set member, a mongos or a standalone."""
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        hello = client.admin.command("hello")
        if str(client.admin.command("buildInfo").get("process", "")).startswith("nx"):
            return "nx-27017"
        if hello.get("msg") == "isdbgrid":
            return "sharded"
        return "replica set" if hello.get("setName") else "standalone"
    finally:
        client.close()


_URL = os.environ.get("JOB_PROCESSOR_TEST_MONGODB_URL")
SERVER_KIND: ServerKind = server_kind(_URL) if _URL else "nx-27017"
#: A real MongoDB (not nx-27017, even when the variable points at one).
REAL_SERVER = SERVER_KIND != "nx-27017"
#: Change streams and transactions: a replica set or a mongos, not a standalone.
HAS_STREAMS = SERVER_KIND in ("replica set", "sharded")


#: A developer's shell may export what a deployment sets (README, "Worker tags"): tests set
#: their own, and a worker process a test starts must not inherit these.
_DEPLOYMENT_VARIABLES = ("JOB_PROCESSOR_WORKER_TAGS", "INSTANCE_ID", "LOG_LEVEL")


@pytest.fixture(autouse=True)
def _no_deployment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _DEPLOYMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def needs_change_streams() -> None:
    """Skip, saying why, on a real standalone: it has no change streams (production runs on a
    replica set; point JOB_PROCESSOR_TEST_MONGODB_URL at one, e.g. ?replicaSet=rs0)."""
    if SERVER_KIND == "standalone":
        pytest.skip(
            "needs change streams: JOB_PROCESSOR_TEST_MONGODB_URL is a standalone MongoDB; "
            "point it at a replica set (a one-member one will do) to run this"
        )


def pytest_report_header() -> str:
    where = "JOB_PROCESSOR_TEST_MONGODB_URL" if _URL else "an nx-27017 started per xdist worker"
    return f"test server: {SERVER_KIND} ({where})"


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    url = os.environ.get("JOB_PROCESSOR_TEST_MONGODB_URL")
    if url:
        yield url
        return
    with local_server() as server:  # raises LocalServerError with the server log on failure
        yield server.url


def _db_name() -> str:
    return f"jp_test_{uuid.uuid4().hex[:12]}"


async def _open(driver: str, url: str) -> tuple[Any, Any]:
    name = _db_name()
    if driver == "pymongo":
        client: Any = AsyncMongoClient(url, tz_aware=True)
    elif driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(url, tz_aware=True)
    else:
        from mongomock_motor import AsyncMongoMockClient

        client = AsyncMongoMockClient(tz_aware=True)
    return client, client[name]


async def _close(driver: str, client: Any, db: Any) -> None:
    if driver == "mongomock":
        return
    await client.drop_database(db.name)
    if driver == "pymongo":
        await client.close()
    else:
        client.close()


def url_with_db(url: str, name: str) -> str:
    """`url` naming the database `name` (its options kept)."""
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def scratch_url(mongo_url: str) -> Iterator[str]:
    """A URL naming a fresh database, for a process of its own (a CLI, an example app);
    dropped after the test, as `db` is."""
    name = _db_name()
    yield url_with_db(mongo_url, name)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def sync_db(mongo_url: str) -> Iterator[Any]:
    """A fresh database through PyMongo's synchronous client (what a JobClient is given)."""
    client: MongoClient[Any] = MongoClient(mongo_url, tz_aware=True)
    database = client[_db_name()]
    yield database
    client.drop_database(database.name)
    client.close()


@pytest.fixture
async def db(mongo_url: str) -> AsyncIterator[Any]:
    """A fresh database on the test server, through PyMongo's AsyncMongoClient."""
    client, database = await _open("pymongo", mongo_url)
    yield database
    await _close("pymongo", client, database)


@pytest.fixture(params=["pymongo", "motor"])
async def driver_db(request: pytest.FixtureRequest, mongo_url: str) -> AsyncIterator[Any]:
    """The same test through PyMongo's async client and through motor."""
    client, database = await _open(request.param, mongo_url)
    yield database
    await _close(request.param, client, database)


@pytest.fixture(params=["pymongo", "motor", "mongomock"])
async def any_db(request: pytest.FixtureRequest, mongo_url: str) -> AsyncIterator[Any]:
    """Storage-layer tests: the test server through both drivers, and mongomock-motor (which is
    right where nx-27017 is silently wrong, see ../shared/notes/test-server.md)."""
    client, database = await _open(request.param, mongo_url)
    yield database
    await _close(request.param, client, database)


@pytest.fixture(autouse=True)
def no_dropped_log_lines(request: pytest.FixtureRequest) -> Iterator[None]:
    """EventLog drops a line it cannot write instead of stopping the caller; in the tests
    nothing should be dropped (a bad keyword in a log call of ours would be), except where a
    test means it (`drops_log_lines`)."""
    from job_processor.core.log import EventLog

    before = EventLog.dropped
    yield
    if request.node.get_closest_marker("drops_log_lines") is None:
        assert EventLog.dropped == before, "a log line could not be written (EventLog.dropped)"
