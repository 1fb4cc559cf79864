"""Throughput, MongoDB commands per job, idle cost, pickup latency and CPU per job.

To run:
    .venv/bin/python benchmarks/bench.py             # a throwaway nx-27017 server
    MONGODB_URL=mongodb://localhost:27017/?replicaSet=rs0 .venv/bin/python benchmarks/bench.py

Commands are counted with PyMongo's command monitoring on the worker's own client. Pickup
latency is measured from jobs scheduled by ANOTHER process (a subprocess producer), so neither
the in-process wake-up nor a shared event helps: only the change stream or polling. nx-27017's
figures are not MongoDB's (it scans whole collections and its change streams do not block).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.core import documents as D
from job_processor.storage.connect import shown_url
from job_processor.storage.local_server import local_server


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> collections.Counter[str]:
        out, self.counts = self.counts, collections.Counter()
        return out


async def finished(worker: Any) -> int:
    return int(await worker.storage.jobs.coll.count_documents({"status": "finished"}))


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


JOBS = {"noop": JobDef(handler=noop)}
SETTINGS: dict[str, Any] = {"poll_interval": 2.0, "heartbeat_interval": 5.0, "worker_timeout": 30.0}


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with local_server() as s:
        yield s.url


PRODUCER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pymongo import AsyncMongoClient
    from job_processor import JobDef, init_job_processor
    async def noop(job, signal): return None
    async def main():
        client = AsyncMongoClient(sys.argv[1], tz_aware=True)
        p = await init_job_processor(client[sys.argv[2]], logger=logging.getLogger("p"),
                                     jobs={"noop": JobDef(handler=noop)})
        for _ in range(int(sys.argv[3])):
            await p.schedule_job("noop")
            await asyncio.sleep(float(sys.argv[4]))
        await client.close()
    asyncio.run(main())
    """
)


async def run(url: str, jobs: int, concurrency: int, idle_seconds: float, pickups: int) -> None:
    import logging

    quiet = logging.getLogger("bench")
    quiet.setLevel(logging.WARNING)
    counter = Counter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[counter]
    )
    db_name = f"jp_bench_{uuid.uuid4().hex[:8]}"
    db = client[db_name]
    try:
        worker = await init_job_processor(
            db, logger=quiet, jobs=JOBS, concurrency=concurrency, **SETTINGS
        )
        for _ in range(jobs):
            await worker.storage.jobs.insert(D.new_job("noop", {}, now=worker.clock.now()))

        # 1. throughput and commands per job (steady state: a full queue)
        counter.take()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await worker.start()
        while await finished(worker) < jobs:
            await asyncio.sleep(0.05)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        counts = counter.take()
        progress = counts.pop("aggregate", 0) + counts.pop("count", 0)
        work = {k: v for k, v in counts.items() if k not in {"createIndexes"}}
        total = sum(work.values())
        print(f"server: {shown_url(url)}  jobs: {jobs}  concurrency: {concurrency}")
        print(f"throughput: {jobs / elapsed:.1f} jobs/s ({elapsed:.2f} s)")
        print(
            f"worker commands per job: {total / jobs:.2f}  by name: "
            + ", ".join(f"{k}={v / jobs:.2f}" for k, v in sorted(work.items()))
        )
        print(f"  (the benchmark's own progress queries, excluded: {progress})")
        print(
            f"worker CPU per job: {cpu / jobs * 1000:.2f} ms (process time, includes this harness)"
        )

        # 2. idle cost
        await asyncio.sleep(1)
        counter.take()
        await asyncio.sleep(idle_seconds)
        idle = counter.take()
        waker = worker.waker
        if waker.blocking:
            stream = "blocking"
        elif waker.blocking is False:
            stream = "not blocking (throttled)" if waker.active else "not blocking (closed)"
        else:
            stream = "unavailable"
        print(
            f"idle worker: {sum(idle.values()) / idle_seconds:.2f} commands/s  by name: "
            + ", ".join(f"{k}={v / idle_seconds:.2f}/s" for k, v in sorted(idle.items()))
            + f"  (change stream: {stream})"
        )

        # 3. pickup latency: jobs scheduled by another process, one every 0.3 s
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PRODUCER,
            url,
            db_name,
            str(pickups),
            "0.3",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await proc.wait()
        deadline = time.monotonic() + 30
        while await finished(worker) < jobs + pickups:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        recent = await worker.list_jobs("noop", status="finished", limit=pickups)
        lat = sorted(
            (j.run_started_at - j.created_at).total_seconds() * 1000
            for j in recent
            if j.run_started_at is not None
        )
        if lat:
            p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
            print(
                "pickup latency (job from another process, idle worker): "
                f"p50 {statistics.median(lat):.0f} ms  p95 {p95:.0f} ms  "
                f"max {lat[-1]:.0f} ms  (n={len(lat)})"
            )

        # 4. in-process wake-up latency
        lat = []
        for _ in range(pickups):
            job = await worker.schedule_job("noop")
            while (started := (await worker.get_job(job.id)).run_started_at) is None:
                await asyncio.sleep(0.005)
            lat.append((started - job.created_at).total_seconds() * 1000)
        lat.sort()
        print(
            "pickup latency (in-process wake-up): "
            f"p50 {statistics.median(lat):.0f} ms  max {lat[-1]:.0f} ms"
        )
        await worker.stop()
    finally:
        await client.drop_database(db_name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--pickups", type=int, default=20)
    args = parser.parse_args()
    with server(os.environ.get("MONGODB_URL")) as url:
        asyncio.run(run(url, args.jobs, args.concurrency, args.idle_seconds, args.pickups))


if __name__ == "__main__":
    main()
