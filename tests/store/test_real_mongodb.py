"""What only a real MongoDB can show. These run when JOB_PROCESSOR_TEST_MONGODB_URL is set (and
are reported as skipped, with this reason, on the nx-27017 test server, which has no planner)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from job_processor.store import CLAIM_SORT, Store, epoch_ms

from ..conftest import REAL_SERVER

pytestmark = pytest.mark.skipif(
    not REAL_SERVER, reason="needs a real MongoDB: set JOB_PROCESSOR_TEST_MONGODB_URL"
)


async def test_the_claim_uses_the_claim_index(db: Any) -> None:
    store = Store(db)
    await store.ensure_indexes()
    now = dt.datetime.now(dt.UTC)
    for i in range(50):
        await store.insert_job(store.new_job(f"job-{i % 5}", {}, now=now))
    plan = await db.command(
        "explain",
        {
            "findAndModify": store.jobs.name,
            "query": {
                "status": {"$in": ["pending", "paused"]},
                "name": {"$in": ["job-1", "job-2"]},
                "due_ms": {"$lte": epoch_ms(now)},
            },
            "sort": dict(CLAIM_SORT),
            "update": {"$set": {"status": "running"}},
        },
        verbosity="queryPlanner",
    )
    text = str(plan["queryPlanner"]["winningPlan"])
    assert "IXSCAN" in text
    assert "status_1_name_1_priority_-1_due_ms_1" in text
