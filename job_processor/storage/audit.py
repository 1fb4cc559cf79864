"""The audit log: one document per operator action (who, when, what, which jobs)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from .compat import IndexKeys, all_docs

Doc = dict[str, Any]

#: Listed newest first by `_id` (`entry_id`: they grow with the action's time, to the
#: millisecond): no other index needed.
INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = []
#: Ids recorded per entry; an action on more jobs records the count and the first ones.
MAX_IDS = 1000
#: The least ObjectId: `{"$gte": it}` matches the ObjectId ids only.
_LEAST_OBJECT_ID = ObjectId(b"\0" * 12)


def entry_id(at: dt.datetime) -> ObjectId:
    """An audit entry's `_id`, ordered by the action's time to the millisecond: an ObjectId's
    4 bytes of seconds, then 2 of milliseconds, then the last 6 of a new ObjectId (3 of its
    process's random bytes, drawn again after a fork, and 3 of its counter). A plain ObjectId
    orders the actions of one second by each process's random bytes: two commands run within
    a second (each a process of its own) were listed in either order, a resume before the
    pause it followed."""
    ms = int(at.timestamp() * 1000)
    seconds, milliseconds = divmod(ms, 1000)
    return ObjectId(
        seconds.to_bytes(4, "big") + milliseconds.to_bytes(2, "big") + ObjectId().binary[6:]
    )


class AuditStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def record(
        self, entry: Doc, *, entry_id: ObjectId | None = None, retried: bool = False
    ) -> Doc:
        """Insert the entry. `entry_id` chosen by the caller and `retried`: an insert whose
        reply was lost is recognised (its `_id` is taken), never recorded twice."""
        doc = {"_id": entry_id or ObjectId(), **entry}
        ids = list(doc.get("ids") or [])
        doc["ids"] = ids[:MAX_IDS]
        doc["ids_truncated"] = len(ids) > MAX_IDS
        try:
            await self.coll.insert_one(doc)
        except DuplicateKeyError:
            if not retried:
                raise
        return doc

    def recent_cursor(self, limit: int = 50, before: ObjectId | str | None = None) -> Any:
        """The latest actions, newest first, from `before` (the `_id` index): after a text
        `_id` (another program's entry), the text ids below it."""
        query: Doc = {} if before is None else {"_id": {"$lt": before}}
        return self.coll.find(query).sort([("_id", DESCENDING)]).limit(limit)

    async def recent(self, limit: int = 50, before: ObjectId | str | None = None) -> list[Doc]:
        """`recent_cursor`'s entries; where those of `before`'s kind of `_id` run out, the
        other kind's (ObjectId or text), when the server sorts them after it: `$lt` compares
        within one BSON type, and MongoDB sorts text ids below ObjectIds, nx-27017 above."""
        docs = await all_docs(self.recent_cursor(limit, before))
        if before is None or len(docs) >= limit:
            return docs
        other = "" if isinstance(before, ObjectId) else _LEAST_OBJECT_ID  # its least value
        kind = {"_id": {"$gte": other}}
        top = await self.coll.find_one(kind, {"_id": 1}, sort=[("_id", DESCENDING)])
        if top is None:
            return docs
        mine = docs[-1]["_id"] if docs else before
        first = await self.coll.find_one(
            {"_id": {"$in": [mine, top["_id"]]}}, {"_id": 1}, sort=[("_id", DESCENDING)]
        )
        if first is None or first["_id"] == top["_id"]:  # sorted before: shown already
            return docs
        cursor = self.coll.find(kind).sort([("_id", DESCENDING)]).limit(limit - len(docs))
        return docs + await all_docs(cursor)

    async def holds(self, entry_id: str) -> bool:
        """Whether an entry has this text `_id` (another program's)."""
        return await self.coll.find_one({"_id": entry_id}, {"_id": 1}) is not None
