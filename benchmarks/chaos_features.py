"""Chaos beyond plain jobs: worker processes SIGKILLed or SIGTERMed every few seconds while flows,
per-tenant limits, crons, serial subscribers, dedup keys and kill requests run; then check
every guarantee the docs give for them.

To run:
    .venv/bin/python benchmarks/chaos_features.py                 # ~2-3 minutes, 3 workers
    .venv/bin/python benchmarks/chaos_features.py --seed 3 --workers 4 --concurrency 8 \\
        --every 2 --duration 240
    MONGODB_URL=mongodb://localhost:27017/?replicaSet=rs0 .venv/bin/python \\
        benchmarks/chaos_features.py

The app is benchmarks/chaos_features_app.py; the supervisor is chaos.py's. While the workers
are killed, this process schedules flows (parts, some failing for good, a parent with a random
`on_dependency_failure`, and a job after the parent), jobs under a per-tenant limit, jobs with
dedup keys, jobs it then kills (`kill_job` from this process: jobs waiting to be
killed, now and then a job of a flow, waiting, pending or running, or a serial delivery: this
process declares no subscriber, as a web app), jobs that emit events from a
worker, and emits events itself (some twice with the same key, some with a sync subscriber);
two crons run (every second, and an exclusive one every 2 s). Right after some kill requests
it kills the worker running the job; `--freeze-share` SIGSTOPs a worker past worker_timeout,
then SIGCONTs it. During the run it samples the limits and the active keyed jobs; at the end
(once the recovery has settled) it checks (chaos_features_checks.py):

- limits: no more than the limit's concurrency of a tenant's runs at once, measured by the
  handlers' own start/end records; no slot left held once the jobs ended;
- flows: a job runs only after all its dependencies ended, and only if they finished (or its
  policy is "run"); skip/error policies applied, and carried down the flow; each dependency's
  status as its dependents recorded it is the one it ended with; none left waiting once its
  dependencies all ended. Deep flows (`--deep-every`: chains of 5-7 jobs, each with dependents
  of its own, and fan-outs of 20-28 jobs under a part that usually fails) carry failures over
  several levels while workers die, and jobs are scheduled after flow jobs while they run (their
  final writes race with them) and after waiting ones (a failure may be carried through them
  then); the summary says how deep failures went and how long after the end, and the workers'
  late settlements (`dependents_settled_late`) with whether the process that ended the
  dependency died just after;
- crons: one task per slot, no slot without a task, an exclusive cron's runs never overlap,
  a slot skipped as missed never ran;
- events: one event per key, every target of every event gets exactly one delivery, which
  ran at least once; serial subscribers ran in order, each after the previous one finished;
  a failed one stopped the chain;
- dedup keys: never two active jobs with the same key (samples and handlers' runs);
- kills: a job whose kill was requested ends `killed` (`finished` if its handler returned
  before it saw the kill) and is never claimed again; its handler stops within ~3 s;
- sync subscribers: `emit` returns only once the delivery ended;
- all: no job ran twice at once, none left active, every exit's on_job_exited recorded and
  called.
Overlaps involving a run of a frozen worker are listed as allowed (the docs: its runs go on
until it notices). Exit status 1 when a check fails, with what was violated and the job ids.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import server
from chaos import Supervisor, url_with_db
from chaos_features_checks import ACTIVE, SERIAL, Findings, check_all

from job_processor import EventDeliveryError, EventTimeoutError, JobProcessorError, JobSpec
from job_processor.storage.connect import shown_url


@dataclass
class Options:
    seed: int = 1
    workers: int = 3
    concurrency: int = 4
    every: float = 3.0
    sigkill_share: float = 0.5
    duration: float = 90.0
    settle: float = 120.0
    tenants: int = 4
    tenant_limit: int = 2
    worker_timeout: float = 3.0
    freeze_share: float = 0.0
    deep_every: int = 4
    """A deep flow (a chain of 5-7 jobs, each with dependents, or a fan-out of 20-28 jobs under
    one part that usually fails) every this many ticks; 0: none."""


@dataclass
class Produced:
    """What this process did, for the checks."""

    kills: list[dict[str, Any]] = field(default_factory=list)
    """kill_job calls: job_id, the status and attempt it returned, when."""
    emits: dict[str, str] = field(default_factory=dict)
    """emit key -> the event id the first emit returned."""
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    sync_timeouts: int = 0
    deaths: dict[int, float] = field(default_factory=dict)
    """pid -> when the process had exited."""
    freezes: list[tuple[int, float, float]] = field(default_factory=list)
    """(pid, SIGSTOP time, SIGCONT time) of each frozen worker."""
    worker_pids: dict[str, int] = field(default_factory=dict)
    """worker id -> pid (the workers collection, sampled)."""
    late_on_running: list[tuple[str, str]] = field(default_factory=list)
    """(job id, dependency id) of jobs scheduled after a job read as running a moment before
    (its final write races with them)."""


async def close_runs(db: Any, pids: list[int], at: float) -> None:
    """Runs of processes that exited without recording their end: ended then."""
    await db["cf_runs"].update_many(
        {"pid": {"$in": pids}, "t1": {"$exists": False}},
        {"$set": {"t1": at, "outcome": "process exited"}},
    )


async def sample(db: Any, opts: Options, produced: Produced) -> None:
    """What must hold at every moment: no limit over its concurrency, no two active jobs with
    one key (each read is one batch, taken under the server's lock)."""
    produced.samples += 1
    async for worker in db["job_processor_workers"].find({}, {"pid": 1}):
        produced.worker_pids[str(worker["_id"])] = int(worker.get("pid") or 0)
    for doc in await db["job_processor_limits"].find({}).to_list(None):
        holders = doc.get("holders") or {}
        if doc.get("running", 0) > opts.tenant_limit or len(holders) > opts.tenant_limit:
            produced.violations.append(
                f"limit {doc['_id']}: running {doc.get('running')} with holders "
                f"{sorted(holders)} (limit {opts.tenant_limit})"
            )
    active = (
        await db["job_processor_jobs"]
        .find({"name": "keyed", "status": {"$in": ACTIVE}}, {"key": 1, "dedup_key": 1, "status": 1})
        .to_list(None)
    )
    by_key: dict[str, list[str]] = {}
    for doc in active:
        by_key.setdefault(doc.get("key"), []).append(str(doc["_id"]))
        if not doc.get("dedup_key"):
            produced.violations.append(
                f"dedup: job {doc['_id']} is {doc['status']} without its dedup_key"
            )
    for key, ids in by_key.items():
        if len(ids) > 1:
            produced.violations.append(f"dedup: key {key!r} held by active jobs {ids} at once")


#: A deep flow's policies: mostly those that carry a failure on.
POLICIES = ["skip", "skip", "error", "error", "run"]


def deep_chain(rng: random.Random, flow: int) -> list[JobSpec]:
    """1-3 slow parts (half the time the first fails for good), then a chain of 5-7 jobs,
    each after the previous one and each with 1-2 dependents of its own; now and then a job
    of the chain fails itself. A failure is carried down the chain level by level."""
    head = [
        JobSpec(
            "part",
            {"n": i, "slow": True, "fail": i == 0 and rng.random() < 0.5, "deep": flow, "level": 0},
        )
        for i in range(rng.randint(1, 3))
    ]
    specs, prev = [*head], head
    for level in range(1, rng.randint(5, 7) + 1):
        node = JobSpec(
            "assemble",
            {"deep": flow, "level": level, "fail": rng.random() < 0.08, "slow": rng.random() < 0.3},
            after=prev,
            on_dependency_failure=rng.choice(POLICIES),
        )
        side = [
            JobSpec(
                "assemble",
                {"deep": flow, "level": level + 1, "side": True},
                after=[node],
                on_dependency_failure=rng.choice(POLICIES),
            )
            for _ in range(rng.randint(1, 2))
        ]
        specs += [node, *side]
        prev = [node]
    return specs


def fan_out(rng: random.Random, flow: int) -> list[JobSpec]:
    """A slow part (failing for good 4 times in 5), 20-28 jobs after it, each with a dependent
    of its own, a job after all of them and one after that."""
    root = JobSpec(
        "part", {"n": 0, "slow": True, "fail": rng.random() < 0.8, "deep": flow, "level": 0}
    )
    wide = [
        JobSpec("assemble", {"deep": flow, "level": 1}, after=[root], on_dependency_failure=policy)
        for policy in (rng.choice(POLICIES) for _ in range(rng.randint(20, 28)))
    ]
    subs = [
        JobSpec("assemble", {"deep": flow, "level": 2}, after=[w], on_dependency_failure=p)
        for w, p in ((w, rng.choice(POLICIES)) for w in wide)
    ]
    fan_in = JobSpec(
        "assemble",
        {"deep": flow, "level": 2, "fan_in": True},
        after=wide,
        on_dependency_failure=rng.choice(["skip", "error", "run"]),
    )
    tail = JobSpec(
        "assemble",
        {"deep": flow, "level": 3},
        after=[fan_in],
        on_dependency_failure=rng.choice(POLICIES),
    )
    return [root, *wide, *subs, fan_in, tail]


async def after_running(
    processor: Any, db: Any, rng: random.Random, produced: Produced, flows: list[str]
) -> None:
    """Jobs scheduled after flow jobs that are running now: each dependency's final write
    races with them (it must be made again, knowing them, and settle them at once); and after
    the newest waiting flow jobs with dependents (a failure may be carried through them right
    then). Half of them get a dependent of their own, so that a failure goes on from there."""
    running = (
        await db["job_processor_jobs"]
        .find({"name": {"$in": ["part", "assemble"]}, "status": "running"}, {"_id": 1})
        .limit(4)
        .to_list(None)
    )
    waiting = (
        await db["job_processor_jobs"]
        .find({"name": "assemble", "status": "waiting", "has_dependents": True}, {"_id": 1})
        .sort([("_id", -1)])
        .limit(2)
        .to_list(None)
    )
    for doc in [*running, *waiting]:
        dep = str(doc["_id"])
        late = await processor.schedule_job(
            "assemble", {"late": True}, after=[dep], on_dependency_failure=rng.choice(POLICIES)
        )
        produced.late_on_running.append((late.id, dep))
        flows.append(late.id)
        if rng.random() < 0.5:
            later = await processor.schedule_job(
                "assemble", {"late": 2}, after=[late], on_dependency_failure=rng.choice(POLICIES)
            )
            flows.append(later.id)


async def produce(
    processor: Any,
    db: Any,
    opts: Options,
    produced: Produced,
    stop: float,
    kill_worker: Callable[[int | None], Awaitable[None]],
) -> None:
    rng = random.Random(opts.seed)
    victims: list[str] = []
    flows: list[str] = []  # flow jobs, a few of which are killed (waiting, pending or running)
    everyone: list[str] = []  # the flows' parts, the dependencies of jobs scheduled later
    syncs: list[asyncio.Task[None]] = []
    tick = 0
    while time.monotonic() < stop:
        tick += 1
        try:
            if tick % 3 == 1:  # a flow
                parts = [
                    JobSpec("part", {"n": i, "fail": rng.random() < 0.15})
                    for i in range(rng.randint(2, 4))
                ]
                policy = rng.choice(["skip", "error", "run"])
                parent = JobSpec("assemble", {}, after=parts, on_dependency_failure=policy)
                final = JobSpec(
                    "assemble",
                    {"final": True},
                    after=[parent],
                    on_dependency_failure=rng.choice(["skip", "run"]),
                )
                flow = await processor.schedule_jobs([*parts, parent, final])
                flows.extend(j.id for j in flow)
                if everyone and rng.random() < 0.5:  # after a job scheduled earlier: it may be
                    # running now (the dependent marks it; its final write learns of it)
                    earlier = rng.sample(everyone[-8:], min(len(everyone), 2))
                    late = await processor.schedule_job(
                        "assemble", {"late": True}, after=earlier, on_dependency_failure="run"
                    )
                    flows.append(late.id)
                everyone.extend(j.id for j in flow[:-2])
            if opts.deep_every and tick % opts.deep_every == 0:  # a deep flow
                chain = tick % (2 * opts.deep_every) == 0
                specs = deep_chain(rng, tick) if chain else fan_out(rng, tick)
                deep = await processor.schedule_jobs(specs)
                flows.extend(rng.sample([j.id for j in deep], 2))  # some are killed (waiting)
            if opts.deep_every:
                await after_running(processor, db, rng, produced, flows)
            # one a tick, and now and then a burst of one tenant: its limit binds
            burst = 5 if tick % 4 == 0 else 1
            tenant = f"t{rng.randrange(opts.tenants)}"
            await processor.schedule_jobs([("tenant-work", {"tenant": tenant})] * burst)
            await processor.schedule_job("keyed", {}, key=f"k{rng.randrange(5)}")
            if tick % 2 == 0:
                key = f"sup-{tick}" if rng.random() < 0.7 or not produced.emits else None
                key = key or rng.choice(list(produced.emits))
                fail_at = rng.choice([None, None, None, None, *SERIAL])
                event = await processor.emit("order", {"tick": tick, "fail_at": fail_at}, key=key)
                first = produced.emits.setdefault(key, event.id)
                if first != event.id:
                    produced.violations.append(
                        f"events: key {key!r} gave event {event.id}, then {first}"
                    )
            if tick % 4 == 0:
                await processor.schedule_job("emitter", {})
            if tick % 3 == 2:
                syncs.append(asyncio.create_task(sync_emit(processor, db, tick, produced)))
            if tick % 3 == 0:
                job = await processor.schedule_job(
                    rng.choice(["victim", "victim-r"]),
                    {"seconds": rng.uniform(5, 20), "fail_on_kill": rng.random() < 0.5},
                )
                victims.append(job.id)
            found = None
            if tick % 7 == 3:  # a serial delivery, pending or running: the chain stops there
                found = await db["job_processor_jobs"].find_one(
                    {
                        "name": {"$in": ["order:s1", "order:s2"]},
                        "status": {"$in": ["pending", "running"]},
                    },
                    {"_id": 1},
                )
            targets = victims if tick % 5 else flows
            target = None
            if tick % 7 == 3 and found is not None:
                target = str(found["_id"])
            elif tick % 2 == 1 and targets:
                target = targets.pop(rng.randrange(len(targets)))
            if target is not None:
                killed = await processor.kill_job(target)
                produced.kills.append(
                    {
                        "job_id": target,
                        "status": killed.status.value,
                        "attempt": killed.attempt,
                        "at": time.time(),
                    }
                )
                if killed.status.value == "running" and rng.random() < 0.5:
                    # its worker dies (or stops) while the kill is delivered: the kill still wins
                    worker = await db["job_processor_workers"].find_one({"_id": killed.worker_id})
                    if worker is not None:
                        await kill_worker(int(worker["pid"]))
            await sample(db, opts, produced)
        except JobProcessorError as exc:  # e.g. a producer call past its retry time
            produced.violations.append(f"producer call failed: {exc!r}")
        await asyncio.sleep(1.0)
    await asyncio.gather(*syncs)


async def sync_emit(processor: Any, db: Any, tick: int, produced: Produced) -> None:
    """An event with a sync subscriber: emit returns once its delivery has ended (finished,
    or failed for good: EventDeliveryError), or raises EventTimeoutError."""
    try:
        event = await processor.emit("payment", {"tick": tick}, sync_timeout=20)
        failed = False
    except EventTimeoutError:  # an EventDeliveryError too: first
        produced.sync_timeouts += 1
        return
    except EventDeliveryError as exc:
        event_id, failed = exc.event_id, True
    else:
        event_id = event.id
    doc = await db["job_processor_jobs"].find_one({"event_id": event_id}, {"status": 1})
    status = doc["status"] if doc else None
    if status not in (("errored", "killed") if failed else ("finished",)):
        produced.violations.append(
            f"sync: emit of event {event_id} returned ({'failed' if failed else 'ok'}) while "
            f"its delivery {doc and doc['_id']} was {status}"
        )


async def settle(db: Any, deadline: float) -> dict[str, int]:
    """Wait for the recovery to end every non-cron job, run owed hooks, finish fan-outs and
    give every slot back; returns what is still open."""
    jobs = db["job_processor_jobs"]
    while True:
        left = {
            "active jobs": await jobs.count_documents(
                {"status": {"$in": ACTIVE}, "type": {"$ne": "cron_task"}}
            ),
            "owed hooks": await jobs.count_documents({"exit_hook": "owed"}),
            "owed fan-outs": await db["job_processor_events"].count_documents({"fanout": "owed"}),
            "held slots": await db["job_processor_limits"].count_documents({"running": {"$gt": 0}}),
        }
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        await asyncio.sleep(1.0)


def log_events(log_dir: Path, names: tuple[str, ...]) -> dict[str, int]:
    """How many lines of the workers' logs name each of these events."""
    counts = dict.fromkeys(names, 0)
    for path in log_dir.glob("worker-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            for name in names:
                if f" {name} " in line:
                    counts[name] += 1
    return counts


def late_ids(log_dir: Path) -> list[str]:
    """The job ids of the workers' `dependents_settled_late` lines."""
    return [
        line.split("job_id=", 1)[1].split()[0].strip("'\"")
        for path in log_dir.glob("worker-*.log")
        for line in path.read_text(errors="replace").splitlines()
        if " dependents_settled_late " in line and "job_id=" in line
    ]


async def explain_late(db: Any, log_dir: Path, produced: Produced) -> list[str]:
    """For each dependency a sweep settled late (`dependents_settled_late`): how it ended, and
    whether the process that ended it (or the job whose failure was carried to it) died just
    after; a late settlement without such a death is suspect."""
    ids = late_ids(log_dir)
    jobs = db["job_processor_jobs"]
    fields = {"status": 1, "name": 1, "worker_id": 1, "ended_at": 1, "failed_dependency": 1}
    out = []
    for job_id in ids[:12]:
        hops: list[str] = []
        doc = await jobs.find_one({"_id": ObjectId(job_id)}, fields)
        while doc is not None and len(hops) < 10:
            pid = produced.worker_pids.get(str(doc.get("worker_id")))
            died = produced.deaths.get(pid or -1)
            ended = doc.get("ended_at")
            hops.append(
                f"{doc['_id']} {doc['status']} ended {ended} pid {pid}"
                + (f" died {died:.3f}" if died else "")
            )
            if doc.get("worker_id") or not doc.get("failed_dependency"):
                break
            doc = await jobs.find_one({"_id": ObjectId(doc["failed_dependency"])}, fields)
        # its dependents scheduled after its end: a sweep may read one before its own
        # registration has settled it (then both settle it: harmless, but logged as late)
        ended = await jobs.find_one({"_id": ObjectId(job_id)}, {"ended_at": 1})
        end = (ended or {}).get("ended_at")
        if isinstance(end, str):
            end = dt.datetime.fromisoformat(end)
        if isinstance(end, dt.datetime) and end.tzinfo is None:
            end = end.replace(tzinfo=dt.UTC)
        later = [
            (d["_id"].generation_time - end).total_seconds()
            async for d in jobs.find({"after": job_id}, {"_id": 1})
            if isinstance(end, dt.datetime) and d["_id"].generation_time > end
        ]
        out.append(
            " <- ".join(hops)
            + (
                f"; dependents scheduled after its end: {len(later)}, +{max(later):.0f} s"
                if later
                else ""
            )
        )
    return out


async def run(url: str, db_name: str, log_dir: Path, opts: Options) -> int:
    from chaos_features_app import open_processor

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    db = client[db_name]
    env = {
        "CHAOS_CONCURRENCY": str(opts.concurrency),
        "CHAOS_TENANT_LIMIT": str(opts.tenant_limit),
        "CHAOS_WORKER_TIMEOUT": str(opts.worker_timeout),
    }
    os.environ.update(env)  # this process's own processor (a producer) reads the same
    quiet = logging.getLogger("chaos")
    quiet.setLevel(logging.ERROR)
    sup = Supervisor(
        url_with_db(url, db_name),
        log_dir,
        app="chaos_features_app:make",
        env=env,
        rng=random.Random(opts.seed * 7919),
        sigkill_share=opts.sigkill_share,
    )
    produced = Produced()
    t0 = time.monotonic()
    failed = True
    try:
        processor = await open_processor(db, logger=quiet, subscribers=False)
        sup.start(opts.workers)
        # this process declares no subscriber: its events go to those in the registry, which
        # the workers fill as they start (an event emitted before goes to nobody: the docs)
        while len(await processor.list_subscribers()) < 5:
            await asyncio.sleep(0.2)
        stop = time.monotonic() + opts.duration

        lock = asyncio.Lock()

        async def kill_worker(pid: int | None = None) -> None:
            async with lock:
                kill = await asyncio.to_thread(sup.kill_one, pid)
            if kill is not None:
                produced.deaths[kill.pid] = kill.at
                await close_runs(db, [kill.pid], kill.at)

        async def chaos() -> None:
            rng = random.Random(opts.seed * 31)
            while time.monotonic() < stop:
                await asyncio.sleep(opts.every)
                if rng.random() < opts.freeze_share:
                    await freeze(rng)
                else:
                    await kill_worker()

        async def freeze(rng: random.Random) -> None:
            """SIGSTOP a worker past worker_timeout (a long GC pause, a VM frozen): it is
            declared dead and its jobs recovered; then SIGCONT: it must notice and write
            nothing over what the others did."""
            async with lock:
                proc = rng.choice(list(sup.procs.values()))
                proc.send_signal(signal.SIGSTOP)
                stopped = time.time()
                await asyncio.sleep(opts.worker_timeout + rng.uniform(0.5, 3.0))
                proc.send_signal(signal.SIGCONT)
                produced.freezes.append((proc.pid, stopped, time.time()))
                sup.kills["SIGSTOP"] += 1

        await asyncio.gather(produce(processor, db, opts, produced, stop, kill_worker), chaos())
        produced_end = time.time()
        left = await settle(db, time.monotonic() + opts.settle)
        pids = await asyncio.to_thread(sup.stop_all)
        produced.deaths |= dict.fromkeys(pids, time.time())
        # again: a run's start record sent just before its process was killed may have
        # reached the server after the first close
        for pid, at in produced.deaths.items():
            await close_runs(db, [pid], at)
        elapsed = time.monotonic() - t0
        findings: Findings = await check_all(db, opts.tenant_limit, produced, produced_end)
        findings.violations[:0] = produced.violations
        for what, count in left.items():
            if count:
                findings.violations.append(f"after {opts.settle:g} s of settling: {count} {what}")
        print(f"server: {shown_url(url)}  database: {db_name}  logs: {log_dir}")
        print(
            f"seed {opts.seed}, {opts.workers} workers x {opts.concurrency} slots, tenant limit "
            f"{opts.tenant_limit}, a kill every {opts.every:g} s "
            f"({opts.sigkill_share:.0%} SIGKILL): {sup.kills['SIGKILL']} SIGKILL, "
            f"{sup.kills['SIGTERM']} SIGTERM, {sup.kills['SIGSTOP']} SIGSTOP, {elapsed:.1f} s, "
            f"{produced.samples} samples, "
            f"{produced.sync_timeouts} sync emits timed out"
        )
        for line in findings.summary:
            print(line)
        flagged = ("job_lost", "dependents_not_settled", "dependents_settled_late")
        print(f"worker logs: {log_events(log_dir, (*flagged, 'dependents_released_late'))}")
        for line in await explain_late(db, log_dir, produced):
            print("settled late: " + line)
        for line in findings.notes:
            print("note: " + line)
        for line in findings.frozen_overlaps:
            print("allowed (a frozen worker's runs go on until it notices): " + line)
        for line in findings.violations:
            print("VIOLATION: " + line)
        print(
            "CHECKS: "
            + ("OK" if not findings.violations else f"FAILED ({len(findings.violations)})")
        )
        failed = bool(findings.violations)
        return 1 if failed else 0
    finally:
        await asyncio.to_thread(sup.stop_all)
        if os.environ.get("CHAOS_KEEP_DB") or failed:
            print(f"database {db_name} kept")
        else:
            await client.drop_database(db_name)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Options()
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--every", type=float, default=defaults.every, help="seconds between kills")
    parser.add_argument("--sigkill-share", type=float, default=defaults.sigkill_share)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--settle", type=float, default=defaults.settle, help="seconds")
    parser.add_argument("--tenants", type=int, default=defaults.tenants)
    parser.add_argument("--tenant-limit", type=int, default=defaults.tenant_limit)
    parser.add_argument("--worker-timeout", type=float, default=defaults.worker_timeout)
    parser.add_argument(
        "--deep-every",
        type=int,
        default=defaults.deep_every,
        help="a deep flow (chain or fan-out) every this many ticks, 0: none",
    )
    parser.add_argument(
        "--freeze-share",
        type=float,
        default=defaults.freeze_share,
        help="share of the chaos steps that freeze a worker (SIGSTOP) past worker_timeout",
    )
    args = parser.parse_args()
    opts = Options(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    db_name = f"jp_chaosf_{uuid.uuid4().hex[:8]}"
    log_dir = Path(f"/tmp/{db_name}")
    log_dir.mkdir(parents=True, exist_ok=True)
    with server(os.environ.get("MONGODB_URL")) as url:
        code = asyncio.run(run(url, db_name, log_dir, opts))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
