"""How long the operator reads take on a big jobs collection: the overview, a jobs page (first,
next, filtered), the status, and a metrics scrape.

To run:
    .venv/bin/python benchmarks/ops_bench.py                 # 100,000 jobs on a throwaway nx-27017
    .venv/bin/python benchmarks/ops_bench.py --jobs 20000
    MONGODB_URL=mongodb://localhost:27017/?replicaSet=rs0 .venv/bin/python benchmarks/ops_bench.py

nx-27017 has no query planner: every query scans the collection, so its figures grow with the
collection. On MongoDB each read is an index range (asserted with explain() in
tests/storage/test_real_mongodb.py): a page reads ~50 index keys whatever the collection size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from pymongo import AsyncMongoClient

from job_processor.core import documents as D
from job_processor.ops import metrics
from job_processor.ops.admin import Admin
from job_processor.storage import Storage
from job_processor.storage.local_server import local_server

NAMES = [f"job-{i}" for i in range(20)]
MIX = [("finished", 80), ("errored", 5), ("killed", 2), ("skipped", 3), ("pending", 10)]


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with local_server() as s:
        yield s.url


def job(i: int, now: dt.datetime) -> dict[str, Any]:
    created = now - dt.timedelta(seconds=i * 3)
    status = random.choices([s for s, _ in MIX], [w for _, w in MIX])[0]
    doc = D.new_job(
        NAMES[i % len(NAMES)], {"i": i}, now=created, tag="main" if i % 7 == 0 else None
    )
    if status != "pending":
        doc.pop("claim_name")
        doc |= {"status": status, "ended_at": created + dt.timedelta(seconds=1), "attempt": 1}
    return doc


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, max(times) * 1000


async def main(url: str, n: int, runs: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    db = client[f"ops_bench_{uuid.uuid4().hex[:8]}"]
    try:
        storage = await Storage.open(db)
        await storage.ensure_indexes()
        now = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        for start in range(0, n, 5000):
            await storage.jobs.coll.insert_many(
                [job(i, now) for i in range(start, min(n, start + 5000))]
            )
        print(f"inserted {n} jobs in {time.perf_counter() - t0:.1f}s ({storage.profile.kind})")
        admin = await Admin.open(db)
        first = await admin.list_jobs(limit=50)
        m = await metrics.for_database(db, budget=60)
        cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("jobs page 1 (50, newest first)", lambda: admin.list_jobs(limit=50)),
            ("jobs page 2 (cursor)", lambda: admin.list_jobs(limit=50, cursor=first.next_cursor)),
            ("jobs page, status errored", lambda: admin.list_jobs(status="errored", limit=50)),
            ("jobs page, name + status", lambda: admin.list_jobs(name="job-3", status="finished")),
            ("job by id", lambda: admin.list_jobs(id=first.jobs[0].id)),
            ("overview (15 min)", lambda: admin.overview(minutes=15)),
            ("status", admin.status),
            ("metrics scrape", lambda: metrics.render(m)),
        ]
        print(f"| read ({n:,} jobs, {storage.profile.kind}) | median ms | max ms |")
        print("|---|---|---|")
        for label, fn in cases:
            median, worst = await timed(fn, runs)
            print(f"| {label} | {median:.0f} | {worst:.0f} |")
    finally:
        await client.drop_database(db.name)
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with server(os.environ.get("MONGODB_URL")) as url:
        asyncio.run(main(url, args.jobs, args.runs))
