"""`job-processor run` with user code that swallows its cancellation exits in the other ways the
operations guide names too: 130 after a second SIGTERM (forced stop), non-zero when one of its
loops crashed, and 0 after a graceful stop whose exit hook outlived its timeout (a second
review's findings, each failing before its fix)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from job_processor import JobDef, JobProcessor, JobStatus, init_job_processor
from job_processor.cli import RunContext
from tests.conftest import url_with_db
from tests.e2e.stubborn_app import JOBS, stubborn_hook
from tests.e2e.test_processes import ROOT, Worker, kill_all, wait_exit, wait_workers
from tests.helpers import wait_status

pytestmark = pytest.mark.e2e


SETTINGS: dict[str, Any] = {
    "poll_interval": 0.2,
    "heartbeat_interval": 0.5,
    "worker_timeout": 2.0,
    "shutdown_grace": 3.0,
}


async def make(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(ctx.db, jobs=JOBS, **SETTINGS)


HOOKED = {
    "hooked": JobDef(
        handler=lambda j, s: None, on_job_exited=stubborn_hook, on_job_exited_timeout=0.5
    )
}


async def make_hooked(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(ctx.db, jobs=HOOKED, **SETTINGS)


async def make_crashing(ctx: RunContext) -> JobProcessor:
    """A processor whose cron scheduler loop crashes once the stubborn job runs."""
    p = await init_job_processor(ctx.db, jobs=JOBS, **SETTINGS)

    async def crashing_loop() -> None:
        while not p.worker.runs:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        raise RuntimeError("scheduler bug")

    p.scheduler.loop = crashing_loop  # type: ignore[method-assign]
    return p


def _spawn(target: str, mongo_url: str, db: Any, tmp_path: Path) -> Worker:
    log = tmp_path / "worker.log"
    env = os.environ | {"MONGODB_URL": url_with_db(mongo_url, db.name), "PYTHONUNBUFFERED": "1"}
    env.pop("JOB_PROCESSOR_WORKER_TAGS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "job_processor", "run", target],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Worker(proc, log)


async def running_on_the_worker(
    db: Any, jobs: dict[str, JobDef], name: str, payload: dict[str, Any] | None = None
) -> tuple[JobProcessor, Any]:
    """A client of the spawned worker's database: once the worker is live, a job of `name`
    scheduled and seen running there."""
    client = await init_job_processor(db, jobs=jobs, worker_timeout=2.0, heartbeat_interval=0.5)
    await wait_workers(client, 1)
    job = await client.schedule_job(name, payload or {})
    await wait_status(client, job.id, JobStatus.RUNNING, timeout=20)
    return client, job


async def test_second_sigterm_exits_130_although_a_handler_swallows_cancel(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    worker = _spawn(f"{__name__}:make", mongo_url, db, tmp_path)
    try:
        await running_on_the_worker(db, JOBS, "stubborn")
        worker.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # inside the 3 s shutdown grace: not cancelled yet
        worker.proc.send_signal(signal.SIGTERM)  # the operator forces it
        code = await wait_exit(worker, timeout=12)
        assert code == 130, worker.output()[-3000:]
    finally:
        kill_all([worker])


async def test_a_crashed_loop_exits_although_a_handler_swallows_cancel(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    worker = _spawn(f"{__name__}:make_crashing", mongo_url, db, tmp_path)
    try:
        await running_on_the_worker(db, JOBS, "stubborn")
        # crash after 0.3 s, grace 3 s, then 1 s for the cancellation: 15 s is generous
        code = await wait_exit(worker, timeout=15)
        assert code != 0, worker.output()[-3000:]
        assert "processor_loop_crashed" in worker.output()
    finally:
        kill_all([worker])


async def test_sigterm_exits_although_an_exit_hook_swallows_its_cancellation(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    """guide: an async on_job_exited past its timeout "is cancelled and given one more second,
    as a handler is, then left to finish on its own". As for a handler (79cff51), such a hook
    must not keep `job-processor run` from exiting after a graceful stop."""
    worker = _spawn(f"{__name__}:make_hooked", mongo_url, db, tmp_path)
    try:
        client = await init_job_processor(
            db, jobs=HOOKED, worker_timeout=2.0, heartbeat_interval=0.5
        )
        await wait_workers(client, 1)
        job = await client.schedule_job("hooked")
        await wait_status(client, job.id, JobStatus.FINISHED, timeout=20)
        for _ in range(100):  # the hook times out (0.5 s + 1 s), recorded failed
            if (await client.get_job(job.id)).exit_hook == "failed":
                break
            await asyncio.sleep(0.1)
        assert (await client.get_job(job.id)).exit_hook == "failed"
        worker.proc.send_signal(signal.SIGTERM)
        code = await wait_exit(worker, timeout=10)
        assert code == 0, worker.output()[-3000:]
    finally:
        kill_all([worker])


def _blocking_call(release: str) -> None:
    """A blocking call (a synchronous HTTP client, a driver) that outlives the grace period."""
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)


async def offloaded(job: Any, signal: Any) -> None:
    # what the guide says to do with blocking code in an `async def` ("Never block inside
    # async def": `await asyncio.to_thread(fn, ...)`); the handler swallows nothing
    await asyncio.to_thread(_blocking_call, job.payload["release"])


OFFLOADED = {"offloaded": JobDef(handler=offloaded)}


async def make_offloaded(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(ctx.db, jobs=OFFLOADED, **SETTINGS)


async def test_sigterm_exits_although_an_async_handler_awaits_asyncio_to_thread(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    """An async handler cancelled at its `await asyncio.to_thread(...)` leaves that thread in
    the loop's default executor, which asyncio.run() (and the interpreter's exit) would join:
    the process stayed up until the thread returned (in Docker: SIGKILL, exit 137). It exits
    0 once the stop is over, saying a thread was left running."""
    release = tmp_path / "release"
    worker = _spawn(f"{__name__}:make_offloaded", mongo_url, db, tmp_path)
    try:
        client, job = await running_on_the_worker(
            db, OFFLOADED, "offloaded", {"release": str(release)}
        )
        worker.proc.send_signal(signal.SIGTERM)
        # grace 3 s, then the handler is cancelled and `pending` written: 15 s is generous
        await wait_status(client, job.id, JobStatus.PENDING, timeout=15)
        code = await wait_exit(worker, timeout=15)
        assert code == 0, worker.output()[-3000:]
        assert "threads_left_running=1" in worker.output(), worker.output()[-3000:]
    finally:
        release.touch()  # the thread returns: the process can end
        kill_all([worker])
