"""Motor's change streams opened lazily, at their first read, not when `watch()` returned (an
outside review's findings, failing before their fix).

`compat.open_stream` ("PyMongo's async API awaits `watch()`, motor returns cursors directly")
returns Motor's stream unopened: nothing is sent to the server until the first `try_next()`.
So (1) a change made between `open_stream` and the first read is missed (what `wait_for`
relies on: "before the first read: none missed"), and (2) a server that refuses change streams
(a standalone MongoDB: error 40573 at `watch()`) is not recognised: the refusal comes out of the
first read inside `_follow`, is taken for a broken stream, and the worker logs
`change_stream_reopened` (a warning) and forces a claim about once a second for ever, instead of
`change_stream_unavailable` once and polling (docs/guide.md "Waking up": "Where `watch()` is
refused (a standalone server, mongomock) it is switched off (`change_stream_unavailable`)").
Both pass with PyMongo's AsyncMongoClient and fail with Motor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pymongo
import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.synchronous.collection import Collection

from job_processor import AbortSignal, Job, JobDef
from job_processor.storage.compat import close_stream, open_stream
from job_processor.storage.local_server import free_port
from tests.helpers import make, wait_for


async def test_open_stream_sees_changes_made_after_it_returns(driver_db: Any) -> None:
    coll = driver_db["probe"]
    stream = await open_stream(coll, [], 500)
    try:
        await coll.insert_one({"x": 1})  # after the stream was opened, before its first read
        change = None
        for _ in range(20):  # nx-27017 delivers an insert within a few ms
            change = await stream.try_next()
            if change is not None:
                break
            await asyncio.sleep(0.05)
        assert change is not None and change["operationType"] == "insert", (
            f"{type(driver_db).__module__}: the insert made after open_stream() was missed"
        )
    finally:
        await close_stream(stream)


def _standalone(*args: Any, **kwargs: Any) -> Any:
    # what a standalone MongoDB answers to the $changeStream aggregate that watch() sends
    raise OperationFailure("The $changeStream stage is only supported on replica sets", 40573)


async def _standalone_async(*args: Any, **kwargs: Any) -> Any:
    _standalone()


async def noop(job: Job, signal: AbortSignal) -> None:
    pass


async def test_a_server_refusing_change_streams_switches_them_off(
    driver_db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(AsyncCollection, "watch", _standalone_async)  # PyMongo async
    monkeypatch.setattr(Collection, "watch", _standalone)  # what Motor's threads call
    logger = logging.getLogger("review.streams")
    # a stream that could wake the worker before its poll (max await < poll interval)
    processor = await make(
        driver_db,
        {"n": JobDef(handler=noop)},
        logger=logger,
        poll_interval=2.0,
        idle_poll_interval=2.0,
        change_stream_max_await=1.0,
    )

    def events() -> list[Any]:
        return [getattr(r, "event", None) for r in caplog.records]

    with caplog.at_level(logging.DEBUG, logger.name):
        async with processor:
            await wait_for(lambda: "change_stream_unavailable" in events(), timeout=10)
    assert events().count("change_stream_unavailable") == 1, events()
    assert "change_stream_reopened" not in events(), events()


async def test_motor_stream_open_is_bounded_by_pymongo_timeout() -> None:
    client: Any = AsyncIOMotorClient(
        f"mongodb://127.0.0.1:{free_port()}/x", serverSelectionTimeoutMS=4000
    )
    coll = client["x"]["jobs"]
    try:
        # control: Motor's own calls honour pymongo.timeout (its threads get the context)
        t0 = time.monotonic()
        with pytest.raises(PyMongoError), pymongo.timeout(0.3):
            await coll.find_one({})
        assert time.monotonic() - t0 < 2.0
        # the stream's open, as ProducerRetry runs it, must honour it too
        t0 = time.monotonic()
        with pytest.raises(PyMongoError), pymongo.timeout(0.3):
            await open_stream(coll, [], 1000)
        took = time.monotonic() - t0
        assert took < 2.0, f"open_stream took {took:.1f}s under pymongo.timeout(0.3)"
    finally:
        client.close()
