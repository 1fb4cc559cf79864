"""The end-of-run checks of chaos_features.py: each reads what the run left in the database
(jobs, events, limits, and the handlers' own run records) and lists what a documented
guarantee forbids, with the job ids."""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

ACTIVE = ["pending", "running", "paused", "waiting"]
ENDED = {"finished", "errored", "killed", "skipped"}
HOOKED = {"finished", "errored", "killed"}
SERIAL = ("s1", "s2", "s3")

Doc = dict[str, Any]


@dataclass
class Findings:
    summary: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    frozen_overlaps: list[str] = field(default_factory=list)


def crowded(runs: list[Doc], limit: int, distinct_jobs: bool = False) -> list[list[Doc]]:
    """The sets of runs (intervals [t0, t1]) that were more than `limit` at once; an end at
    the same instant as a start comes first. `distinct_jobs`: count jobs, not runs."""
    points = []
    for run in runs:
        points.append((run["t0"], 1, run))
        points.append((run.get("t1", float("inf")), 0, run))
    points.sort(key=lambda p: (p[0], p[1]))
    active: dict[Any, Doc] = {}
    found: list[list[Doc]] = []
    seen: set[frozenset[Any]] = set()
    for _, kind, run in points:
        if kind == 0:
            active.pop(run["_id"], None)
            continue
        active[run["_id"]] = run
        count = len({r["job_id"] for r in active.values()}) if distinct_jobs else len(active)
        if count > limit:
            ids = frozenset(active)
            if ids not in seen:
                seen.add(ids)
                found.append(list(active.values()))
    return found


def overlap(f: Findings, group: list[Doc], message: str) -> None:
    """A violation, unless a run of the group was in a process frozen (SIGSTOP) past
    worker_timeout meanwhile: the docs allow that (its runs go on until it notices)."""
    if any(r.get("frozen") for r in group):
        f.frozen_overlaps.append(message)
    else:
        f.violations.append(message)


def describe(runs: list[Doc]) -> str:
    return ", ".join(
        f"{r['job_id']}#{r.get('attempt')} (pid {r['pid']}, {r['t0']:.3f}-{r.get('t1', 0):.3f}"
        f"{', closed at exit' if r.get('outcome') == 'process exited' else ''}"
        f"{', frozen' if r.get('frozen') else ''})"
        for r in runs
    )


async def check_all(db: Any, tenant_limit: int, produced: Any, produced_end: float) -> Findings:
    f = Findings()
    jobs = {str(d["_id"]): d async for d in db["job_processor_jobs"].find({}, {"logs": 0})}
    runs = sorted([r async for r in db["cf_runs"].find({})], key=lambda r: r["t0"])
    runs_of: dict[str, list[Doc]] = collections.defaultdict(list)
    for r in runs:
        r["frozen"] = any(
            pid == r["pid"] and r["t0"] < cont and r.get("t1", float("inf")) > stopped
            for pid, stopped, cont in produced.freezes
        )
        runs_of[r["job_id"]].append(r)
    hooks = collections.Counter([h["job_id"] async for h in db["cf_hooks"].find({})])
    statuses = collections.Counter(d["status"] for d in jobs.values())
    f.summary.append(f"jobs: {len(jobs)} {dict(statuses)}; handler runs: {len(runs)}")
    for what in [s async for s in db["cf_seen"].find({})]:
        message = f"a handler saw: {what['what']}: {what}"
        if what.get("key"):  # a limit: was a frozen worker's run among those under way?
            under_way = [
                r
                for r in runs
                if r.get("key") == what["key"] and r["t0"] <= what["at"] < r.get("t1", 1e18)
            ]
            overlap(f, under_way, message)
        else:
            f.violations.append(message)
    check_general(f, jobs, runs, runs_of, hooks)
    thawed = [
        (r, cont)
        for r in runs
        for pid, stopped, cont in produced.freezes
        if pid == r["pid"] and r["t0"] < stopped and r.get("t1", 0) > cont
    ]
    if thawed:  # runs under way when their worker froze, still under way when it went on
        outcomes = collections.Counter(r.get("outcome") for r, _ in thawed)
        after = sorted(r["t1"] - cont for r, cont in thawed)
        f.summary.append(
            f"runs of frozen workers: {len(thawed)}, ended {dict(outcomes)}, "
            f"{after[len(after) // 2]:.3f} s (median) / {after[-1]:.3f} s (max) after SIGCONT"
        )
    check_limits(f, runs, tenant_limit)
    await check_leaks(f, db)
    check_flows(f, jobs, runs_of, {k["job_id"] for k in produced.kills})
    check_deep(f, jobs, runs_of, {k["job_id"] for k in produced.kills}, produced.late_on_running)
    check_crons(f, jobs, runs, runs_of, produced_end)
    await check_events(f, db, jobs, runs_of)
    check_dedup(f, jobs, runs)
    check_kills(f, jobs, runs_of, produced.kills)
    return f


def check_general(
    f: Findings,
    jobs: dict[str, Doc],
    runs: list[Doc],
    runs_of: dict[str, list[Doc]],
    hooks: collections.Counter[str],
) -> None:
    reruns = 0
    for job_id, its in runs_of.items():
        if len({r["attempt"] for r in its}) < len(its):
            f.violations.append(f"job {job_id} ran twice under one attempt: {describe(its)}")
        reruns += len(its) > 1
        for group in crowded(its, 1):
            overlap(f, group, f"job {job_id} ran twice at once: {describe(group)}")
    never_hooked, twice = [], 0
    for job_id, doc in jobs.items():
        if doc.get("type") != "cron_task" and doc["status"] in ACTIVE:
            f.violations.append(f"job {job_id} ({doc['name']}) left {doc['status']}")
        if doc.get("exit_hook") == "owed":
            f.violations.append(f"job {job_id} ({doc['name']}): on_job_exited still owed")
        if doc["status"] in HOOKED and not doc.get("event_id"):
            if not hooks[job_id]:
                never_hooked.append(job_id)
            twice += hooks[job_id] > 1
        if doc["status"] == "skipped" and hooks[job_id]:
            f.violations.append(f"skipped job {job_id}: on_job_exited called")
    if never_hooked:
        f.violations.append(f"ended jobs whose on_job_exited never ran: {never_hooked[:20]}")
    lost = sum(
        1
        for d in jobs.values()
        if d["status"] == "errored" and "heartbeating" in str(d.get("output") or {})
    )
    f.summary.append(
        f"jobs run more than once: {reruns}; hooks called twice: {twice}; "
        f"errored after crashes: {lost}"
    )


def check_limits(f: Findings, runs: list[Doc], limit: int) -> None:
    by_key: dict[str, list[Doc]] = collections.defaultdict(list)
    for r in runs:
        if r["kind"] == "tenant":
            by_key[r["key"]].append(r)
    peak = {}
    for key, its in sorted(by_key.items()):
        peak[key] = max((len(g) for g in crowded(its, 0)), default=0)
        for group in crowded(its, limit):
            overlap(f, group, f"limit {key}: {len(group)} runs at once: {describe(group)}")
    f.summary.append(f"tenant runs: {sum(map(len, by_key.values()))}; peak at once: {peak}")


async def check_leaks(f: Findings, db: Any) -> None:
    for doc in await db["job_processor_limits"].find({}).to_list(None):
        if doc.get("running", 0) != 0 or doc.get("holders"):
            f.violations.append(
                f"limit {doc['_id']} slots leaked after the jobs ended: running "
                f"{doc.get('running')}, holders {doc.get('holders')}"
            )


def check_flows(
    f: Findings, jobs: dict[str, Doc], runs_of: dict[str, list[Doc]], killed: set[str]
) -> None:
    counts: collections.Counter[str] = collections.Counter()
    for job_id, doc in jobs.items():
        after = doc.get("after")
        if not after:
            continue
        policy = doc.get("on_dependency_failure") or "skip"
        deps = [jobs.get(a) for a in after]
        failed = [
            a for a, d in zip(after, deps, strict=True) if d is None or d["status"] != "finished"
        ]
        its = runs_of.get(job_id, [])
        status = doc["status"]
        counts[f"{policy}:{'failed' if failed else 'ok'}:{status}"] += 1
        if status == "killed" and job_id in killed:
            continue  # killed by this run (check_kills checks that)
        if not failed or policy == "run":
            if not its:
                f.violations.append(f"flow: job {job_id} ({policy}) never ran: {status}")
        elif policy == "skip":
            if status != "skipped" or doc.get("failed_dependency") not in failed or its:
                f.violations.append(
                    f"flow: job {job_id} after failed {failed} (skip): {status}, "
                    f"failed_dependency {doc.get('failed_dependency')}, {len(its)} runs"
                )
        elif status != "errored" or its:
            f.violations.append(
                f"flow: job {job_id} after failed {failed} (error): {status}, {len(its)} runs"
            )
        if its:  # every dependency's last run ended before this job's first started
            first = min(r["t0"] for r in its)
            for a in after:
                late = [r for r in runs_of.get(a, []) if r.get("t1", float("inf")) > first]
                if late:
                    overlap(
                        f,
                        late,
                        f"flow: job {job_id} started at {first:.3f} while its dependency ran: "
                        f"{describe(late)}",
                    )
    f.summary.append(f"flow jobs (policy:deps:status): {dict(sorted(counts.items()))}")


def _slot(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    slot: dt.datetime = value
    return slot if slot.tzinfo else slot.replace(tzinfo=dt.UTC)


def check_crons(
    f: Findings,
    jobs: dict[str, Doc],
    runs: list[Doc],
    runs_of: dict[str, list[Doc]],
    produced_end: float,
) -> None:
    end = dt.datetime.fromtimestamp(produced_end - 10, dt.UTC)
    for name, step in (("tick", 1), ("exclusive-tick", 2)):
        tasks = [d for d in jobs.values() if d["name"] == name and d.get("trigger") == "schedule"]
        by_slot: dict[dt.datetime, list[str]] = collections.defaultdict(list)
        for d in tasks:
            # the slot is in its key: a retry's `scheduled_for` is the retry's time
            by_slot[_slot(d["cron_slot_key"].split("|", 1)[1])].append(str(d["_id"]))
        for slot, ids in sorted(by_slot.items()):
            if len(ids) > 1:
                f.violations.append(f"cron {name}: slot {slot} has {len(ids)} tasks: {ids}")
        slots = sorted(by_slot)
        if not slots:
            f.violations.append(f"cron {name}: no task at all")
            continue
        at, missing = slots[0], []
        while at <= min(end, slots[-1]):
            if at not in by_slot:
                missing.append(at.isoformat())
            at += dt.timedelta(seconds=step)
        if missing:
            f.violations.append(f"cron {name}: slots without a task: {missing[:10]}")
        kinds = collections.Counter(
            f"{d['status']}{':' + d['skip_reason'] if d.get('skip_reason') else ''}" for d in tasks
        )
        f.summary.append(f"cron {name}: {len(slots)} slots {dict(kinds)}")
        for d in tasks:
            if d.get("skip_reason") == "missed" and runs_of.get(str(d["_id"])):
                f.violations.append(f"cron {name}: task {d['_id']} skipped as missed, yet it ran")
    exclusive = [r for r in runs if r["name"] == "exclusive-tick"]
    for group in crowded(exclusive, 1, distinct_jobs=True):
        overlap(f, group, f"exclusive cron: two tasks active at once: {describe(group)}")


async def check_events(
    f: Findings, db: Any, jobs: dict[str, Doc], runs_of: dict[str, list[Doc]]
) -> None:
    events = [e async for e in db["job_processor_events"].find({})]
    per_key = collections.Counter(e.get("key") for e in events if e.get("key"))
    for key, n in per_key.items():
        if n > 1:
            f.violations.append(f"events: {n} events with key {key!r}")
    deliveries: dict[str, dict[str, list[Doc]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for d in jobs.values():
        if d.get("event_id") and not (d.get("payload") or {}).get("replay_id"):
            deliveries[d["event_id"]][d["payload"]["target"]].append(d)
    chains: collections.Counter[str] = collections.Counter()
    for e in events:
        eid = str(e["_id"])
        mine = deliveries.get(eid, {})
        if e.get("fanout") != "done":
            f.violations.append(f"event {eid}: fan-out {e.get('fanout')}")
        for target, docs in mine.items():
            if len(docs) > 1:
                ids = [str(d["_id"]) for d in docs]
                f.violations.append(f"event {eid}: {len(docs)} deliveries to {target}: {ids}")
        single = "ledger" if e["name"] == "payment" else "audit"
        one = mine.get(single)
        if not one:
            f.violations.append(f"event {eid}: no delivery to {single}")
        elif one[0]["status"] == "finished" and not runs_of.get(str(one[0]["_id"])):
            f.violations.append(f"event {eid}: delivery {one[0]['_id']} finished, never ran")
        if e["name"] != "order":
            continue
        stopped = None
        for i, target in enumerate(SERIAL):
            found = mine.get(target)
            if stopped is not None:
                if (
                    not found
                    or found[0]["status"] != "skipped"
                    or runs_of.get(str(found[0]["_id"]))
                ):
                    f.violations.append(
                        f"event {eid}: {target} after {stopped} failed: "
                        f"{[(str(d['_id']), d['status']) for d in found or []]}"
                    )
                continue
            if not found:
                f.violations.append(f"event {eid}: no delivery to serial {target}")
                break
            doc = found[0]
            chains[f"{target}:{doc['status']}"] += 1
            its = runs_of.get(str(doc["_id"]), [])
            if doc["status"] == "finished" and not its:
                f.violations.append(f"event {eid}: delivery {doc['_id']} finished, never ran")
            if i and its:
                prev = mine[SERIAL[i - 1]][0]
                first = min(r["t0"] for r in its)
                late = [r for r in runs_of.get(str(prev["_id"]), []) if r.get("t1", 1e18) > first]
                if late:
                    overlap(
                        f,
                        late,
                        f"event {eid}: {target} started at {first:.3f} while {SERIAL[i - 1]} "
                        f"ran: {describe(late)}",
                    )
            if doc["status"] != "finished":
                stopped = target
    emitted = {e.get("key") for e in events}
    for job_id, d in jobs.items():
        if d["name"] == "emitter" and d["status"] == "finished" and f"job-{job_id}" not in emitted:
            f.violations.append(f"emitter job {job_id} finished, but its event is missing")
    f.summary.append(f"events: {len(events)}; serial deliveries: {dict(sorted(chains.items()))}")


def check_dedup(f: Findings, jobs: dict[str, Doc], runs: list[Doc]) -> None:
    by_key: dict[str, list[Doc]] = collections.defaultdict(list)
    for r in runs:
        if r["kind"] == "keyed":
            by_key[r["key"]].append(r)
    for key, its in by_key.items():
        for group in crowded(its, 1, distinct_jobs=True):
            overlap(f, group, f"dedup: key {key!r} run by two jobs at once: {describe(group)}")
    keyed = [d for d in jobs.values() if d["name"] == "keyed"]
    f.summary.append(f"keyed jobs: {len(keyed)} over {len(by_key)} keys")


def check_kills(
    f: Findings, jobs: dict[str, Doc], runs_of: dict[str, list[Doc]], kills: list[Doc]
) -> None:
    outcome: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    for k in kills:
        doc = jobs[k["job_id"]]
        outcome[f"{k['status']}->{doc['status']}"] += 1
        if k["status"] in ("finished", "errored", "skipped"):
            continue  # ended before the kill: nothing to kill
        its = runs_of.get(k["job_id"], [])
        if doc["status"] == "finished" and its and its[-1].get("outcome") == "returned":
            continue  # its handler returned before it saw the kill: finished wins (the guide)
        if doc["status"] != "killed":
            f.violations.append(
                f"kill: job {k['job_id']} was {k['status']} when killed, ended {doc['status']}"
            )
        seen = [
            r for r in its if r["attempt"] == k["attempt"] and r.get("outcome") != "process exited"
        ]
        if k["status"] == "running" and seen and "t1" in seen[-1]:
            # the guide: the worker running it sees it within about one poll_interval (0.3 s)
            latency = seen[-1]["t1"] - k["at"]
            latencies.append(latency)
            if latency > 3.0:  # a frozen worker sees it when it goes on
                overlap(
                    f,
                    seen,
                    f"kill: job {k['job_id']} still ran {latency:.1f} s after its kill request: "
                    f"{describe(seen)}",
                )
        again = [r for r in its if r["attempt"] > k["attempt"]]
        if again:
            f.violations.append(
                f"kill: job {k['job_id']} claimed after its kill: {describe(again)}"
            )
    latencies.sort()
    f.summary.append(
        f"kills (status at the call -> final): {dict(sorted(outcome.items()))}; seen by the "
        + (
            f"handler after {latencies[len(latencies) // 2]:.2f} s (median), "
            f"{latencies[-1]:.2f} s (max)"
            if latencies
            else "handler: none measured"
        )
    )


def _time(value: Any) -> float | None:
    """A date field as epoch seconds (nx-27017 may give it back as text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def check_deep(
    f: Findings,
    jobs: dict[str, Doc],
    runs_of: dict[str, list[Doc]],
    killed: set[str],
    late_on_running: list[tuple[str, str]],
) -> None:
    """What a dependency's end records on its dependents, in every flow: each counted
    dependency's recorded status is the one it ended with; a job released to run had counted
    them all; none is left waiting once its dependencies all ended; a failure is carried down
    deep flows (chains, fan-outs) to every level, each job ending as its policy says
    (check_flows checks each job against its dependencies' statuses); how long after its
    dependency's end a job ended by it was, and how deep failures went."""
    carried: collections.Counter[int] = collections.Counter()  # by level, deep flows
    lags: list[tuple[float, str]] = []
    for job_id, doc in jobs.items():
        after = doc.get("after")
        if not after:
            continue
        deps = doc.get("deps") or {}
        status = doc["status"]
        its = runs_of.get(job_id, [])
        for dep, recorded in deps.items():
            actual = jobs[dep]["status"] if dep in jobs else "deleted"
            if recorded == "waiting":
                if its:
                    f.violations.append(
                        f"flow: job {job_id} ran, its dependency {dep} ({actual}) not counted"
                    )
            elif recorded != actual:
                f.violations.append(
                    f"flow: job {job_id} ({status}) recorded its dependency {dep} as {recorded}, "
                    f"which ended {actual}"
                )
        if status == "waiting":
            ends = {d: jobs[d]["status"] if d in jobs else "deleted" for d in after}
            if all(s in ENDED or s == "deleted" for s in ends.values()):
                f.violations.append(
                    f"flow: job {job_id} left waiting, its dependencies all ended: {ends}"
                )
        failed = doc.get("failed_dependency")
        if status in ("skipped", "errored") and failed and not its and job_id not in killed:
            if (doc.get("payload") or {}).get("deep") is not None:
                carried[int(doc["payload"].get("level", 0))] += 1
            t_dep = _time(jobs[failed].get("ended_at")) if failed in jobs else None
            t_job = _time(doc.get("ended_at"))
            if t_dep is not None and t_job is not None:
                lags.append((t_job - t_dep, job_id))
    deep = {(d.get("payload") or {}).get("deep") for d in jobs.values()} - {None}
    lags.sort()
    slow = [f"{job_id} {lag:.1f} s" for lag, job_id in lags if lag > 4]
    f.summary.append(
        f"deep flows: {len(deep)}; jobs ended by a failure carried down, by level: "
        f"{dict(sorted(carried.items()))}; after their dependency's end: "
        + (
            f"{lags[len(lags) // 2][0]:.2f} s (median), {lags[-1][0]:.2f} s (max), "
            f"{len(slow)} over 4 s"
            if lags
            else "none"
        )
    )
    if slow:
        f.notes.append(f"failures carried more than 4 s after the end (a sweep's?): {slow[:10]}")
    outcomes = collections.Counter(
        f"{jobs[dep]['status'] if dep in jobs else 'deleted'}->{jobs[job]['status']}"
        for job, dep in late_on_running
        if job in jobs
    )
    f.summary.append(
        f"jobs scheduled after a running job (dependency -> job): {dict(sorted(outcomes.items()))}"
    )
