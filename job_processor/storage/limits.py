"""The limits collection: one document per cluster-wide limit key (see job_processor.limits)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from pymongo.errors import DuplicateKeyError, WriteError

from ..core import limits as L
from ..core.definitions import Limit
from .compat import IndexKeys, all_docs, decode_opt

Doc = dict[str, Any]

INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [
    # looked up by _id; a per-value limit's keys (one document per active tenant) by template:
    # the full ones, read at each claim of that limit (`of_template`)
    ([("template", 1), ("running", 1)], {"sparse": True}),
    # and those whose rate is full, when the limit has one (`rate_full_ms`)
    ([("template", 1), ("rate_full_ms", 1)], {"sparse": True}),
    # the keys whose slots are held: each sweep of a worker with limits looks for stray holders
    ([("running", 1)], {}),
]


class LimitStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def get(self, key: str) -> Doc | None:
        return decode_opt(await self.coll.find_one({"_id": key}))

    async def all(self) -> list[Doc]:
        return await all_docs(self.coll.find({}))

    def holding_cursor(self) -> Any:
        """The keys with slots held, with their holders (the {running} index: a per-value
        limit's idle keys are not read). A slot's holder and `running` change in one write.
        A `running` another program wrote as no number (read as its holders' count) is
        asked for too: `$gt: 0` matches no text, document or null on MongoDB (one `$type` per
        branch, and `$in` for null: what nx-27017 answers right)."""
        damaged = [{"running": {"$type": t}} for t in ("string", "object", "array", "bool")]
        query = {"$or": [{"running": {"$gt": 0}}, {"running": {"$in": [None]}}, *damaged]}
        return self.coll.find(query, {"holders": 1})

    async def holding(self) -> list[Doc]:
        return await all_docs(self.holding_cursor())

    async def full_of_template(
        self, template: str, concurrency: int | None, now_ms: int | None
    ) -> list[Doc]:
        """The per-value limits filled from `template` that are full: `concurrency` runs
        hold them, or (`now_ms`: the limit has a rate) their rate has no room before a later
        time. Their running count, `rate_full_ms` and the rate it was computed with only: never
        every key's starts."""
        if concurrency is None and now_ms is None:
            return []
        return await all_docs(self.full_of_template_cursor(template, concurrency, now_ms))

    def full_of_template_cursor(
        self, template: str, concurrency: int | None, now_ms: int | None
    ) -> Any:
        branches: list[Doc] = []
        if concurrency is not None:
            branches.append({"template": template, "running": {"$gte": concurrency}})
        if now_ms is not None:
            branches.append({"template": template, "rate_full_ms": {"$gt": now_ms}})
        query: Doc = branches[0] if len(branches) == 1 else {"$or": branches}
        return self.coll.find(query, {"running": 1, "rate_full_ms": 1, "rate": 1, "per_seconds": 1})

    async def rooms_of(self, keys: list[str]) -> list[Doc]:
        """The documents of these keys, as much as `plan` needs of them to tell how many runs
        each has room for now (the claim's share of the best due jobs under several limits):
        their running count, holders and starts (at most `rate` of them)."""
        fields = {"running": 1, "holders": 1, "starts": 1}
        return await all_docs(self.coll.find({"_id": {"$in": keys}}, fields))

    async def acquire(
        self,
        limit: Limit,
        run_ids: list[str],
        worker_id: str,
        now: dt.datetime | Callable[[], dt.datetime],
        template: str | None = None,
    ) -> tuple[list[str], dt.datetime | None]:
        """Take up to len(run_ids) slots, one per run id. Returns the run ids granted and, when
        the rate allows none, when it will allow one. `now` may be a clock's `now` function:
        the starts are then stamped when the document is read, just before the write."""
        for _ in range(10):
            doc = await self.get(limit.key)
            at = now() if callable(now) else now
            if doc is None:  # a new key: the insert takes the slots (a duplicate: read again)
                grant = L.plan(L.EMPTY, limit, len(run_ids), at)
                ids = run_ids[: grant.slots]
                if not ids:
                    return [], grant.retry_at
                with contextlib.suppress(DuplicateKeyError):
                    await self.coll.insert_one(
                        L.created(limit.key, limit, ids, worker_id, at, template)
                    )
                    return ids, None
                continue
            grant = L.plan(doc, limit, len(run_ids), at)
            if grant.slots == 0:
                return [], grant.retry_at
            ids = run_ids[: grant.slots]
            # the rev read, as read: a missing one (another program's damage) is None, which
            # matches a missing field (0 would match nothing, and no take would ever succeed)
            res = await self.coll.update_one(
                {"_id": limit.key, "rev": {"$eq": doc.get("rev")}},
                L.taken(doc, limit, ids, worker_id, at, template),
            )
            if res.modified_count:
                return ids, None
        return [], None  # heavy contention: the caller tries again later

    async def describe(self, limits: Iterable[Limit]) -> None:
        """The capacity a static limit's document shows (status pages, metrics), as defined
        now: written at each worker's start (a deploy that lowered it showed the old one until
        a slot was taken). Slots are planned from the worker's own definition, never these."""
        for limit in limits:
            if not limit.templated:
                fields: dict[str, Any] = {"concurrency": limit.concurrency, "rate": limit.rate}
                fields["per_seconds"] = limit.per_seconds
                # upserted: a limit no job has used yet is shown too (status, metrics)
                fresh = {"rev": int(dt.datetime.now(dt.UTC).timestamp() * 1000), "running": 0}
                with contextlib.suppress(DuplicateKeyError):  # an acquire created it meanwhile
                    await self.coll.update_one(
                        {"_id": limit.key},
                        {"$set": fields, "$setOnInsert": fresh | {"holders": {}, "starts": {}}},
                        upsert=True,
                    )

    async def remove_idle(self, now_ms: int) -> int:
        """Per-value limits nobody uses any more: no run, no start in their window. One
        delete per document, conditioned on that (an acquire meanwhile recreates it)."""
        res = await self.coll.delete_many(
            {
                "template": {"$exists": True},
                "running": {"$lte": 0},
                "idle_after_ms": {"$lt": now_ms},
            }
        )
        return int(res.deleted_count)

    async def release(self, key: str, run_id: str, *, started: bool = True) -> bool:
        """Give a slot back, once: only if its holder is still recorded. A reservation that was
        not used (`started=False`) also leaves the rate window."""
        unset = {f"holders.{run_id}": ""}
        update: Doc = {"$inc": {"running": -1, "rev": 1}, "$unset": unset}
        if not started:  # a start less: the rate may have room again (learnt at the next take)
            unset[f"starts.{run_id}"] = ""
            update["$set"] = {"rate_full_ms": 0}
        held = {"_id": key, f"holders.{run_id}": {"$exists": True}}
        try:
            res = await self.coll.update_one(held, update)
        except WriteError:  # another program's damage: a `rev` or `running` that is no number
            doc = await self.get(key)
            if doc is None:
                return False
            fixed = update.get("$set", {}) | {
                "rev": int(L.stored_number(doc.get("rev")) or 0) + 1,
                "running": max(L.running(doc) - 1, 0),
            }
            # a compare-and-set on the damaged rev read: still once however many try
            res = await self.coll.update_one(
                held | {"rev": {"$eq": doc.get("rev")}}, {"$set": fixed, "$unset": unset}
            )
        return bool(res.modified_count)
