"""The operator commands: `job-processor status` and `job-processor kill`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from job_processor import init_job_processor

from .e2e.app import JOBS
from .e2e.test_processes import url_with_db

ROOT = Path(__file__).resolve().parents[1]


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "job_processor", *args],
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_status_and_kill(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs=JOBS)
    job = await processor.schedule_job("anywhere", {})
    status = cli(url, "status", "tests.e2e.app:make")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["queue"]["pending"] == 1
    assert data["jobs"]["anywhere"] == {"pending": 1}
    killed = cli(url, "kill", "tests.e2e.app:make", job.id)
    assert killed.returncode == 0, killed.stderr
    assert f"{job.id} anywhere: killed" in killed.stdout
    assert (await processor.get_job(job.id)).status == "killed"


def test_clear_errors(mongo_url: str) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "job_processor", "run", "tests.e2e.app:make"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "MONGODB_URL"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    assert "set MONGODB_URL" in missing.stderr
    bad = cli(mongo_url, "status", "tests.e2e.app")
    assert bad.returncode != 0
    assert "must be MODULE:ATTR" in bad.stderr
    unknown = cli(mongo_url, "kill", "tests.e2e.app:make", "nope")
    assert unknown.returncode == 2
    assert "not a job id" in unknown.stderr
