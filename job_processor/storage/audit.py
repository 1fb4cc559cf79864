"""The audit log: one document per operator action (who, when, what, which jobs)."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from .compat import IndexKeys, all_docs
from .kinds import is_number, through_kinds

Doc = dict[str, Any]

#: Listed newest first by `_id` (`entry_id`: they grow with the action's time, to the
#: millisecond): no other index needed.
INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = []
#: Ids recorded per entry; an action on more jobs records the count and the first ones.
MAX_IDS = 1000
#: The kinds of `_id` an audit page goes through, in this order, each greatest first: the
#: entries' own ObjectIds, then the text ids and the numbers other programs (or older versions)
#: wrote. Each as its least value: `{"$gte": it}` matches that kind only, as `{"$lt": id}`
#: compares within one BSON type (MongoDB, mongomock and nx-27017 alike); the servers sort the
#: kinds against each other differently (MongoDB: numbers, text, ObjectIds; nx-27017: numbers
#: among text, as their digits, and text above ObjectIds), so no page relies on that order.
_KINDS: tuple[Any, ...] = (ObjectId(b"\0" * 12), "", -math.inf)
#: A number as `str()` writes it (`AuditEntry.id` of a numeric `_id`).
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


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

    def recent_cursor(self, limit: int = 50, before: Any = None) -> Any:
        """The latest entries of `before`'s kind of `_id` (ObjectId, text or number; ObjectId
        for None) below it, newest first, on the `_id` index: a page's first read."""
        kind = _kind(before)
        bound = {"$gte": _KINDS[kind]} if before is None else {"$lt": before}
        return self.coll.find({"_id": bound}).sort([("_id", DESCENDING)]).limit(limit)

    async def recent(self, limit: int = 50, before: Any = None) -> list[Doc]:
        """The latest actions, newest first, from `before` (a stored `_id`): `recent_cursor`'s
        entries, then, where those of its kind run out, each later kind's in `_KINDS` order
        (one query per kind reached). Paged through from None, every ObjectId, text and numeric
        id comes once, in the same order on every server."""
        start = _kind(before)

        async def read(kind: int, wanted: int) -> tuple[list[Doc], bool]:
            if kind == start:
                return await all_docs(self.recent_cursor(wanted, before)), False
            cursor = (
                self.coll.find({"_id": {"$gte": _KINDS[kind]}})
                .sort([("_id", DESCENDING)])
                .limit(wanted)
            )
            return await all_docs(cursor), False

        return (await through_kinds(read, start, len(_KINDS), limit))[0]

    async def holds_object_id(self, entry_id: ObjectId) -> bool:
        """Whether an entry has this ObjectId as `_id` (as stored: nx-27017 also matches an
        ObjectId's text kept as text)."""
        doc = await self.coll.find_one({"_id": entry_id}, {"_id": 1})
        return doc is not None and isinstance(doc["_id"], ObjectId)

    async def stored_id(self, text: str) -> Any:
        """The `_id` of the entry another program wrote that `text` names (an `AuditEntry.id`):
        the number it spells, else that text; None when no entry has it. As stored: nx-27017
        matches a number's id as its text too, and an int's never as a float's."""
        number = _number(text)
        if number is not None:
            doc = await self.coll.find_one({"_id": number}, {"_id": 1})
            if doc is not None:
                return doc["_id"]
        doc = await self.coll.find_one({"_id": text}, {"_id": 1})
        return None if doc is None else doc["_id"]


def _kind(entry_id: Any) -> int:
    """Where an `_id` is in `_KINDS` (None: the first)."""
    if isinstance(entry_id, str):
        return 1
    if is_number(entry_id):
        return 2  # a Decimal128 too: `$lt` compares it with every number (MongoDB)
    return 0


def _number(text: str) -> int | float | None:
    """The number `text` spells as `str()` writes one; None for none, or an int past BSON's
    int64 (no stored id is that int; the driver cannot send it)."""
    if not _NUMBER.fullmatch(text):
        return None
    if any(c in text for c in ".eE"):
        return float(text)
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None
