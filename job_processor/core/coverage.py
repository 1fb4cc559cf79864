"""What the registry tells an operator (pure): which live workers serve each name, and the
warnings `get_status()` and the admin report (names no live worker can run, waiting jobs whose
name no worker defines, paused names with waiting jobs). An event delivery's name (built in, or
made by emit) counts as unserved only while deliveries of it wait.

Which live workers serve a name comes from the worker documents, each listing the names it
claims (`names`): exact whatever tags and code version each worker runs. The worker side of the
registry (recording definitions, reading paused names) is `engine.upkeep.Registry`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .clock import as_utc
from .commands import command, option
from .event_documents import WEBHOOK_JOB, is_delivery
from .lenient import mapping, texts

Doc = dict[str, Any]
#: Used for worker documents that do not record their own worker_timeout.
DEFAULT_WORKER_TIMEOUT = 30.0
#: An unserved name with no waiting job is only worth a warning if it was served this recently.
RECENTLY_SERVED = dt.timedelta(hours=24)


#: The longest worker_timeout a worker document is trusted with (a processor setting's bound).
_MOST_SECONDS = 365 * 24 * 3600


def recorded_timeout(doc: Doc, default_timeout: float) -> float:
    """The worker_timeout a worker document records (the one it gives its runs up by), or
    `default_timeout` when it records none usable (an older version's, a damaged one)."""
    value = doc.get("worker_timeout")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default_timeout
    return float(value) if 0 < value <= _MOST_SECONDS else default_timeout  # NaN fails too


def worker_alive(doc: Doc, now: dt.datetime, default_timeout: float) -> bool:
    """Whether a worker document's last heartbeat is within its own worker_timeout (every
    process judges a worker alike, whatever its own setting)."""
    seen = doc.get("last_seen")
    if not isinstance(seen, dt.datetime):
        return False
    timeout = recorded_timeout(doc, default_timeout)
    return as_utc(seen) >= now - dt.timedelta(seconds=timeout)


@dataclass
class Coverage:
    served_by: dict[str, list[str]] = field(default_factory=dict)
    """name -> ids of the live workers that claim it."""
    unserved: list[str] = field(default_factory=list)
    """Known names that no live worker claims."""
    unknown_waiting: dict[str, int] = field(default_factory=dict)
    """Names no process defines, with their pending/paused job counts."""
    warnings: list[str] = field(default_factory=list)


def worker_warnings(workers: Iterable[Any], now: dt.datetime) -> list[str]:
    """What status pages say of the workers (`WorkerInfo`s with `alive` set): each dead one
    awaiting recovery, each live one with threads given up still running, no live worker."""
    out: list[str] = []
    listed = list(workers)
    for w in listed:
        if w.alive:
            continue
        jobs = f", {len(w.running_jobs)} running jobs to recover" if w.running_jobs else ""
        silent = max(0.0, (now - as_utc(w.last_seen)).total_seconds())
        out.append(
            f"worker {w.id} ({w.hostname}, pid {w.pid}, instance {w.instance_id}) has not "
            f"sent a heartbeat for {silent:.0f}s{jobs}: a live worker's next sweep recovers it"
        )
    out.extend(
        f"worker {w.id} ({w.hostname}, pid {w.pid}): {w.stuck_threads} plain-def handler or "
        "hook call(s) given up (past their grace period or timeout) still run in its "
        "threads; they hold no slot, but look for a blocking call that ignores the abort "
        "signal"
        for w in listed
        if w.alive and w.stuck_threads
    )
    if not any(w.alive for w in listed):
        out.append("no live worker: nothing is being run")
    return out


def coverage(
    known: Mapping[str, Doc],
    live_workers: Iterable[Doc],
    counts: Mapping[str, Mapping[str, int]],
    paused: Iterable[str],
    now: dt.datetime,
    due: Mapping[str, int] | None = None,
) -> Coverage:
    """`known`: name -> what is known of its definition (registry document fields: kind, tag,
    last_seen; may be partial). `counts`: name -> status -> jobs. `due`: name -> jobs due now
    (claimable), every name that has some: a pause holds those, jobs scheduled later are only
    counted beside them (without `due`, every waiting job is taken as due); and a name's
    queued jobs are at least its due ones (a job another program inserted has no status until
    its first claim, docs/scale.md: no count by status holds it)."""
    out = Coverage()

    def queued_of(name: str) -> int:
        waiting = _waiting(counts.get(name, {}))
        return max(waiting, due.get(name, 0)) if due is not None else waiting

    live = []
    everyone = list(live_workers)
    for w in everyone:
        if not w.get("crashed"):
            live.append(w)
            continue
        out.warnings.append(  # it beats, but claims nothing: it serves no name
            f"worker {w['_id']} ({w.get('hostname')}, pid {w.get('pid')}): its claim loop "
            f"crashed ({w['crashed']}): it claims nothing while its heartbeat goes on; restart "
            "it (processor_loop_crashed in its log)"
        )
    paused = set(paused)
    for name in sorted(known):
        out.served_by[name] = [str(w["_id"]) for w in live if name in texts(w.get("names"))]
    for name in sorted(known):
        disagreement = _disagreement(name, live)
        if disagreement:
            out.warnings.append(disagreement)
    out.warnings.extend(_zone_disagreements(known, live))
    for name in sorted(known):
        if out.served_by[name]:
            continue
        info = known[name]
        waiting = queued_of(name)
        delivery = is_delivery(name, info)
        if delivery and not waiting:
            continue  # built in (or made by emit): worth a word only while deliveries wait
        out.unserved.append(name)
        seen = info.get("last_seen")
        recent = isinstance(seen, dt.datetime) and as_utc(seen) >= now - RECENTLY_SERVED
        if not waiting and not recent:
            continue
        kind = info.get("kind") or "job"
        tag = info.get("tag")
        needs = f", with worker_tags that include {tag!r} (or None)" if tag is not None else ""
        if name == WEBHOOK_JOB:
            fix = (
                f"start a worker{needs}: each one delivers webhooks unless "
                "webhook_options={'deliver': False}"
            )
        elif delivery:
            fix = f"start a worker whose subscribers= has {name.rpartition(':')[2]!r}{needs}"
        else:
            fix = f"start a worker that defines it{needs}"
            by_status = counts.get(name, {})
            after = int(by_status.get("waiting", 0))  # waiting for the jobs before them
            if after:
                fix += f" ({jobs(after, 'job')} of it waiting for other jobs)"
            # nothing active: maybe removed from the code on purpose (`names forget` refuses a
            # name with waiting or running jobs, and one a live worker defines: its worker_tags
            # leave it out, or its claim loop crashed; so do `crons remove` and a restart)
            defined = any(
                name in mapping(w.get("definitions")) or name in texts(w.get("names"))
                for w in everyone
            )
            running = int(by_status.get("running", 0))
            if not running and not defined:
                forget = command("names forget", name)
                if kind == "cron":  # its schedule is stored: removed first, explicitly
                    forget = f"{command('crons remove', name)}, then {forget}"
                if waiting or after:  # `names forget` refuses while jobs of it are queued
                    listed = f"job-processor jobs list {option('--name', name)}"
                    forget = f"kill its queued jobs ({listed}, then jobs kill ID...), then {forget}"
                fix += f", or, if it is gone from the code, {forget}"
        queued = f" ({waiting} queued)" if waiting else ""
        tagged = f" (tag {tag!r})" if tag is not None else ""
        out.warnings.append(f"{kind} {name!r}{tagged}: no live worker can run it{queued}; {fix}")
    for name in sorted(set(counts) | set(due or {})):
        waiting = queued_of(name)
        if name not in known and waiting:
            out.unknown_waiting[name] = waiting
            listed = f"job-processor jobs list {option('--name', name)}"
            out.warnings.append(
                f"{jobs(waiting, 'queued job')} of unknown name {name!r}: no worker defines it "
                "(a typo, or a job removed from the code); define it, or kill them (their ids: "
                f"{listed}; then job-processor jobs kill ID...)"
            )
    for name in sorted(paused):
        waiting = queued_of(name)
        held = min(waiting, due.get(name, 0)) if due is not None else waiting
        if held:
            later = waiting - held
            more = f"; {later} more scheduled later" if later else ""
            out.warnings.append(
                f"{name!r} is paused: {jobs(held, 'due job')} {'waits' if held == 1 else 'wait'} "
                f"until it is resumed{more} ({command('names resume', name)})"
            )
    return out


def _disagreement(name: str, live: list[Doc]) -> str | None:
    """A warning when live workers run different definitions of `name` (their documents'
    `definitions` digests differ): two apps using one name, or a deploy under way."""
    by_version: dict[str, list[str]] = {}
    for w in live:
        version = mapping(w.get("definitions")).get(name)
        if version is not None:
            by_version.setdefault(str(version), []).append(str(w.get("instance_id") or w["_id"]))
    if len(by_version) < 2:
        return None
    groups = "; ".join(", ".join(ws) for ws in sorted(sorted(w) for w in by_version.values()))
    return (
        f"{name!r} is defined differently by live workers ({len(by_version)} versions, one per "
        f"group: {groups}): its tag, options or handler differ, and each runs the jobs it "
        "claims with its own; a deploy under way, or two apps using one name (rename one)"
    )


def _zone_disagreements(known: Mapping[str, Doc], live: list[Doc]) -> list[str]:
    """A warning per zone whose rules live workers that fire one of its crons (they define
    it: `definitions`) read differently (their documents' `zone_rules` digests differ,
    `engine.zone_rules`): that cron's slots fall at different instants on each side, and may
    run twice or be skipped. Workers that share no cron of the zone (two apps on one
    database) fire each slot alone: not a disagreement."""
    zones: dict[str, list[str]] = {}
    for n, d in sorted(known.items()):
        if d.get("kind") == "cron" and isinstance(d.get("timezone"), str):
            zones.setdefault(d["timezone"], []).append(n)
    readers = [(w, {z: (dg, src) for z, dg, src in zone_rows(w)}) for w in live]
    out = []
    for zone, crons in sorted(zones.items()):
        shared = [
            c
            for c in crons
            if len(
                {
                    rows[zone][0]
                    for w, rows in readers
                    if zone in rows and c in mapping(w.get("definitions"))
                }
            )
            > 1
        ]
        if not shared:
            continue
        by_digest: dict[str, list[str]] = {}
        for w, rows in readers:
            defined = mapping(w.get("definitions"))
            if zone in rows and any(c in defined for c in shared):
                digest, source = rows[zone]
                who = f"{w.get('instance_id') or w['_id']} ({source})"
                by_digest.setdefault(digest, []).append(who)
        groups = "; ".join(", ".join(ws) for ws in sorted(sorted(w) for w in by_digest.values()))
        out.append(
            f"time zone {zone!r} (crons {', '.join(map(repr, shared))}): live workers read "
            f"different rules for it ({len(by_digest)} versions, one per group: {groups}): some "
            "slots fall at different instants on each, and may run twice or be skipped; give "
            "every replica the same rules (the same base image, or PYTHONTZPATH= and one "
            "pinned tzdata)"
        )
    return out


def registrar(name: str, live: Iterable[Doc]) -> str | None:
    """The live worker whose definition of `name` the registry should show: of the live
    workers that define it (its digest on their document, or they claim it), the most recently
    started (ties: the greatest id). That is the last one to write it at its start; when the
    worker that wrote the row is no longer live, this one writes its own again. None: no live
    worker defines it."""
    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    defining = [
        w for w in live if name in mapping(w.get("definitions")) or name in texts(w.get("names"))
    ]
    if not defining:
        return None
    newest = max(
        defining,
        key=lambda w: (
            as_utc(w["started_at"]) if isinstance(w.get("started_at"), dt.datetime) else oldest,
            str(w["_id"]),
        ),
    )
    return str(newest["_id"])


def defined_differently(
    mine: Mapping[str, str], worker_id: str, live: Iterable[Doc]
) -> dict[str, list[str]]:
    """name -> the other live workers (ids) whose definition of it (digest) differs from this
    worker's (`mine`: name -> digest)."""
    out: dict[str, list[str]] = {}
    for w in live:
        if str(w["_id"]) == worker_id:
            continue
        theirs = mapping(w.get("definitions"))
        for name, digest in mine.items():
            if theirs.get(name) is not None and str(theirs[name]) != digest:
                out.setdefault(name, []).append(str(w["_id"]))
    return {name: sorted(ids) for name, ids in sorted(out.items())}


def zone_rules_differ(
    mine: Iterable[list[str]], crons: Mapping[str, list[str]], worker_id: str, live: Iterable[Doc]
) -> dict[str, tuple[list[str], list[str]]]:
    """zone -> (the other live workers, "<id> (<where it read them>)", whose digest of the
    zone's rules differs from this worker's, and the crons of `crons[zone]` they also define:
    they fire those slots too). `mine`: [zone, digest, source] rows, the worker document's
    `zone_rules`; `crons`: zone -> this worker's crons in it. A worker that defines none of
    them (another app on the database) fires none of those slots: not counted."""
    digests = {row[0]: row[1] for row in mine}
    out: dict[str, tuple[list[str], set[str]]] = {}
    for w in live:
        if str(w["_id"]) == worker_id:
            continue
        defined = mapping(w.get("definitions"))
        for zone, digest, source in zone_rows(w):
            if zone not in digests or digest == digests[zone]:
                continue
            shared = {c for c in crons.get(zone, []) if c in defined}
            if shared:
                others, names = out.setdefault(zone, ([], set()))
                others.append(f"{w['_id']} ({source})")
                names |= shared
    return {zone: (sorted(ids), sorted(names)) for zone, (ids, names) in sorted(out.items())}


def zone_rows(doc: Doc) -> list[tuple[str, str, str]]:
    """A worker document's `zone_rules` rows, [zone, digest, source]: none of an older version,
    and no row another program wrote in another shape."""
    rows = doc.get("zone_rules")
    return [
        (row[0], row[1], row[2])
        for row in (rows if isinstance(rows, list) else [])
        if isinstance(row, list) and len(row) == 3 and all(isinstance(x, str) for x in row)
    ]


def misread(doc: Doc) -> list[str]:
    """The fields of a live worker's document the registry reads (`names`, `definitions`)
    that another program wrote with a wrong type: they are read as empty."""
    kinds: dict[str, type | tuple[type, ...]] = {"names": (list, str), "definitions": Mapping}
    return [
        k for k, kind in kinds.items() if doc.get(k) is not None and not isinstance(doc[k], kind)
    ]


def jobs(n: int, noun: str) -> str:
    """ "1 queued job", "3 queued jobs"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _waiting(by_status: Mapping[str, int]) -> int:
    return int(by_status.get("pending", 0)) + int(by_status.get("paused", 0))
