"""What long work and workflows cost, counted on the wire (PyMongo's command monitoring on the
worker's client):

- progress and log lines: a handler reporting progress and logging 200 times a second for a
  few seconds; the writes they cost beyond the run's claim and final write, per second;
- a flow of 1 parent and N children (one `schedule_jobs` call): the commands the flow costs
  per child beyond each child's own claim and final write (the updates that count a child's
  end for its parent and release the parent);
- a per-tenant limit (`Limit(key="tenant:{tenant_id}")`) beside a static one: commands per
  job, the same jobs and concurrency.

To run:
    .venv/bin/python benchmarks/bench_flows.py                 # a throwaway nx-27017 server
    .venv/bin/python benchmarks/bench_flows.py --children 1000
    MONGODB_URL=mongodb://host:27017/?replicaSet=rs0 .venv/bin/python benchmarks/bench_flows.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from job_processor import AbortSignal, Job, JobDef, JobSpec, Limit, init_job_processor
from job_processor.storage.local_server import local_server

QUIET = logging.getLogger("bench.quiet")
QUIET.setLevel(logging.WARNING)


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.on = False
        self.seen: list[dict[str, Any]] = []
        self.times: list[float] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name not in ("endSessions", "ping", "hello", "isMaster"):
            self.seen.append({"name": event.command_name, "command": dict(event.command)})
            updates = event.command.get("updates") or []
            if event.command_name == "update" and any(
                "$push" in u["u"] and "status" not in u["u"].get("$set", {}) for u in updates
            ):
                self.times.append(time.monotonic())  # a write of notes alone

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def start(self) -> None:
        self.seen = []
        self.times = []
        self.on = True

    def updates(self, predicate: Any) -> int:
        """update commands on jobs with an update matching `predicate(filter, update)`."""
        n = 0
        for c in self.seen:
            if c["name"] == "update" and str(c["command"].get("update", "")).endswith("jobs"):
                n += sum(1 for u in c["command"]["updates"] if predicate(u["q"], u["u"]))
        return n


async def chatty(job: Job, signal: AbortSignal) -> int:
    seconds = job.payload["seconds"]
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        await job.report_progress(n, None, f"step {n}")
        job.log("step", n=n)
        await asyncio.sleep(0.005)
    return n


async def child(job: Job, signal: AbortSignal) -> int:
    return int(job.payload["i"])


async def parent(job: Job, signal: AbortSignal) -> int:
    return len(job.after)


async def limited(job: Job, signal: AbortSignal) -> None:
    await asyncio.sleep(0.01)


def jobs() -> dict[str, JobDef]:
    return {
        "chatty": JobDef(handler=chatty),
        "child": JobDef(handler=child),
        "parent": JobDef(handler=parent),
        "static": JobDef(handler=limited, limit=Limit(key="provider", concurrency=4)),
        "tenant": JobDef(handler=limited, limit=Limit(key="tenant:{t}", concurrency=4)),
    }


async def figures(url: str, children: int, seconds: float, limited_jobs: int) -> None:
    commands = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[commands]
    )
    db = client[f"bench_flows_{uuid.uuid4().hex[:8]}"]
    try:
        p = await init_job_processor(db, QUIET, jobs=jobs(), concurrency=8, poll_interval=0.2)
        async with p:
            # progress and log lines
            commands.start()
            run = await p.schedule_job("chatty", {"seconds": seconds})
            done = await p.wait_for(run.id, timeout=seconds + 30)
            commands.on = False
            notes = commands.updates(
                lambda q, u: (
                    "status" not in u.get("$set", {})
                    and ("$push" in u or "progress" in u.get("$set", {}))
                )
            )
            print(
                f"progress + log lines: {done.result} reports and lines in {seconds:g} s -> "
                f"{notes} writes of their own ({notes / seconds:.2f}/s), the rest with the "
                "final write"
            )
            # a flow of 1 parent and N children
            specs = [JobSpec("child", {"i": i}) for i in range(children)]
            commands.start()
            batch = await p.schedule_jobs([*specs, JobSpec("parent", after=specs)])
            finished = await p.wait_for(batch[-1].id, timeout=600)
            commands.on = False
            flow = commands.updates(lambda q, u: "after" in q)
            print(
                f"flow of 1 parent and {children} children: parent {finished.status.value}, "
                f"{flow} flow commands ({flow / children:.2f} per child beyond its claim and "
                "final write)"
            )
            # per-tenant beside static limits
            for name in ("static", "tenant"):
                items = [
                    (name, {"t": i % 4} if name == "tenant" else {}) for i in range(limited_jobs)
                ]
                scheduled = await p.schedule_jobs(items)
                commands.start()
                for job in scheduled:
                    await p.wait_for(job.id, timeout=600)
                commands.on = False
                worker = [
                    c
                    for c in commands.seen
                    if not (c["name"] == "find" and c["command"].get("limit") == 1)
                ]  # the benchmark's own wait_for reads left out
                print(
                    f"{name:>6} limit: {len(worker) / limited_jobs:.2f} commands per job "
                    f"({limited_jobs} jobs, 8 slots, 4 per key)"
                )
        await client.drop_database(db.name)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--limited-jobs", type=int, default=200)
    args = parser.parse_args()
    url = os.environ.get("MONGODB_URL")
    if url:
        asyncio.run(figures(url, args.children, args.seconds, args.limited_jobs))
    else:
        with local_server() as server:
            asyncio.run(figures(server.url, args.children, args.seconds, args.limited_jobs))


if __name__ == "__main__":
    main()
