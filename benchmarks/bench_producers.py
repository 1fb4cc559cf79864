"""What producing costs: bulk enqueue beside single calls and a raw insert_many, the synchronous
client's commands per job, and what a caller waiting on a job sends.

Printed, all in one run on one server (ratios compare; nx-27017's absolute figures are not
MongoDB's: it spends about 0.3 ms per inserted document on its indexes):
- `schedule_jobs` of N jobs: commands per job, jobs/s; beside N `schedule_job` calls (a sample,
  timed per job) and a raw `insert_many` of the same documents (built beforehand: the floor);
- `JobClient.schedule_job`: commands per job, and with a dedup key already held;
- `wait_for` on a job that does not end, for 6 s: reads per second after the first.

To run:
    .venv/bin/python benchmarks/bench_producers.py              # a throwaway nx-27017 server
    .venv/bin/python benchmarks/bench_producers.py --jobs 10000
    MONGODB_URL=mongodb://host:27017/?replicaSet=rs0 .venv/bin/python benchmarks/bench_producers.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
import uuid
from typing import Any

from pymongo import AsyncMongoClient, MongoClient, monitoring

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.core import documents as D
from job_processor.storage.connect import shown_url
from job_processor.storage.jobs import INDEXES as JOB_INDEXES
from job_processor.storage.local_server import local_server
from job_processor.sync import JobClient


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0
        self.on = False
        self.times: list[float] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name not in ("endSessions", "ping", "hello", "isMaster"):
            self.count += 1
            self.times.append(time.monotonic())

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def measure(self) -> Counter:
        self.count = 0
        self.times = []
        self.on = True
        return self


async def never(job: Job, signal: AbortSignal) -> None:
    return None


JOBS = {"send": JobDef(handler=never)}
QUIET = logging.getLogger("bench.quiet")
QUIET.setLevel(logging.WARNING)


async def async_figures(url: str, n: int, singles: int) -> dict[str, float]:
    counter = Counter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[counter]
    )
    out: dict[str, float] = {}
    try:
        db = client[f"bench_prod_{uuid.uuid4().hex[:8]}"]
        p = await init_job_processor(db, QUIET, jobs=JOBS)
        items = [("send", {"to": f"user{i}@example.com", "n": i}) for i in range(n)]
        counter.measure()
        t0 = time.perf_counter()
        await p.schedule_jobs(items)
        out["batch_seconds"] = time.perf_counter() - t0
        counter.on = False
        out["batch_commands_per_job"] = counter.count / n

        counter.measure()
        t0 = time.perf_counter()
        for i in range(singles):
            await p.schedule_job("send", {"to": f"user{i}@example.com", "n": i})
        out["single_seconds_per_job"] = (time.perf_counter() - t0) / singles
        counter.on = False
        out["single_commands_per_job"] = counter.count / singles

        now = p.clock.now()
        docs = [D.new_job("send", {"to": f"u{i}@example.com", "n": i}, now=now) for i in range(n)]
        raw = db.get_collection("raw_floor", write_concern=p.storage.jobs.coll.write_concern)
        profile = p.storage.profile  # the same indexes as the jobs collection on this server
        for keys, opts in JOB_INDEXES:
            if profile.wants_index(keys, opts):
                await raw.create_index(profile.index_keys(keys), **opts)
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            await raw.insert_many(docs[start : start + 1000], ordered=False)
        out["raw_seconds"] = time.perf_counter() - t0
        await client.drop_database(db.name)
    finally:
        await client.close()
    return out


def sync_figures(url: str, wait_seconds: float) -> dict[str, float]:
    counter = Counter()
    mongo: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True, event_listeners=[counter])
    out: dict[str, float] = {}
    try:
        db = mongo[f"bench_sync_{uuid.uuid4().hex[:8]}"]
        client = JobClient(db, JOBS, logger=QUIET)
        client.list_jobs(limit=1)  # its first call checks the server and creates the indexes
        counter.measure()
        for i in range(200):
            client.schedule_job("send", {"n": i})
        counter.on = False
        out["sync_commands_per_job"] = counter.count / 200
        client.schedule_job("send", {"n": 0}, key="held")
        counter.measure()
        for _ in range(50):
            client.schedule_job("send", {"n": 0}, key="held")
        counter.on = False
        out["sync_commands_per_dedup"] = counter.count / 50
        waiting = client.schedule_job("send", delay=3600)
        counter.measure()
        with contextlib.suppress(TimeoutError):
            client.wait_for(waiting.id, timeout=wait_seconds)
        counter.on = False
        # after the first read and before the one at the deadline: the most in any 5 s window
        later = counter.times[1:-1]
        out["wait_reads_per_5s"] = max(
            sum(1 for t in later if start <= t < start + 5) for start in later
        )
        out["wait_reads_first_second"] = sum(1 for t in later if t < counter.times[0] + 1)
        mongo.drop_database(db.name)
    finally:
        mongo.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=1_000, help="schedule_job calls timed")
    parser.add_argument("--wait-seconds", type=float, default=12.0, help="wait_for measured")
    args = parser.parse_args()
    url = os.environ.get("MONGODB_URL")
    if url:
        run(url, args.jobs, args.singles, args.wait_seconds)
    else:
        with local_server() as server:
            run(server.url, args.jobs, args.singles, args.wait_seconds)


def run(url: str, n: int, singles: int, wait_seconds: float) -> None:
    a = asyncio.run(async_figures(url, n, singles))
    s = sync_figures(url, wait_seconds)
    batch_rate = n / a["batch_seconds"]
    single_rate = 1 / a["single_seconds_per_job"]
    raw_rate = n / a["raw_seconds"]
    print(f"server: {shown_url(url)}  jobs: {n}")
    batch_commands = a["batch_commands_per_job"]
    print(f"schedule_jobs     {batch_rate:9.0f} jobs/s  {batch_commands:.4f} commands/job")
    print(
        f"schedule_job      {single_rate:9.0f} jobs/s  {a['single_commands_per_job']:.2f} "
        f"commands/job  (batch: {batch_rate / single_rate:.1f}x the single calls)"
    )
    print(
        f"raw insert_many   {raw_rate:9.0f} jobs/s  (batch: {batch_rate / raw_rate:.2f}x the "
        "raw insert of the same documents)"
    )
    print(
        f"JobClient         {s['sync_commands_per_job']:.2f} commands/job, "
        f"{s['sync_commands_per_dedup']:.2f} when the dedup key is held"
    )
    print(
        f"wait_for polling  at most {s['wait_reads_per_5s']:.0f} reads in any 5 s after the "
        f"first ({s['wait_reads_first_second']:.0f} in its first second) and one at the "
        f"deadline, over {wait_seconds:g} s"
    )


if __name__ == "__main__":
    main()
