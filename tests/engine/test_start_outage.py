"""A processor whose MongoDB went away between init_job_processor and its start: start(),
serve() and `async with` raise DatabaseUnreachableError naming the server, as init does, with
the driver's error as its cause (they raised the driver's AutoReconnect or
ServerSelectionTimeoutError)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from job_processor import AbortSignal, DatabaseUnreachableError, Job, JobDef, JobProcessor
from job_processor.storage.local_server import local_server
from tests.helpers import make

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("JOB_PROCESSOR_TEST_MONGODB_URL")),
    reason="stops its own nx-27017 server; a real MongoDB is not stopped here",
)


async def _noop(job: Job, signal: AbortSignal) -> None:
    return None


async def _start(processor: JobProcessor, how: str) -> None:
    if how == "start":
        await processor.start()
    elif how == "serve":
        await processor.serve()
    else:
        async with processor:
            raise AssertionError("the block ran with MongoDB gone")


@pytest.mark.parametrize("how", ["start", "serve", "async with"])
async def test_a_start_with_mongodb_gone_raises_database_unreachable_naming_the_server(
    how: str,
) -> None:
    with local_server() as server:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            server.url, tz_aware=True, serverSelectionTimeoutMS=1500
        )
        try:
            processor = await make(client["start_outage"], {"noop": JobDef(handler=_noop)})
            server.stop()
            with pytest.raises(DatabaseUnreachableError) as raised:
                await _start(processor, how)
            assert f"cannot reach MongoDB at 127.0.0.1:{server.port}" in str(raised.value)
            assert "to start the worker" in str(raised.value)
            assert isinstance(raised.value.__cause__, PyMongoError)
            assert not processor.started
        finally:
            await client.close()
