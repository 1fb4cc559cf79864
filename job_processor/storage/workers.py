"""The workers collection: one document per running process (its liveness)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .compat import IndexKeys, all_docs, seen_since

Doc = dict[str, Any]

INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [([("last_seen", 1)], {})]


class WorkerStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def register(self, doc: Doc) -> None:
        await self.coll.insert_one(doc)

    async def beat(self, worker_id: str, now: dt.datetime) -> bool:
        """False when this worker's document is gone: it was declared dead."""
        res = await self.coll.update_one({"_id": worker_id}, {"$set": {"last_seen": now}})
        return bool(res.matched_count)

    async def unregister(self, worker_id: str) -> None:
        await self.coll.delete_one({"_id": worker_id})

    async def all(self) -> list[Doc]:
        return await all_docs(self.coll.find({}))

    async def delete_stale(self, worker_id: str, cutoff: dt.datetime) -> bool:
        res = await self.coll.delete_one({"_id": worker_id, "last_seen": {"$lt": cutoff}})
        return bool(res.deleted_count)

    async def serving(self, job_name: str, cutoff: dt.datetime) -> list[Doc]:
        """Live workers (seen since `cutoff`) that may claim jobs named `job_name` (a worker
        document lists the names it claims)."""
        found = await all_docs(self.coll.find({"names": job_name}, {"_id": 1, "last_seen": 1}))
        return seen_since(found, "last_seen", cutoff)
