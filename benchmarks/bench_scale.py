"""Flow control and scale: commands per job at concurrency 1 and 8 (batch claims, grouped final
writes), what a cluster-wide limit costs and whether it holds, and what a count retention leaves
after a burst.

To run:
    .venv/bin/python benchmarks/bench_scale.py              # a throwaway nx-27017 server
    MONGODB_URL=mongodb://localhost:27017/?replicaSet=rs0 .venv/bin/python benchmarks/bench_scale.py

Commands are counted on the worker's own client with PyMongo's command monitoring (the
benchmark's own progress reads go through another client). nx-27017's timings are not MongoDB's;
its command counts are, since they come from this code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import bson
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Counter, server

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.core import documents as D
from job_processor.core.definitions import Limit
from job_processor.storage.connect import shown_url

QUIET = logging.getLogger("bench_scale")  # warnings only: the figures are the output
QUIET.setLevel(logging.WARNING)
SETTINGS: dict[str, Any] = {
    "poll_interval": 0.5,
    "heartbeat_interval": 5.0,
    "worker_timeout": 30.0,
    "logger": QUIET,
}
WORK = {"heartbeat", "startup"}


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


spans: list[tuple[float, float]] = []


async def provider(job: Job, signal: AbortSignal) -> None:
    t0 = time.monotonic()
    await asyncio.sleep(0.02)
    spans.append((t0, time.monotonic()))


def peak(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


async def fill(coll: Any, name: str, n: int, now: Any, **kw: Any) -> None:
    for i in range(0, n, 500):
        await coll.insert_many([D.new_job(name, {}, now=now, **kw) for _ in range(min(500, n - i))])


async def wait_done(reader: Any, name: str, n: int) -> None:
    coll = reader["job_processor_jobs"]
    while await coll.count_documents({"name": name, "status": "finished"}) < n:
        await asyncio.sleep(0.05)


async def commands_per_job(url: str, jobs: int, concurrency: int) -> None:
    counter = Counter()
    db_name = f"jp_scale_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[counter]
    )
    reader: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        worker = await init_job_processor(
            client[db_name],
            jobs={"noop": JobDef(handler=noop)},
            concurrency=concurrency,
            **SETTINGS,
        )
        await fill(worker.storage.jobs.coll, "noop", jobs, worker.clock.now())
        counter.take()
        t0 = time.perf_counter()
        async with worker:
            await wait_done(reader[db_name], "noop", jobs)
            elapsed = time.perf_counter() - t0
            counts = counter.take()
        work = {k: v for k, v in counts.items() if k not in {"createIndexes", "insert", "delete"}}
        total = sum(work.values())
        print(
            f"concurrency {concurrency:>2}: {total / jobs:.2f} commands per job "
            f"({', '.join(f'{k}={v / jobs:.2f}' for k, v in sorted(work.items()))}), "
            f"{jobs / elapsed:.0f} jobs/s"
        )
    finally:
        await reader.drop_database(db_name)
        await reader.close()
        await client.close()


async def limit_checks(url: str, jobs: int) -> None:
    counter = Counter()
    db_name = f"jp_scale_{uuid.uuid4().hex[:8]}"
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(url, tz_aware=True, event_listeners=[counter]) for _ in range(2)
    ]
    reader: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    limit = Limit(key="provider", concurrency=3)
    defs = {"call": JobDef(handler=provider, limit=limit)}
    try:
        workers = [
            await init_job_processor(c[db_name], jobs=defs, concurrency=8, **SETTINGS)
            for c in clients
        ]
        await fill(
            workers[0].storage.jobs.coll, "call", jobs, workers[0].clock.now(), limit_key="provider"
        )
        counter.take()
        spans.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(w.start() for w in workers))
        await wait_done(reader[db_name], "call", jobs)
        elapsed = time.perf_counter() - t0
        counts = counter.take()
        await asyncio.gather(*(w.stop() for w in workers))
        work = {k: v for k, v in counts.items() if k not in {"createIndexes", "insert", "delete"}}
        print(
            f"limit concurrency=3, 2 workers x 8 slots, {jobs} jobs of 20 ms: most running at "
            f"once {peak(spans)} (measured by the handlers), "
            f"{sum(work.values()) / jobs:.2f} commands per job "
            f"({', '.join(f'{k}={v / jobs:.2f}' for k, v in sorted(work.items()))}), "
            f"{jobs / elapsed:.0f} jobs/s (at most 3 / 0.02 s = 150 jobs/s)"
        )
    finally:
        await reader.drop_database(db_name)
        await reader.close()
        for c in clients:
            await c.close()


async def retention_effect(url: str, jobs: int) -> None:
    db_name = f"jp_scale_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    try:
        worker = await init_job_processor(
            client[db_name],
            jobs={"tick": JobDef(handler=noop, keep_finished=100)},
            concurrency=8,
            **SETTINGS,
        )
        await fill(worker.storage.jobs.coll, "tick", jobs, worker.clock.now())
        async with worker:
            await wait_done(client[db_name], "tick", jobs)
        coll = worker.storage.jobs.coll
        sample = await coll.find_one({"name": "tick"})
        size = len(bson.encode(sample)) if sample else 0
        before = await coll.count_documents({"name": "tick"})
        passes = 0
        later = worker.clock.now() + worker.settings.retention.floor  # past the floor
        while await worker.trimmer.run(later):
            passes += 1
        after = await coll.count_documents({"name": "tick"})
        print(
            f"retention keep_finished=100 after a burst of {jobs}: {before} -> {after} documents "
            f"in {passes} bounded passes (~{before * size / 1e6:.1f} MB -> "
            f"~{after * size / 1e6:.2f} MB of documents, {size} bytes each, before indexes)"
        )
    finally:
        await client.drop_database(db_name)
        await client.close()


async def run(url: str, jobs: int) -> None:
    print(f"server: {shown_url(url)}")
    for concurrency in (1, 8):
        await commands_per_job(url, jobs, concurrency)
    await limit_checks(url, max(30, jobs // 2))
    await retention_effect(url, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    args = parser.parse_args()
    with server(os.environ.get("MONGODB_URL")) as url:
        asyncio.run(run(url, args.jobs))


if __name__ == "__main__":
    main()
