"""What each job costs, beside a minimal queue, in one run: bytes on the wire, server CPU, worker
CPU, throughput; and what an idle worker sends.

The minimal queue (`minimal_queue` below, about 40 lines) is the physical floor of a MongoDB job
queue: the same atomic claim (`find_one_and_update`) and completion (`update_one`), with no
feature at all (no retries, hooks, limits, recovery, history). Both run N no-op jobs on the same
server, one after the other, each in its own collection, with one worker at the given
concurrency. Printed per job:

- wire bytes: each command's and each reply's BSON size plus the OP_MSG header (21 bytes),
  from PyMongo's command monitoring on the worker's client (what crosses the network);
- server CPU: the server process's user + system time (/proc), local servers only;
- worker CPU: this process's CPU time while the worker runs (the jobs are inserted before);
- throughput: jobs per second, wall clock.
Each is counted after a warm-up (the first tenth of the jobs ended), for both queues: the
worker's start (registration, the first sweep) is a cost per process, not per job.
Bytes and commands come from a run on a client with the command listener, the three others
from a run of the same round on a client without it (the listener encodes every command again
to count it: CPU a production worker does not spend).
Then the idle worker's commands per second at the default 2 s poll.

To run:
    .venv/bin/python benchmarks/bench_lean.py                  # a throwaway nx-27017 server
    .venv/bin/python benchmarks/bench_lean.py --jobs 300 --concurrency 8
nx-27017's figures are not MongoDB's (it scans whole collections); the ratios are what compares.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bson
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, monitoring

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.storage.connect import shown_url
from job_processor.storage.local_server import local_server

OP_MSG_HEADER = 21  # message header (16) + flag bits (4) + section kind (1)


class Wire(monitoring.CommandListener):
    """Commands and the bytes of each command and reply."""

    def __init__(self) -> None:
        self.commands = 0
        self.bytes = 0
        self.by_name: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands += 1
        self.by_name[event.command_name] = self.by_name.get(event.command_name, 0) + 1
        self.bytes += len(bson.encode(event.command)) + OP_MSG_HEADER

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.bytes += len(bson.encode(event.reply)) + OP_MSG_HEADER

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reset(self) -> None:
        self.commands, self.bytes, self.by_name = 0, 0, {}


# ---- the minimal queue: claim and complete, nothing else ---------------------------------------


async def minimal_queue(
    coll: Any,
    handler: Callable[[dict[str, Any]], Any],
    slots: int,
    on_done: Callable[[int], None] = lambda n: None,
) -> int:
    """Run every pending job with `slots` concurrent runners; returns how many ran.
    `on_done(n)`: after each completion, with the count so far (the benchmark's clock)."""
    done = 0

    async def runner() -> None:
        nonlocal done
        while True:
            job = await coll.find_one_and_update(
                {"status": "pending"},
                {"$set": {"status": "running"}},
                sort=[("_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if job is None:
                return
            result = await handler(job)
            await coll.update_one(
                {"_id": job["_id"]}, {"$set": {"status": "finished", "result": result}}
            )
            done += 1
            on_done(done)

    await asyncio.gather(*(runner() for _ in range(slots)))
    return done


async def minimal_handler(job: dict[str, Any]) -> None:
    return None


def minimal_job(i: int) -> dict[str, Any]:
    return {"name": "noop", "status": "pending", "payload": {"n": i}, "created_at": time.time()}


# ---- measurement ------------------------------------------------------------------------------


@dataclass
class Figures:
    jobs: int
    seconds: float
    worker_cpu: float
    server_cpu: float | None
    wire_bytes: int
    commands: int

    def per_job(self) -> dict[str, float]:
        n = self.jobs
        out = {
            "jobs/s": n / self.seconds,
            "worker CPU ms": self.worker_cpu / n * 1000,
            "bytes": self.wire_bytes / n,
            "commands": self.commands / n,
        }
        if self.server_cpu is not None:
            out["server CPU ms"] = self.server_cpu / n * 1000
        return out


def server_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


class Window:
    """What is counted: from the end of the warm-up (the first `warm` jobs ended: the worker's
    start is a cost per process, not per job) to the end of the run."""

    def __init__(self, wire: Wire, pid: int | None, jobs: int, warm: int) -> None:
        self.wire, self.pid, self.jobs, self.warm = wire, pid, jobs, warm
        self.s0: float | None = None
        self.c0 = self.t0 = 0.0
        self.opened = False

    def ended(self, n: int) -> None:
        if n == self.warm and not self.opened:
            self.opened = True
            self.wire.reset()
            self.s0, self.c0, self.t0 = (
                server_cpu(self.pid),
                time.process_time(),
                time.perf_counter(),
            )

    def close(self) -> Figures:
        assert self.opened, "the run ended before its warm-up"
        seconds, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        s1 = server_cpu(self.pid)
        busy = None if self.s0 is None or s1 is None else s1 - self.s0
        n = self.jobs - self.warm
        return Figures(n, seconds, cpu, busy, self.wire.bytes, self.wire.commands)


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


def warm_up(jobs: int) -> int:
    return max(1, jobs // 10)


async def floor_round(db: Any, wire: Wire, pid: int | None, jobs: int, slots: int) -> Figures:
    coll = db["minimal"]
    await coll.insert_many([minimal_job(i) for i in range(jobs)])
    window = Window(wire, pid, jobs, warm_up(jobs))
    await minimal_queue(coll, minimal_handler, slots, window.ended)
    return window.close()


async def ours_round(
    db: Any, wire: Wire, pid: int | None, jobs: int, slots: int, idle: float
) -> tuple[Figures, Any, float, dict[str, int]]:
    """One run of job-processor on fresh collections (the default names, in the round's own
    database), started on a queue as a user's worker is; counted after its warm-up, like the
    minimal queue. The idle figures only when `idle`."""
    quiet = logging.getLogger("bench_lean")
    quiet.setLevel(logging.WARNING)
    processor = await init_job_processor(
        db,
        quiet,
        jobs={"noop": JobDef(handler=noop)},
        concurrency=slots,
    )
    for i in range(jobs):
        await processor.schedule_job("noop", {"n": i})
    doc = await processor.storage.jobs.coll.find_one({})
    finished = asyncio.Event()
    count = 0
    window = Window(wire, pid, jobs, warm_up(jobs))

    def ended(claimed: Any, final: Any, duration_ms: Any) -> None:
        nonlocal count
        count += 1
        window.ended(count)
        if count >= jobs:
            finished.set()

    class Counting:
        run_ended = staticmethod(ended)

        def recovered(self, doc: Any, final: Any) -> None: ...

        def cron_slot(self, name: str, outcome: Any) -> None: ...

    processor.telemetry.add(Counting())

    await processor.start()
    await finished.wait()
    figures = window.close()
    idle_rate, idle_commands = 0.0, {}
    if idle:
        await asyncio.sleep(1.0)
        wire.reset()
        await asyncio.sleep(idle)
        idle_commands = dict(wire.by_name)
        idle_rate = wire.commands / idle
    await processor.stop()
    return figures, doc, idle_rate, idle_commands


async def bench(
    url: str, pid: int | None, jobs: int, concurrency: int, idle: float, rounds: int
) -> None:
    """Each round runs both queues twice: once on a client with the command listener (bytes
    and commands) and once on a client without it (throughput and CPU: counting a command's
    bytes means encoding it again in the worker, which a production worker does not do; it
    costs about 0.1 ms a job for the minimal queue and 0.25 ms for ours, so it is kept out of
    the CPU figures)."""
    wire = Wire()
    counted: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[wire]
    )
    plain: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    silent = Wire()  # never attached: its counts stay 0
    floors: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    run = uuid.uuid4().hex[:6]
    names: list[str] = []
    try:
        for i in range(rounds):  # alternated, so that drifts of the machine hit both alike
            last = i == rounds - 1
            # both queues in one database: the same `$db` bytes
            name = f"jp_lean_{run}_{i}w"
            names.append(name)
            counts_floor = await floor_round(counted[name], wire, None, jobs, concurrency)
            counts_ours, doc, idle_rate, idle_commands = await ours_round(
                counted[name], wire, None, jobs, concurrency, idle if last else 0.0
            )
            name = f"jp_lean_{run}_{i}t"
            names.append(name)
            floor = await floor_round(plain[name], silent, pid, jobs, concurrency)
            timed, *_ = await ours_round(plain[name], silent, pid, jobs, concurrency, 0.0)
            floor.wire_bytes, floor.commands = counts_floor.wire_bytes, counts_floor.commands
            timed.wire_bytes, timed.commands = counts_ours.wire_bytes, counts_ours.commands
            floors.append(floor.per_job())
            ours.append(timed.per_job())
        stored = len(bson.encode(minimal_job(0) | {"_id": bson.ObjectId()}))
        ours_stored = len(bson.encode(doc or {}))
    finally:
        for name in names:
            await plain.drop_database(name)
        await counted.close()
        await plain.close()

    print(f"server: {shown_url(url)}  jobs: {jobs}  concurrency: {concurrency}  rounds: {rounds}")
    print("median per job over the rounds (ratio: the median of each round's ratio)")
    print(f"{'per job':<16}{'minimal queue':>15}{'job-processor':>15}{'ratio':>8}")
    for key in ("jobs/s", "bytes", "server CPU ms", "worker CPU ms", "commands"):
        if key in floors[0] and key in ours[0]:
            a = statistics.median(f[key] for f in floors)
            b = statistics.median(o[key] for o in ours)
            r = statistics.median(o[key] / f[key] for f, o in zip(floors, ours, strict=True))
            print(f"{key:<16}{a:>15.2f}{b:>15.2f}{r:>7.2f}x")
    print(f"{'stored doc (B)':<16}{stored:>15}{ours_stored:>15}{ours_stored / stored:>7.2f}x")
    if idle:
        print(
            f"idle worker: {idle_rate:.2f} commands/s over {idle:g} s  by name: "
            + ", ".join(f"{k}={v / idle:.2f}/s" for k, v in sorted(idle_commands.items()))
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="0: no idle figures")
    parser.add_argument("--rounds", type=int, default=5, help="alternated runs of each queue")
    args = parser.parse_args()
    url = os.environ.get("MONGODB_URL")
    if url:
        asyncio.run(bench(url, None, args.jobs, args.concurrency, args.idle_seconds, args.rounds))
        return
    with local_server() as server:
        asyncio.run(
            bench(
                server.url,
                server.process.pid,
                args.jobs,
                args.concurrency,
                args.idle_seconds,
                args.rounds,
            )
        )


if __name__ == "__main__":
    main()
