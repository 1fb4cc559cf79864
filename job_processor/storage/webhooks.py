"""The webhook endpoints collection (`<prefix>webhooks`).

`state` is "enabled" or "disabled" (a string: nx-27017 stores a `$set` of True as 1). `events`
is a list of event names, or ["*"] for every event. Secrets are never stored here: only the
`secret_ref` naming one in the processes' secrets configuration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument

from .compat import IndexKeys, all_docs, decode_opt

Doc = dict[str, Any]
AFTER = ReturnDocument.AFTER
#: Delivery ids kept on an endpoint so that each failure is counted once (`failed_delivery`).
FAILURES_NOTED = 20

INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [
    # emit: the enabled endpoints listening to an event (multikey on `events`)
    ([("events", 1), ("state", 1)], {}),
    # the disabled endpoints (every overview and status), and listings in creation order
    ([("state", 1)], {}),
    ([("created_at", 1), ("_id", 1)], {}),
]


class WebhookStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def add(self, doc: Doc) -> Doc:
        await self.coll.insert_one(doc)
        return doc

    async def get(self, endpoint_id: ObjectId) -> Doc | None:
        return decode_opt(await self.coll.find_one({"_id": endpoint_id}))

    def all_cursor(self) -> Any:
        return self.coll.find({}).sort([("created_at", 1), ("_id", 1)])

    async def all(self) -> list[Doc]:
        return await all_docs(self.all_cursor())

    def matching_cursor(self, event: str) -> Any:
        return self.coll.find({"events": {"$in": [event, "*"]}, "state": "enabled"})

    async def matching(self, event: str) -> list[Doc]:
        """Enabled endpoints that listen to `event` (by name, or "*")."""
        return await all_docs(self.matching_cursor(event))

    async def update(self, endpoint_id: ObjectId, fields: Doc) -> Doc | None:
        found = await self.coll.find_one_and_update(
            {"_id": endpoint_id}, {"$set": fields}, return_document=AFTER
        )
        return decode_opt(found)

    async def disable(
        self, endpoint_id: ObjectId, reason: str, now: dt.datetime, by: str | None = None
    ) -> Doc | None:
        """enabled -> disabled (compare-and-set: None when it was not enabled). With `by` (a
        delivery's id) the write is idempotent: sent again after a lost reply, it matches
        its own earlier write and returns the endpoint again."""
        where: Doc = {"_id": endpoint_id, "state": "enabled"}
        if by is not None:
            # `_id` in each branch: nx-27017 applies a key beside a top-level `$or` to one
            # branch only (see the test server's notes)
            where = {
                "$or": [
                    {"_id": endpoint_id, "state": "enabled"},
                    {"_id": endpoint_id, "disabled_by": by},
                ]
            }
        fields = {"disabled_reason": reason, "disabled_at": now, "updated_at": now}
        update: Doc = {"$set": {"state": "disabled", "disabled_by": by} | fields}
        found = await self.coll.find_one_and_update(where, update, return_document=AFTER)
        return decode_opt(found)

    async def enable(self, endpoint_id: ObjectId, now: dt.datetime) -> Doc | None:
        """Enabled again, its count of consecutive failures reset."""
        found = await self.coll.find_one_and_update(
            {"_id": endpoint_id},
            {
                "$set": {
                    "state": "enabled",
                    "disabled_reason": None,
                    "disabled_at": None,
                    "consecutive_failures": 0,
                    "disabled_by": None,
                    "updated_at": now,
                }
            },
            return_document=AFTER,
        )
        return decode_opt(found)

    async def remove(self, endpoint_id: ObjectId) -> bool:
        res = await self.coll.delete_one({"_id": endpoint_id})
        return bool(res.deleted_count)

    async def failed_delivery(
        self, endpoint_id: ObjectId, now: dt.datetime, delivery: str | None = None
    ) -> int:
        """One more delivery failed for good: returns the consecutive failures now counted.
        With `delivery` (its id) it is counted once, however often the write is sent again
        after a lost reply (the last `FAILURES_NOTED` ids are kept on the endpoint)."""
        where: Doc = {"_id": endpoint_id}
        update: Doc = {"$inc": {"consecutive_failures": 1}, "$set": {"last_failure_at": now}}
        if delivery is not None:
            where["failed_deliveries"] = {"$nin": [delivery]}
            where["disabled_by"] = {"$nin": [delivery]}  # a run that disabled it (a 410): done
            update["$push"] = {
                "failed_deliveries": {"$each": [delivery], "$slice": -FAILURES_NOTED}
            }
        found = await self.coll.find_one_and_update(where, update, return_document=AFTER)
        if found is None and delivery is not None:  # counted already: by an earlier send
            found = await self.coll.find_one({"_id": endpoint_id}, {"consecutive_failures": 1})
        return int((found or {}).get("consecutive_failures") or 0)

    async def not_counted(self, endpoint_id: ObjectId, delivery: str) -> None:
        """A run that ended without a count (a 410, refused as disabled): noted, so that its
        reconciliation by the recovery sweep never counts it (`failed_delivery`)."""
        await self.coll.update_one(
            {"_id": endpoint_id},  # noted twice (sent again after a lost reply): harmless
            {"$push": {"failed_deliveries": {"$each": [delivery], "$slice": -FAILURES_NOTED}}},
        )

    async def delivered(self, endpoint_id: ObjectId) -> None:
        """A delivery succeeded: the run of consecutive failures is over."""
        await self.coll.update_one(
            {"_id": endpoint_id, "consecutive_failures": {"$gt": 0}},
            {"$set": {"consecutive_failures": 0}},
        )

    def disabled_cursor(self) -> Any:
        return self.coll.find({"state": "disabled"})

    async def disabled(self) -> list[Doc]:
        return await all_docs(self.disabled_cursor())
