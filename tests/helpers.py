from __future__ import annotations

import asyncio
from typing import Any

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
