"""Claiming under cluster-wide limits, and giving the slots back.

Names whose JobDef has a `limit` are claimed here, one limit key at a time, after the names
without one (so a full limit never holds back other names); under several limits, in the
order of their best due jobs (priority, then due time). For a key:

1. count the due jobs of its names (one indexed count, at most the free slots): none, done;
2. take that many slots (`LimitStore.acquire`, a compare-and-set: read + write), each under a
   fresh run id;
3. claim one job per slot with that run id (`claim_next`, one command each), so the job's run
   and its slot share an id; give back the slots not used.

A full limit blocks its key until a slot is given back in this process (wake-up at once) or,
across processes, the next poll; a rate-limited key until the window allows a start.

A per-value limit (`Limit(key="tenant:{tenant_id}", ...)`: each job's key is filled from its
payload when it is scheduled) is claimed fairly: the best due jobs whose key is not known to be
full (one query), a slot for each from its own key's limit, then that very job (a claim on its
`_id`); a key found full is left out of the next round, so one tenant's backlog never holds back
another's. Idle keys' documents are removed by the sweep. A slot is
given back once (a compare-and-set on the holder) by whoever ends the run: the worker after its
final write, the recovery after it recovered a crashed run, the sweep for a dead worker's
reservations, or the worker's own reconciliation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pymongo.errors import PyMongoError

from ..core import documents as D
from ..core.definitions import JobDef, Limit
from ..core.limits import EMPTY, check_limits, plan, running, stored_number
from ..core.log import EventLog
from ..core.protocols import ClaimingWorker
from ..storage import Storage
from ..storage.transient import describe, driver_bound

Doc = dict[str, Any]


class Limiter:
    def __init__(
        self, storage: Storage, definitions: Mapping[str, JobDef], names: list[str], log: EventLog
    ) -> None:
        self.storage = storage
        self.log = log
        self.limits = check_limits(definitions)
        self.groups: dict[str, list[str]] = {}
        """limit key -> the names this worker claims under it."""
        for name in names:
            limit = definitions[name].limit
            if limit is not None:
                self.groups.setdefault(limit.key, []).append(name)
        self.limited = {n for names in self.groups.values() for n in names}
        self.blocked: dict[str, dt.datetime] = {}
        """limit key -> until when it is known to be full (or out of starts)."""
        self.template_of: dict[str, str] = {}
        """A per-value key -> the templated key it was filled from."""
        self.freed = asyncio.Event()
        """Set when this process gives a slot back (a reserve() waiting in run_job wakes)."""
        self.held_on: dict[str, asyncio.Task[None]] = {}
        """Run id -> the release waiting for a run's handler, still going after its end."""

    def unlimited(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self.limited] if self.limited else names

    async def claim(self, worker: ClaimingWorker, free: int) -> int:
        """Fill up to `free` slots with jobs of limited names. Returns how many were claimed.
        Slots and jobs are taken under one worker id, read once: a heartbeat that registers
        afresh meanwhile ends the round (its slots go back), never splits a job from its slot.
        Under several limits, the best `free` due jobs across them (one read) decide which
        limit goes first and how many slots each gets first, so a backlog under one limit
        never holds back an older or higher-priority job under another."""
        got = 0
        now = worker.clock.now()
        me = worker.worker_id
        eligible: dict[str, list[str]] = {}
        for key, group in self.groups.items():
            names = [n for n in group if n not in worker.paused]
            limit = self.limits[key]
            # a per-value limit is never skipped whole: its full keys are left out one by one
            # (the templated key itself is one of them: the jobs that lack the field)
            if names and (limit.templated or self.blocked.get(key, now) <= now):
                eligible[key] = names
        plan = [(key, free) for key in eligible]
        full: dict[str, set[str]] = {}  # a per-value limit -> its keys full now (read once)
        if len(eligible) > 1:
            key_of = {n: key for key, names in eligible.items() for n in names}
            for key in eligible:
                if self.limits[key].templated:
                    full[key] = await self._full_keys(self.limits[key], now, worker)
            # the jobs of full keys cannot be claimed: left out, or a full tenant's backlog
            # gave its limit every slot, run on its other tenants' younger jobs
            skip = {k for keys in full.values() for k in keys} | self._blocked_values(now)
            share = await self._share(key_of, now, free, skip)
            plan = list(share.items()) + [(k, free) for k in eligible if k not in share]
        for key, most in plan:
            if free - got <= 0:
                break
            limit, names = self.limits[key], eligible[key]
            n = min(most, free - got)
            if limit.templated:
                got += await self._claim_values(worker, me, limit, names, n, now, full.get(key))
            else:
                got += await self._claim_key(worker, me, limit, names, n, now)
        return got

    async def _share(
        self, key_of: Mapping[str, str], now: dt.datetime, free: int, skip: set[str]
    ) -> Counter[str]:
        """How many of the best `free` due jobs of these names (`key_of`: name -> limit key;
        `skip`: full per-value keys) each limit has, a per-value limit's key counting for at
        most the runs it has room for now (`_rooms`): a tenant's backlog takes no more slots
        of the claim than that tenant may start, and the jobs after it are read on (its key
        left out of the next read: a few reads at most)."""
        rooms: dict[str, int] = {}
        capped: dict[str, tuple[str, int]] = {}  # a key whose room is all counted: its limit
        share: Counter[str] = Counter()
        for _ in range(3):
            leave_out = sorted(skip | capped.keys())
            best = await self.storage.jobs.due_names(list(key_of), now, free, leave_out)
            values = {v: key_of[n] for n, v in best if n in key_of and isinstance(v, str)}
            values = {v: k for v, k in values.items() if self.limits[k].templated}
            rooms |= await self._rooms({v: k for v, k in values.items() if v not in rooms}, now)
            share = Counter()
            for of, room in capped.values():
                share[of] += room
            left, per_value, more = free - sum(share.values()), Counter[str](), False
            for name, value in best:
                key = key_of.get(name)
                if key is None or left <= 0:
                    continue
                if isinstance(value, str) and value in rooms:
                    per_value[value] += 1
                    if per_value[value] > rooms[value]:  # its room is taken: read on past it
                        capped[value], more = (key, rooms[value]), True
                        continue
                share[key] += 1
                left -= 1
            if not more or left <= 0 or len(best) < free:
                break
        return +share

    async def _rooms(self, values: Mapping[str, str], now: dt.datetime) -> dict[str, int]:
        """The runs each of these per-value keys (-> its limit's key) has room for now, by
        its concurrency and rate less what it runs and started (one read of their documents;
        a key without one has its limit's whole room)."""
        if not values:
            return {}
        docs = {str(d["_id"]): d for d in await self.storage.limits.rooms_of(sorted(values))}
        return {
            value: plan(docs.get(value, EMPTY), self.limits[key], 2**31, now).slots
            for value, key in values.items()
        }

    async def _claim_values(
        self,
        worker: ClaimingWorker,
        me: str,
        limit: Limit,
        names: list[str],
        free: int,
        now: dt.datetime,
        known_full: set[str] | None = None,
    ) -> int:
        """A per-value limit: the best due jobs of keys not known to be full, each under a slot
        of its own key (see the module docstring). A few rounds at most: each learns which keys
        are full, none runs without a claim or a newly full key. `known_full`: its full keys,
        when this claim has read them already."""
        claimed = 0
        if known_full is None:
            known_full = await self._full_keys(limit, now, worker)
        for _ in range(4):
            if claimed >= free:
                break
            full = sorted(known_full | self._blocked_values(now))
            candidates = await self.storage.jobs.due_by_key(names, now, full, free - claimed)
            by_key: dict[str, list[Doc]] = {}
            for doc in candidates:
                by_key.setdefault(value_key(limit, doc), []).append(doc)
            learnt = False
            for key, docs in by_key.items():
                # jobs another program inserted carry no key, jobs scheduled under another
                # limit another key: it is written on them, so that the next rounds'
                # candidates leave them out once their key is full
                foreign = [d for d in docs if d.get("limit_key") != key]
                if foreign:
                    await self.storage.jobs.fill_limit_key(foreign, key)
                ids = [D.new_id() for _ in docs]
                if not worker.may_claim(me):
                    return claimed
                granted, retry_at = await self._acquire(
                    limit.for_key(key), ids, me, worker.clock.now, worker.claim_bound(), limit.key
                )
                if len(granted) < len(docs):  # full now: left out of the next round
                    self._block(worker, key, retry_at, now)
                    self.template_of[key] = limit.key
                    learnt = True
                for run_id, doc in zip(granted, docs, strict=False):
                    got = None
                    if worker.may_claim(me):
                        got = await self.storage.jobs.claim_next(
                            names,
                            me,
                            now,
                            run_id=run_id,
                            limit_key=key,
                            only=doc["_id"],
                            bound=worker.claim_bound(),
                        )
                    if got is None:  # another worker took it meanwhile, or this one gave up me
                        await self.storage.limits.release(key, run_id, started=False)
                        continue
                    claimed += worker.start_claimed(got)
            if not learnt:
                break
        return claimed

    async def _full_keys(
        self, limit: Limit, now: dt.datetime, worker: ClaimingWorker | None = None
    ) -> set[str]:
        """The keys of a per-value limit that allow no run now, from their documents (one
        indexed read: those at their concurrency, or whose rate is full past now, never every
        key's starts): the claim's candidates leave them out, so any number of full keys ahead in
        claim order never holds back another key (the rounds below only learn the keys that
        filled up since)."""
        rate = limit.rate is not None and limit.per_seconds is not None
        now_ms = int(now.timestamp() * 1000) if rate else None
        docs = await self.storage.limits.full_of_template(limit.key, limit.concurrency, now_ms)
        full = {str(doc["_id"]) for doc in docs if _full_now(doc, limit)}
        if worker is not None and now_ms is not None:  # a rate-full key: wake when it has room
            untils = [
                int(stored_number(d.get("rate_full_ms")) or 0)
                for d in docs
                if str(d["_id"]) in full and (stored_number(d.get("rate_full_ms")) or 0) > now_ms
            ]
            if untils:
                worker.wake_at(dt.datetime.fromtimestamp(min(untils) / 1000, tz=dt.UTC))
        return full

    def _blocked_values(self, now: dt.datetime) -> set[str]:
        """The per-value keys this process found full, until a time still ahead."""
        return {k for k, t in self.blocked.items() if t > now and k in self.template_of}

    def _block(
        self, worker: ClaimingWorker, key: str, retry_at: dt.datetime | None, now: dt.datetime
    ) -> None:
        self.blocked[key] = retry_at or now + dt.timedelta(seconds=worker.settings.poll_interval)
        if retry_at is not None:
            worker.wake_at(retry_at)

    async def _claim_key(
        self,
        worker: ClaimingWorker,
        me: str,
        limit: Limit,
        names: list[str],
        free: int,
        now: dt.datetime,
    ) -> int:
        due = await self.storage.jobs.count_due_upto(names, now, free)
        if not due:
            return 0
        ids = [D.new_id() for _ in range(due)]
        if not worker.may_claim(me):
            return 0
        granted, retry_at = await self._acquire(
            limit, ids, me, worker.clock.now, worker.claim_bound()
        )
        now = worker.clock.now()
        if not granted:
            self._block(worker, limit.key, retry_at, now)
            return 0
        claimed = used = 0
        for run_id in granted:
            if not worker.may_claim(me):
                break
            doc = await self.storage.jobs.claim_next(
                names, me, now, run_id=run_id, limit_key=limit.key, bound=worker.claim_bound()
            )
            if doc is None:
                break
            used += 1  # a claim not started keeps its slot until it is released with it
            claimed += worker.start_claimed(doc)
        for run_id in granted[used:]:
            await self.storage.limits.release(limit.key, run_id, started=False)
        return claimed

    async def _acquire(
        self,
        limit: Limit,
        run_ids: list[str],
        worker_id: str,
        now: Any,
        bound: float | None,
        template: str | None = None,
    ) -> tuple[list[str], dt.datetime | None]:
        """`LimitStore.acquire` within the driver's `bound`. A take that failed may have
        applied with its reply cut (a NetworkTimeout, the bound running out on the server):
        its slots would stay held under run ids no job carries until the sweep found them
        stray, `worker_timeout` later (their starts kept in a rate's window). Each is given
        back at once, unstarted (a compare-and-set on its holder: nothing if it did not
        land), within a bound of its own; the error goes on. A give-back that fails too is
        left to that sweep."""
        try:
            with driver_bound(bound):
                return await self.storage.limits.acquire(limit, run_ids, worker_id, now, template)
        except PyMongoError:
            for run_id in run_ids:
                try:
                    with driver_bound(bound):
                        await self.storage.limits.release(limit.key, run_id, started=False)
                except PyMongoError as exc:  # the outage goes on: the sweep gives it back
                    self.log.warning("limit_release_failed", limit=limit.key, error=describe(exc))
                    break
            raise

    async def reserve(
        self, limit: Limit, worker_id: str, clock: Any, poll: float, template: str | None = None
    ) -> str:
        """One slot for run_job, waiting (without spinning) until the limit allows it."""
        while True:
            run_id = D.new_id()
            granted, retry_at = await self._acquire(
                limit, [run_id], worker_id, clock.now, None, template
            )
            if granted:
                return run_id
            self.freed.clear()
            wait = poll
            if retry_at is not None:
                wait = max(0.0, min(poll, (retry_at - clock.now()).total_seconds()))
            try:
                async with asyncio.timeout(wait):
                    await self.freed.wait()
            except TimeoutError:
                pass

    async def release(
        self,
        doc: Doc,
        worker: ClaimingWorker | None = None,
        until: asyncio.Future[Any] | None = None,
        *,
        started: bool = True,
    ) -> None:
        """Give back the slot of the run that just ended (once, whoever calls); `until`: once
        its handler, still going after the run's end (a plain def given up), returns.
        `started=False`: the run never started (skipped, put back unstarted), so its start
        leaves the rate window too."""
        key, run_id = doc.get("limit_key"), doc.get("run_id")
        if not key or not run_id:
            return
        if until is not None and not until.done():
            self.held_on[str(run_id)] = asyncio.create_task(self._release_after(until, doc, worker))
            return
        try:
            released = await self.storage.limits.release(key, run_id, started=started)
        except PyMongoError as exc:  # the dead-holder sweep or reconciliation gives it back
            self.log.warning("limit_release_failed", limit=key, error=describe(exc))
            return
        if released:
            self.blocked.pop(key, None)
            self.freed.set()
            if worker is not None and (
                key in self.groups or key in self.template_of or doc.get("name") in self.limited
            ):
                worker.wake.set()

    async def _release_after(
        self, until: asyncio.Future[Any], doc: Doc, worker: ClaimingWorker | None
    ) -> None:
        try:
            await asyncio.wait({until})
        finally:
            self.held_on.pop(str(doc.get("run_id")), None)
        await self.release(doc, worker)

    async def release_strays(
        self, now: dt.datetime, cutoff: dt.datetime, live: set[str], mine: set[str], me: str
    ) -> int:
        """Slots held by dead workers, or by this one for runs it does not have (reserved, then
        the process died or a claim's reply was lost), older than `cutoff`."""
        if not self.limits:
            return 0  # a process that defines no limit holds none; those that do sweep them
        # a key known full until a time now past is as good as unknown: forget it, or every
        # per-value key this process once found full, and another process then freed, stays
        # (a new tenant each second: about 3,600 entries an hour, each claim scanning them)
        self.blocked = {k: t for k, t in self.blocked.items() if t > now}
        if any(limit.templated for limit in self.limits.values()):
            await self.storage.limits.remove_idle(int(now.timestamp() * 1000))
        released = 0
        cutoff_ms = int(cutoff.timestamp() * 1000)
        held: set[str] = set()  # keys this process holds a slot of: their release wakes it
        for doc in await self.storage.limits.holding():
            holders = doc.get("holders")  # another program's damage: no holder, or a stray
            for run_id, holder in holders.items() if isinstance(holders, Mapping) else ():
                owner = holder.get("worker_id") if isinstance(holder, Mapping) else None
                if owner == me:
                    held.add(str(doc["_id"]))
                at_ms = holder.get("at_ms") if isinstance(holder, Mapping) else None
                if (stored_number(at_ms) or 0) >= cutoff_ms:
                    continue
                # this worker's runs, and its runs ended with their handler still going
                ours = run_id in mine or run_id in self.held_on
                stray = owner not in live or (owner == me and not ours)
                if stray and await self.storage.limits.release(doc["_id"], run_id):
                    released += 1
                    self.log.warning("limit_slot_recovered", limit=doc["_id"], holder=owner)
        keep = self.blocked.keys() | held
        self.template_of = {k: t for k, t in self.template_of.items() if k in keep}
        if released:
            self.freed.set()
        return released


def value_key(limit: Limit, doc: Doc) -> str:
    """A job's key under a per-value limit, filled from its payload by the limit this worker
    has (the key recorded when it was scheduled is the same, unless it was scheduled under
    another limit: a static one a deploy made per tenant, a renamed template); else the
    templated key itself (it then shares one limit with the jobs that lack the field)."""
    try:
        return limit.key_for(doc.get("payload"))
    except ValueError:
        return limit.key


def _full_now(doc: Doc, limit: Limit) -> bool:
    """A key `full_of_template` found: at this limit's concurrency, or rate-full by the rate
    this limit has (a `rate_full_ms` written under another rate, before a deploy changed it,
    is not trusted: the claim's rounds learn whether the key has room)."""
    if limit.concurrency is not None and running(doc) >= limit.concurrency:
        return True
    return doc.get("rate") == limit.rate and doc.get("per_seconds") == limit.per_seconds
