"""The examples run as documented."""

from __future__ import annotations

import time
from typing import Any

import pytest

from job_processor import JobStatus
from job_processor.cli import RunContext

from .e2e.test_processes import url_with_db


async def test_tagged_workers_example(db: Any, mongo_url: str) -> None:
    from examples import tagged_workers

    assert tagged_workers.tags_for("runner-1") == ["main"]
    assert tagged_workers.tags_for("runner-2") == ["secondary"]
    ctx = RunContext(mongodb_url=mongo_url, db=db, instance_id="runner-1", worker_tags=None)
    processor = await tagged_workers.make(ctx)
    assert "rebuild-search-index" in processor.worker.names
    done = await processor.run_job("rebuild-search-index", {"batches": 3})
    assert done.status == JobStatus.FINISHED
    assert done.result == {"batches": 3}
    other = await tagged_workers.make(
        RunContext(mongodb_url=mongo_url, db=db, instance_id="runner-2", worker_tags=None)
    )
    assert "rebuild-search-index" not in other.worker.names


def test_web_service_example(mongo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from examples import web_service

    monkeypatch.setenv("MONGODB_URL", url_with_db(mongo_url, f"jp_example_{time.time_ns()}"))
    with TestClient(web_service.app) as client:
        resp = client.post("/emails", params={"to": "ada@example.com"})
        assert resp.status_code == 202
        job_id = resp.json()["job_id"]
        for _ in range(100):
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] == "finished":
                break
            time.sleep(0.05)
        assert job["status"] == "finished"
        assert job["output"]["result"] == {"sent_to": "ada@example.com"}
