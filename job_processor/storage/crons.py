"""The crons collection: one document per cron (its settings and next slot)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pymongo.errors import DuplicateKeyError

from .compat import IndexKeys, all_docs

Doc = dict[str, Any]

INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = []  # looked up by _id only


def cron_settings(cron: Any) -> Doc:
    return {
        "cron_string": cron.cron_string,
        "timezone": cron.timezone,
        "checkin_margin": cron.checkin_margin,
        "max_runtime_in_minutes": cron.max_runtime_in_minutes,
        "tag": cron.tag,
        "concurrency": cron.concurrency,
        "resumable": cron.resumable,
        "max_attempts": cron.attempts,
    }


#: Reads and compare-and-set writes a cron's registration tries before giving up.
REGISTER_TRIES = 10


class CronStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def register(
        self, crons: Mapping[str, Any], first_slots: Mapping[str, dt.datetime], now: dt.datetime
    ) -> dict[str, str]:
        """Upsert one document per cron; reschedule from now when its schedule changed. Never
        removes anything (see `prune`). Safe when replicas start together. Returns what happened
        to each cron ("created", "rescheduled", "kept")."""
        outcome: dict[str, str] = {}
        for name, cron in crons.items():
            outcome[name] = await self._register(name, cron, first_slots[name], now)
        return outcome

    async def _register(
        self, name: str, cron: Any, first_slot: dt.datetime, now: dt.datetime
    ) -> str:
        """Each write is a compare-and-set on what was read (the schedule, or no document),
        tried again from a fresh read when another replica wrote in between: the schedule and
        its next slot are always written together (an old replica's blind write put its
        schedule back over a new replica's next slot, and every slot until then was lost)."""
        settings = cron_settings(cron)
        mine = {"cron_string": cron.cron_string, "timezone": cron.timezone}
        for _ in range(REGISTER_TRIES):
            existing = await self.coll.find_one({"_id": name})
            if existing is None:
                fields = settings | {"next_slot": first_slot, "created_at": now, "updated_at": now}
                try:
                    res = await self.coll.update_one(
                        {"_id": name}, {"$setOnInsert": fields}, upsert=True
                    )
                except DuplicateKeyError:  # a replica starting now made it: read it
                    continue
                if res.upserted_id is not None:
                    return "created"
                continue  # made between the read and the upsert: read it
            theirs = {"cron_string": existing["cron_string"], "timezone": existing["timezone"]}
            if theirs != mine:
                update = {"$set": settings | {"next_slot": first_slot, "updated_at": now}}
                res = await self.coll.update_one({"_id": name} | theirs, update)
                if res.matched_count:
                    return "rescheduled"
            else:
                res = await self.coll.update_one({"_id": name} | mine, {"$set": settings})
                if res.matched_count:
                    return "kept"
        raise RuntimeError(  # another replica wrote between each read and write: never seen
            f"cron {name!r}: its document changed {REGISTER_TRIES} times while registering"
        )

    async def names_other_than(self, names: list[str]) -> list[str]:
        return [d["_id"] async for d in self.coll.find({"_id": {"$nin": names}}, {"_id": 1})]

    async def remove(self, names: list[str]) -> int:
        res = await self.coll.delete_many({"_id": {"$in": names}})
        return int(res.deleted_count)

    async def docs(self, names: list[str] | None = None) -> list[Doc]:
        query: Doc = {} if names is None else {"_id": {"$in": names}}
        return await all_docs(self.coll.find(query))

    async def advance(
        self,
        name: str,
        old: dt.datetime,
        new: dt.datetime,
        now: dt.datetime,
        schedule: Mapping[str, Any] | None = None,
    ) -> bool:
        """Compare-and-set: only moves a cron whose next slot is still `old`, and (`schedule`:
        the document as read) whose schedule is still the one `new` was computed from (a
        deploy that changed it meanwhile set its own next slot, which stands)."""
        query: dict[str, Any] = {"_id": name, "next_slot": old}
        for field in ("cron_string", "timezone"):
            if schedule is not None and field in schedule:
                query[field] = schedule[field]
        res = await self.coll.update_one(query, {"$set": {"next_slot": new, "updated_at": now}})
        return bool(res.modified_count)
