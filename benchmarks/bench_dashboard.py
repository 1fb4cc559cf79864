"""How long the dashboard's overview, jobs pages and a metrics scrape take with many jobs.

To run:
    .venv/bin/python benchmarks/bench_dashboard.py               # 100,000 jobs, nx-27017
    .venv/bin/python benchmarks/bench_dashboard.py --jobs 10000
    MONGODB_URL=mongodb://localhost:27017/?replicaSet=rs0 \
        .venv/bin/python benchmarks/bench_dashboard.py

Job documents (every field written, as the store writes them) are inserted with insert_many in
batches: 10 names, statuses mixed as a busy queue looks (mostly finished, some errored,
killed, skipped, pending and paused, a few running), created over the last 7 days. The
indexes are the ones init_job_processor creates. Each page is requested through the ASGI app
in this process (no network), its MongoDB commands counted with PyMongo's command monitoring.
nx-27017 uses no index (it scans the collection for every query), so its times grow with the
collection; what MongoDB's indexes guarantee is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import re
import statistics
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx2 as httpx  # noqa: E402
from pymongo import AsyncMongoClient, monitoring  # noqa: E402

from job_processor.core import documents as D  # noqa: E402
from job_processor.dashboard import create_dashboard  # noqa: E402
from job_processor.storage import Storage  # noqa: E402
from job_processor.storage.local_server import local_server  # noqa: E402

NAMES = [f"job-{i}" for i in range(10)]
MIX = [  # status, share
    ("finished", 0.80),
    ("errored", 0.08),
    ("killed", 0.02),
    ("skipped", 0.02),
    ("pending", 0.07),
    ("paused", 0.008),
    ("running", 0.002),
]

GUARANTEES = {
    "overview": (
        "counts: one aggregate per status on the {status, name, created_at, _id} index (a "
        "covered scan of that status's keys, no documents read); due jobs per name: the claim "
        "index {claim_name, priority, due_ms}, only claimable jobs; jobs per minute: "
        "{status, ended_at} (covered, the last 30 minutes only); workers, registry, paused: "
        "small collections. Grows with the number of jobs per status, never reads job bodies"
    ),
    "jobs page": (
        "one find on {created_at, _id} (or {status|name|tag|key, created_at, _id}) sorted the "
        "way the index is: reads limit + 1 documents, whatever the collection size"
    ),
    "next page": (
        "the same index, bounded by the cursor's (created_at, _id): limit + 1 documents (plus "
        "the few created in the same instant), never a skip"
    ),
    "filtered page": (
        "{status, name, created_at, _id}: limit + 1 documents of that name and status"
    ),
    "metrics scrape": (
        "the overview's aggregates (covered index scans), within a time budget "
        "(job_processor_scrape_timeout=1 if it runs out)"
    ),
}


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.n = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.n += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def make_doc(rng: random.Random, now: dt.datetime, i: int) -> dict[str, Any]:
    name = NAMES[i % len(NAMES)]
    created = now - dt.timedelta(seconds=rng.uniform(0, 7 * 86400))
    created = created.replace(microsecond=created.microsecond // 1000 * 1000)
    doc = D.new_job(name, {"n": i, "to": f"user{i}@example.com"}, now=created, tag=None)
    status = rng.choices([s for s, _ in MIX], [w for _, w in MIX])[0]
    doc["status"] = status
    if status == "pending":
        return doc
    started = created + dt.timedelta(seconds=rng.uniform(0, 2))
    doc |= {"started_at": started, "run_started_at": started, "attempt": 1}
    doc.pop("claim_name", None)
    if status == "running":
        doc |= {"worker_id": "bench-worker", "run_id": uuid.uuid4().hex}
        return doc
    if status == "paused":
        doc["claim_name"] = name
        return doc
    ended = started + dt.timedelta(seconds=rng.uniform(0.01, 5))
    ended = ended.replace(microsecond=ended.microsecond // 1000 * 1000)
    error = "ValueError: boom\nTraceback ..." if status == "errored" else None
    doc |= {
        "ended_at": ended,
        "updated_at": ended,
        "output": {
            "result": {"ok": True} if status == "finished" else None,
            "error": error,
            "duration_ms": int((ended - started).total_seconds() * 1000),
        },
        "exit_hook": "none" if status != "skipped" else None,
        "skip_reason": "missed" if status == "skipped" else None,
        "failures": 1 if status == "errored" else 0,
    }
    return doc


async def fill(db: Any, n: int, batch: int) -> float:
    storage = await Storage.open(db)
    await storage.ensure_indexes()
    await storage.definitions.register({}, "bench", dt.datetime.now(dt.UTC))
    rng = random.Random(8)
    now = dt.datetime.now(dt.UTC)
    coll = db["job_processor_jobs"]
    start = time.perf_counter()
    for first in range(0, n, batch):
        await coll.insert_many([make_doc(rng, now, i) for i in range(first, min(n, first + batch))])
    return time.perf_counter() - start


async def measure(
    client: httpx.AsyncClient, counter: Counter, path: str, runs: int
) -> tuple[float, float, int, str]:
    times = []
    commands = 0
    text = ""
    for _ in range(runs):
        before = counter.n
        t0 = time.perf_counter()
        resp = await client.get(path)
        times.append(time.perf_counter() - t0)
        commands = counter.n - before
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:500])
        text = resp.text
    return statistics.median(times), max(times), commands, text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = os.environ.get("MONGODB_URL") or stack.enter_context(local_server()).url
        server = "MongoDB at MONGODB_URL" if os.environ.get("MONGODB_URL") else "nx-27017"
        counter = Counter()
        client: Any = AsyncMongoClient(url, tz_aware=True, event_listeners=[counter])
        db = client[f"jp_bench_dash_{uuid.uuid4().hex[:8]}"]
        try:
            seconds = await fill(db, args.jobs, args.batch)
            print(
                f"server: {server}; {args.jobs:,} job documents inserted in {seconds:.1f}s "
                f"(insert_many, batches of {args.batch:,})"
            )
            app = create_dashboard(db, auth=None, refresh_seconds=0)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                await c.get("/")  # open the admin (server detection) outside the figures
                first = await c.get("/jobs?limit=50")
                cursor = re.search(r"cursor=([A-Za-z0-9_-]+)", first.text)
                assert cursor, "no next page"
                pages = {
                    "overview": "/",
                    "jobs page": "/jobs?limit=50",
                    "next page": f"/jobs?limit=50&cursor={cursor.group(1)}",
                    "filtered page": "/jobs?limit=50&name=job-3&status=errored",
                    "metrics scrape": "/metrics",
                }
                print(f"{'':<16}{'median':>9}{'max':>9}{'commands':>10}")
                for label, path in pages.items():
                    med, worst, commands, text = await measure(c, counter, path, args.runs)
                    if label == "metrics scrape":
                        assert "job_processor_jobs{" in text
                    ms = f"{med * 1000:>7.0f}ms{worst * 1000:>7.0f}ms"
                    print(f"{label + ':':<16}{ms}{commands:>10}")
                print("what the indexes guarantee on MongoDB:")
                for label, text in GUARANTEES.items():
                    print(
                        textwrap.fill(
                            text, 96, initial_indent=f"  {label}: ", subsequent_indent="    "
                        )
                    )
        finally:
            await client.drop_database(db.name)
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
