from __future__ import annotations

import asyncio
from typing import Any

import bson
from pymongo import monitoring

from job_processor import Job, JobProcessor, JobStatus, init_job_processor

FAST: dict[str, Any] = {
    "poll_interval": 0.2,
    "heartbeat_interval": 0.5,
    "worker_timeout": 2.0,
    "shutdown_grace": 1.0,
}


async def make(db: Any, jobs: dict[str, Any], **kw: Any) -> JobProcessor:
    return await init_job_processor(db, jobs=jobs, **(FAST | kw))


async def wait_status(
    processor: JobProcessor, job_id: str, *statuses: JobStatus, timeout: float = 15
) -> Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await processor.get_job(job_id)
        if job.status in statuses:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job.name} is {job.status}, expected {statuses}")
        await asyncio.sleep(0.05)


async def wait_for(predicate: Any, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class CommandNames(monitoring.CommandListener):
    """The names of the commands a client sends, in order (a test's count of round trips)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class ReplyBytes(monitoring.CommandListener):
    """The bytes of the replies to the commands a client sends to one collection (its finds
    and their getMores)."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.ids: set[int] = set()
        self.bytes = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = "collection" if event.command_name == "getMore" else event.command_name
        if event.command.get(key) == self.collection:
            self.ids.add(event.request_id)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id in self.ids:
            self.bytes += len(bson.encode(event.reply))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def final_write_updates(monkeypatch: Any, update_one: Any) -> None:
    """A run's final write (`JobStore._end_run`) sends its `update_one` through
    `update_one(coll, *args, **kwargs)` (to fail it, time it, ...); the rest of the
    collection as it is."""
    from job_processor.storage.jobs import JobStore

    original = JobStore._end_run

    async def end_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        coll = self.coll

        class Wrapped:
            def __getattr__(self, name: str) -> Any:
                return getattr(coll, name)

            async def update_one(self, *a: Any, **k: Any) -> Any:
                return await update_one(coll, *a, **k)

        self.coll = Wrapped()
        try:
            return await original(self, *args, **kwargs)
        finally:
            self.coll = coll

    monkeypatch.setattr(JobStore, "_end_run", end_run)


class Interposed:
    """A collection whose `method` runs `meanwhile()` once, before or after the real call: what
    another process may do at that moment, for a race test. Everything else is the
    collection's own (calls made by `meanwhile` itself included)."""

    def __init__(self, coll: Any, method: str, meanwhile: Any, *, after: bool = False) -> None:
        self._coll, self._method, self._meanwhile, self._after = coll, method, meanwhile, after
        self.done = False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._coll, name)
        if name != self._method or self.done:
            return real

        async def interposed(*args: Any, **kwargs: Any) -> Any:
            self.done = True
            if not self._after:
                await self._meanwhile()
            result = await real(*args, **kwargs)
            if self._after:
                await self._meanwhile()
            return result

        return interposed


def other_worker(now: Any, **odd: Any) -> dict[str, Any]:
    """A live worker document of another host, as job-processor writes it (serving "send"
    and the cron "nightly" of `every_kind`), with `odd` fields."""
    return {
        "_id": "other-1",
        "hostname": "other",
        "pid": 1,
        "instance_id": None,
        "tags": None,
        "concurrency": 1,
        "names": ["send", "nightly"],
        "started_at": now,
        "last_seen": now,
        "worker_timeout": 3600.0,
        "paused": [],
        "definitions": {},
        "crons": ["nightly"],
    } | odd


async def every_kind(db: Any, events: list[str] | None = None) -> tuple[JobProcessor, Any, Any]:
    """A processor with a document of every collection: a job "send", a cron "nightly" and a
    subscriber of "order_placed" (registered: started and stopped), one event emitted and one
    webhook endpoint (listening to `events`, every event by default). (processor, event,
    endpoint)."""
    from job_processor import CronDef, JobDef, Subscriber

    async def noop(*args: Any) -> None:
        return None

    processor = await init_job_processor(
        db,
        jobs={"send": JobDef(handler=noop)},
        crons={"nightly": CronDef(cron_string="0 3 * * *", handler=noop)},
        subscribers={"order_placed": [Subscriber("mail", handler=noop)]},
        **FAST,
    )
    async with processor:  # registers its definitions
        pass
    event = await processor.emit("order_placed", {"o": 1})
    endpoint = await processor.webhooks.add(
        url="https://crm.example.com/hooks", events=events or ["*"]
    )
    return processor, event, endpoint
