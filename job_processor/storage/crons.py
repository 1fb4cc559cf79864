"""The crons collection: one document per cron (its settings and next slot)."""

from __future__ import annotations

import contextlib
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
            settings = cron_settings(cron)
            existing = await self.coll.find_one({"_id": name})
            if existing is None:
                with contextlib.suppress(DuplicateKeyError):  # a replica starting now made it
                    await self.coll.update_one(
                        {"_id": name},
                        {
                            "$setOnInsert": settings
                            | {"next_slot": first_slots[name], "created_at": now, "updated_at": now}
                        },
                        upsert=True,
                    )
                outcome[name] = "created"
            elif (existing["cron_string"], existing["timezone"]) != (
                cron.cron_string,
                cron.timezone,
            ):
                await self.coll.update_one(
                    {
                        "_id": name,
                        "cron_string": existing["cron_string"],
                        "timezone": existing["timezone"],
                    },
                    {"$set": settings | {"next_slot": first_slots[name], "updated_at": now}},
                )
                outcome[name] = "rescheduled"
            else:
                await self.coll.update_one({"_id": name}, {"$set": settings})
                outcome[name] = "kept"
        return outcome

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
