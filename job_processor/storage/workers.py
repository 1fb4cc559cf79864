"""The workers collection: one document per running process (its liveness)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..core.coverage import worker_alive
from .compat import IndexKeys, all_docs

Doc = dict[str, Any]

INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [([("last_seen", 1)], {})]


class WorkerStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def register(self, doc: Doc) -> None:
        await self.coll.insert_one(doc)

    async def beat(
        self, worker_id: str, now: dt.datetime, also: Doc | None = None
    ) -> frozenset[str] | None:
        """The heartbeat (with the fields of `also`, when they changed), and in the same round
        trip the names paused for this worker (kept on its document by pause/resume); None when
        its document is gone: it was declared dead."""
        found = await self.coll.find_one_and_update(
            {"_id": worker_id},
            {"$set": {"last_seen": now, **(also or {})}},
            projection={"paused": 1},
        )
        if found is None:
            return None
        return frozenset(str(n) for n in found.get("paused") or [])

    async def align_paused(self, worker_id: str, before: set[str], now_paused: set[str]) -> None:
        """Registration: the names paused or resumed while this worker was registering, applied
        to its document as a difference (a pause or resume made meanwhile by an operator, which
        also updates every worker document, is never undone)."""
        added, removed = sorted(now_paused - before), sorted(before - now_paused)
        if added:
            await self.coll.update_one(
                {"_id": worker_id}, {"$addToSet": {"paused": {"$each": added}}}
            )
        if removed:
            await self.coll.update_one({"_id": worker_id}, {"$pull": {"paused": {"$in": removed}}})

    async def pause_everywhere(self, name: str) -> None:
        """Every worker document gets the name (workers read it with their heartbeat)."""
        await self.coll.update_many({}, {"$addToSet": {"paused": name}})

    async def resume_everywhere(self, name: str) -> None:
        await self.coll.update_many({}, {"$pull": {"paused": name}})

    async def unregister(self, worker_id: str) -> None:
        await self.coll.delete_one({"_id": worker_id})

    async def is_live(self, worker_id: str, now: dt.datetime, default_timeout: float) -> bool:
        """Whether this worker's document exists and its last heartbeat is within its own
        worker_timeout (`default_timeout` for a document that records none)."""
        fields = {"last_seen": 1, "worker_timeout": 1}
        found = await all_docs(self.coll.find({"_id": worker_id}, fields))
        return any(worker_alive(d, now, default_timeout) for d in found)

    async def all(self) -> list[Doc]:
        return await all_docs(self.coll.find({}))

    async def heartbeats(self, hostname: str | None = None) -> list[Doc]:
        """Every worker document (`hostname`: of that host only), with only what a metrics
        scrape and a health check read (not the names it claims nor the digests of its
        definitions: ~175 KB a worker of 2,000 names)."""
        fields = dict.fromkeys(
            ("last_seen", "worker_timeout", "crashed", "hostname", "instance_id", "pid"), 1
        ) | {"stuck_threads": 1}
        query: Doc = {} if hostname is None else {"hostname": hostname}
        return await all_docs(self.coll.find(query, fields))

    async def liveness(self, definitions: bool = False) -> list[Doc]:
        """Every worker document, with only what the sweep reads (its own `worker_timeout`,
        by which it is judged; not the names it claims nor the digests of its definitions,
        unless `definitions`: then also `names`, `definitions`, `zone_rules` and `started_at`)."""
        fields = {"last_seen": 1, "hostname": 1, "instance_id": 1, "worker_timeout": 1}
        if definitions:
            fields |= {"names": 1, "definitions": 1, "zone_rules": 1, "started_at": 1}
        return await all_docs(self.coll.find({}, fields))

    async def delete_stale(self, worker_id: str, cutoff: dt.datetime) -> bool:
        res = await self.coll.delete_one({"_id": worker_id, "last_seen": {"$lt": cutoff}})
        return bool(res.deleted_count)

    async def delete_unreadable(self, worker_id: Any, last_seen: Any) -> bool:
        """Delete a worker document whose `last_seen` is not a date, if it still holds that
        value (None: missing or null)."""
        res = await self.coll.delete_one({"_id": worker_id, "last_seen": last_seen})
        return bool(res.deleted_count)

    async def serving(self, job_name: str, now: dt.datetime, default_timeout: float) -> list[Doc]:
        """Live workers (each by its own worker_timeout) that may claim jobs named `job_name`
        (a worker document lists the names it claims)."""
        fields = {"_id": 1, "last_seen": 1, "worker_timeout": 1}
        found = await all_docs(self.coll.find({"names": job_name}, fields))
        return [d for d in found if worker_alive(d, now, default_timeout)]
