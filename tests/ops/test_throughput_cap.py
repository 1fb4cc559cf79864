"""The overview's jobs-per-minute figures keep the newest minutes
once more than THROUGHPUT_CAP jobs ended in the window."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from job_processor.ops.admin import Admin
from job_processor.ops.admin.inputs import THROUGHPUT_CAP


def _ended(name: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "name": name,
        "type": "simple",
        "status": "finished",
        "payload": {},
        "priority": 0,
        "scheduled_for": at,
        "created_at": at,
        "updated_at": at,
        "ended_at": at,
        "attempt": 1,
        "max_attempts": 1,
    }


async def test_a_busy_half_hour_keeps_the_latest_minutes(db: Any) -> None:
    """20,000 jobs ended 20 minutes ago, then 300 in the last minute: the overview must show
    the last minute's 300 (the dashboard's "jobs / min, last 5 minutes" headline reads the
    newest rows). The cap keeps the oldest 20,000 end times instead, so the newest minutes,
    the busiest-now ones, read 0."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    old = now - dt.timedelta(minutes=20)
    docs = [_ended("bulk", old) for _ in range(THROUGHPUT_CAP)]
    docs += [_ended("bulk", now - dt.timedelta(seconds=5)) for _ in range(300)]
    jobs = db["job_processor_jobs"]
    for i in range(0, len(docs), 5000):
        await jobs.insert_many(docs[i : i + 5000])
    admin = await Admin.open(db)
    ov = await admin.overview(minutes=30)
    assert ov.throughput_capped  # said: lower bounds
    last5 = sum(r.finished for r in ov.throughput[-5:])
    assert last5 == 300, f"the last 5 minutes show {last5} finished jobs, 300 ended in them"
