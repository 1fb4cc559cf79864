"""Shared fixtures.

Tests that need a server use `mongo_url`: a real MongoDB when JOB_PROCESSOR_TEST_MONGODB_URL is
set, otherwise an nx-27017 server started here on a free port. If it cannot start, the session
fails loudly (never a silent skip).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from job_processor.storage.local_server import local_server

REAL_SERVER = bool(os.environ.get("JOB_PROCESSOR_TEST_MONGODB_URL"))


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
