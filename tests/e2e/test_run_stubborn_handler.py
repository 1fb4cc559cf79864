"""`job-processor run` on SIGTERM, with an async handler that swallows its cancellation: the
guide says such a handler "is given one more second, then left to finish on its own"
(`handler_ignored_cancel`) and that `run` exits 0 after a graceful stop. The process must exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from job_processor import JobStatus, init_job_processor
from tests.conftest import url_with_db
from tests.e2e.stubborn_app import JOBS
from tests.e2e.test_processes import ROOT, Worker, kill_all, wait_exit, wait_workers
from tests.helpers import wait_status

pytestmark = pytest.mark.e2e


async def test_sigterm_exits_although_a_handler_swallows_its_cancellation(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    env = os.environ | {"MONGODB_URL": url_with_db(mongo_url, db.name), "PYTHONUNBUFFERED": "1"}
    env.pop("JOB_PROCESSOR_WORKER_TAGS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "job_processor", "run", "tests.e2e.stubborn_app:make"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(proc, log)
    try:
        client = await init_job_processor(db, jobs=JOBS, worker_timeout=2.0, heartbeat_interval=0.5)
        await wait_workers(client, 1)
        job = await client.schedule_job("stubborn")
        await wait_status(client, job.id, JobStatus.RUNNING, timeout=20)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        # grace 1 s + 1 s for the cancellation: generous bound
        code = await wait_exit(worker, timeout=10)
        assert code == 0, worker.output()[-3000:]
        assert "handler_ignored_cancel" in worker.output()
        assert time.monotonic() - t0 < 10
    finally:
        kill_all([worker])
