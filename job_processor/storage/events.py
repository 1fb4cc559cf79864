"""The events collection, the subscriber registry, and the delivery verbs on the jobs collection.

- `EventStore` (`<prefix>events`): one document per emitted event. `fanout_owed_at` exists only
  while the event's fan-out (creating its delivery jobs) is owed: a sparse index finds the owed
  ones, `$unset` in the write that records the fan-out as done.
- `SubscriberStore` (`<prefix>subscribers`): one document per (event, subscriber), upserted by
  every process that declares it, so a publisher that defines no subscriber knows whom to
  deliver to.
- `DeliveryStore`: delivery jobs are ordinary jobs in the jobs collection, with two more fields:
  `event_id` (index: an event's deliveries) and `delivery_key` (unique, sparse, never unset: one
  delivery per (event, target, replay)). Documents are built by `event_documents`.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..core.clock import as_utc
from .compat import IndexKeys, aggregate, all_docs, decode, decode_opt
from .kinds import is_number

Doc = dict[str, Any]

#: Listing order: newest first.
EVENT_SORT = [("emitted_at", DESCENDING), ("_id", DESCENDING)]
#: Oldest first: the same index, read backwards (a window's earliest events, for replays).
EVENT_SORT_OLDEST = [("emitted_at", ASCENDING), ("_id", ASCENDING)]
#: An event's deliveries, in creation order.
DELIVERY_SORT = [("created_at", ASCENDING), ("_id", ASCENDING)]
DUPLICATE_KEY = 11000

EVENT_INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [
    # emit(key=...): one event per (name, key) while the event is kept (keep_events)
    ([("dedup_key", 1)], {"unique": True, "sparse": True}),
    # list_events(name=..., since/until) and list_events() newest first
    ([("name", 1), ("emitted_at", -1), ("_id", -1)], {}),
    ([("emitted_at", -1), ("_id", -1)], {}),
    # the recovery sweep: fan-outs still owed (the field exists only while owed)
    ([("fanout_owed_at", 1)], {"sparse": True}),
    # retention (keep_events): a TTL on the time set at emit
    ([("expires_at", 1)], {"expireAfterSeconds": 0}),
    # status pages: events emitted with no target (the field exists only then)
    ([("no_targets", 1), ("emitted_at", -1)], {"sparse": True}),
]

SUBSCRIBER_INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [
    ([("event", 1), ("position", 1)], {}),
]

#: Indexes on the jobs collection for deliveries (created with the jobs collection's own).
DELIVERY_INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = [
    ([("delivery_key", 1)], {"unique": True, "sparse": True}),
    # an event's deliveries in creation order (not sparse: a sparse compound index would still
    # hold every job, since each has `created_at`)
    ([("event_id", 1), ("created_at", 1), ("_id", 1)], {}),
]


#: The kinds of `emitted_at` an events listing pages through, in this order (`kinds`): the
#: dates emit writes, newest first; the text and the numbers another program wrote, each
#: greatest first (ties by `_id` desc, as for dates); then none or null, by `_id` desc (an
#: `emitted_at` of another type, a boolean, a document..., is not listed: no index bounds it).
#: Each is read apart, bounded on the server to its kind (`$lt` compares within one BSON type;
#: the servers order types differently).
DATED, TEXT, NUMBER, OTHER = range(4)
EMITTED_KINDS = ("date", "text", "number", "other")
#: The least date a listing reads (a bound on the index brackets the dates).
_DATE_MIN = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
#: Each kind's condition: `$type` for text and numbers (nx-27017 compares a range with values of
#: other types), a range for dates (nx-27017 matches no `$type: "date"`).
_KIND_FILTERS: dict[int, Doc] = {
    DATED: {"emitted_at": {"$gte": _DATE_MIN}},
    TEXT: {"emitted_at": {"$type": "string"}},
    NUMBER: {"emitted_at": {"$type": "number"}},
}
#: `emitted_at` none or null. Test-server workaround: nx-27017's `{field: null}` misses a field
#: that is not there; `$in: [null]` matches both there, and MongoDB reads it as the equality.
NONE_OR_NULL: Doc = {"$in": [None]}
#: The kinds of `_id` the events of the kind "other" are paged through, in this order, each
#: greatest first, each as its least value (`{"$gte": it}` matches that kind only), as the
#: audit log pages its ids: `{"$lt": id}` compares within one BSON type, so one read below an
#: ObjectId never reaches the text or numeric ids another program gave its events. An id of
#: any other type (a document, a boolean) is not listed in that kind.
_ID_KINDS: tuple[Any, ...] = (ObjectId(b"\0" * 12), "", -math.inf)


def id_kind(value: Any) -> int | None:
    """Where an `_id` is in `_ID_KINDS` (None: none of them)."""
    if isinstance(value, ObjectId):
        return 0
    if isinstance(value, str):
        return 1
    return 2 if is_number(value) else None


def emitted_kind(value: Any) -> int:
    """Which of `EMITTED_KINDS` a stored `emitted_at` is."""
    if isinstance(value, dt.datetime):
        return DATED
    if isinstance(value, str):
        return TEXT
    return NUMBER if is_number(value) else OTHER


class EventStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    @property
    def name(self) -> str:
        return str(self.coll.name)

    async def insert(
        self, doc: Doc, *, retried: bool = False, now: dt.datetime | None = None
    ) -> Doc:
        """Store a new event. With a `dedup_key` already taken, the event holding it is
        returned instead (compare `_id`): the unique index decides, race-free; an event past
        its `expires_at` (at `now`) holds it no more: removed, the key is free again (the TTL
        monitor removes it up to a minute later; nx-27017 at the next read). `retried`: an
        earlier attempt's reply was lost; a duplicate `_id` means it landed (returned as
        stored)."""
        for _ in range(5):
            try:
                await self.coll.insert_one(doc)
                return doc
            except DuplicateKeyError:
                landed = await self.coll.find_one({"_id": doc["_id"]}) if retried else None
                if landed is not None:
                    return decode(landed)
                if "dedup_key" not in doc:
                    raise
                same = await self.coll.find_one({"dedup_key": doc["dedup_key"]})
                if same is None:  # expired and removed since the insert: free again
                    continue
                held = decode(same)
                expires = held.get("expires_at")
                if now is None or not isinstance(expires, dt.datetime) or expires > now:
                    return held
                await self.coll.delete_one({"_id": held["_id"], "expires_at": same["expires_at"]})
        raise RuntimeError(f"could not store event {doc['_id']}: its key keeps being taken")

    async def fanout_done(self, event_id: ObjectId, now: dt.datetime, was: Any = "owed") -> bool:
        """Record an event's fan-out as done, if its `fanout` is still `was` ("owed"; or
        what another program left beside an owed time)."""
        res = await self.coll.update_one(
            {"_id": event_id, "fanout": was},
            {"$set": {"fanout": "done", "fanout_done_at": now}, "$unset": {"fanout_owed_at": ""}},
        )
        return bool(res.modified_count)

    def owed_cursor(self, cutoff: dt.datetime, limit: int = 200, skip: int = 0) -> Any:
        owed = {"fanout_owed_at": {"$lt": cutoff}}
        # ties come in the index's (record) order, the same from one call to the next
        return self.coll.find(owed).sort("fanout_owed_at", 1).skip(skip).limit(limit)

    async def owed(self, cutoff: dt.datetime, limit: int = 200, skip: int = 0) -> list[Doc]:
        """Events whose fan-out was recorded as owed before `cutoff` and not completed, the
        oldest first, past the first `skip` (those a sweep left owed: damaged)."""
        return await all_docs(self.owed_cursor(cutoff, limit, skip))

    async def get(self, event_id: ObjectId) -> Doc | None:
        return decode_opt(await self.coll.find_one({"_id": event_id}))

    async def existing(self, event_ids: list[ObjectId]) -> set[ObjectId]:
        """Which of these events still exist (one query, ids only)."""
        found = await all_docs(self.coll.find({"_id": {"$in": event_ids}}, {"_id": 1}))
        return {d["_id"] for d in found}

    async def payloads(self, event_ids: list[ObjectId]) -> dict[ObjectId, Any]:
        """The payloads of these events, by id (one query)."""
        found = await all_docs(self.coll.find({"_id": {"$in": event_ids}}, {"payload": 1}))
        return {d["_id"]: d.get("payload") for d in found}

    def find_cursor(
        self,
        name: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> Any:
        query: Doc = {}
        if name is not None:
            query["name"] = name
        if since is not None or until is not None:
            window: Doc = {}
            if since is not None:
                window["$gte"] = since
            if until is not None:
                window["$lt"] = until
            query["emitted_at"] = window
        sort = EVENT_SORT_OLDEST if oldest_first else EVENT_SORT
        return self.coll.find(query).sort(sort).limit(limit)

    async def find(
        self,
        name: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
        oldest_first: bool = False,
    ) -> list[Doc]:
        """Newest first (oldest first with `oldest_first`: the `limit` earliest); `since`
        inclusive, `until` exclusive."""
        return await all_docs(self.find_cursor(name, since, until, limit, oldest_first))

    def kind_cursor(
        self,
        kind: int,
        name: str | None,
        window: tuple[dt.datetime | None, dt.datetime | None] = (None, None),
        upto: Any = None,
        ids: int = 0,
    ) -> Any:
        """The events of one kind of `emitted_at` (`EMITTED_KINDS`), in listing order, on the
        listing indexes: dates in `window` (since inclusive, until exclusive) and below `upto`
        (exclusive); text or numbers up to `upto` (inclusive: the caller drops the ties
        already shown); none or null by `_id`, those of `upto`'s kind of id below it (an
        `_id`), or with no `upto` those of the kind `ids` (`_ID_KINDS`). A superset on some
        servers (nx-27017 compares dates with text that looks like one; MongoDB and mongomock
        match a list by its elements): `kind_page` keeps only the kind's own."""
        query: Doc = {} if name is None else {"name": name}
        if kind == OTHER:
            bound = {"$gte": _ID_KINDS[ids]} if upto is None else {"$lt": upto}
            # none or null only: a point on the listing indexes, then their `_id` (the other
            # types' `$nor` walked the whole `_id` index on MongoDB, at every short page)
            only = query | {"emitted_at": NONE_OR_NULL, "_id": bound}
            return self.coll.find(only).sort("_id", DESCENDING)
        when = dict(_KIND_FILTERS[kind]["emitted_at"])
        if kind == DATED:
            since, until = window
            when["$gte"] = max(since, _DATE_MIN) if since is not None else _DATE_MIN
            ends = [t for t in (until, upto) if t is not None]
            if ends:
                when["$lt"] = min(ends)
        elif upto is not None:
            when["$lte"] = upto
        return self.coll.find({**query, "emitted_at": when}).sort(EVENT_SORT)

    async def kind_page(
        self,
        kind: int,
        name: str | None,
        window: tuple[dt.datetime | None, dt.datetime | None],
        upto: Any,
        limit: int,
    ) -> tuple[list[tuple[Any, Doc]], int]:
        """`kind_cursor`'s first `limit` events, those of the kind only, each with its
        `emitted_at` as stored (before `decode`, which reads a date's text as a date); and how
        many were read (fewer than `limit`: the kind has no more). The kind "other" reads its
        kinds of `_id` in turn, from `upto`'s (one read per kind of id reached)."""
        read = 0
        out: list[tuple[Any, Doc]] = []
        first = (id_kind(upto) or 0) if kind == OTHER and upto is not None else 0
        for ids in range(first, len(_ID_KINDS)) if kind == OTHER else (0,):
            bound = upto if ids == first else None
            cursor = self.kind_cursor(kind, name, window, bound, ids).limit(limit - read)
            async for doc in cursor:
                read += 1
                value = doc.get("emitted_at")
                # none or null only: `$in: [null]` matches a list holding a null too
                other = value is None and id_kind(doc["_id"]) == ids
                if emitted_kind(value) == kind and (kind != OTHER or other):
                    out.append((value, decode(doc)))
            if read >= limit:
                break
        return out, read

    def untargeted_cursor(self, since: dt.datetime, limit: int = 1000) -> Any:
        query = {"no_targets": True, "emitted_at": {"$gte": since}}
        return (
            self.coll.find(query, {"name": 1, "emitted_at": 1})
            .sort([("no_targets", 1), ("emitted_at", -1)])
            .limit(limit)
        )

    async def untargeted(self, since: dt.datetime, limit: int = 1000) -> dict[str, int]:
        """Names of the events emitted since `since` that no subscriber or endpoint listened
        to, with how many (at most `limit` events read, newest first)."""
        counts: dict[str, int] = {}
        for doc in await all_docs(self.untargeted_cursor(since, limit)):
            if doc.get("emitted_at") is not None and doc["emitted_at"] >= since:
                counts[str(doc["name"])] = counts.get(str(doc["name"]), 0) + 1
        return counts

    async def replayed(self, doc: Doc, now: dt.datetime) -> None:
        """A replay delivered it (`doc`, as read): it is no longer an event nobody listened to,
        and it is kept as long again from now as it was from its emit (`keep_events` then), so
        that the replay's deliveries, retries included, still find it."""
        fields: Doc = {"last_replayed_at": now} | _kept_again(doc, now)
        await self.coll.update_one(
            {"_id": doc["_id"]},
            {"$inc": {"replays": 1}, "$set": fields, "$unset": {"no_targets": ""}},
        )

    async def hold_for_retry(self, event_id: Any, now: dt.datetime) -> bool:
        """A delivery of this event is retried by hand: the event is kept as long again from
        now as from its emit, as for a replay (the retry's attempts read it). False when it is
        gone (retention): nothing is left to deliver."""
        if not isinstance(event_id, ObjectId):
            if not (isinstance(event_id, str) and ObjectId.is_valid(event_id)):
                return True  # not an event's delivery
            event_id = ObjectId(event_id)
        doc = await self.get(event_id)
        if doc is None:
            return False
        kept = _kept_again(doc, now)
        if kept:
            await self.coll.update_one({"_id": event_id}, {"$set": kept})
        return True


def _kept_again(doc: Doc, now: dt.datetime) -> Doc:
    """`expires_at` as long from `now` as the event was kept from its emit, when later."""
    emitted, expires = doc.get("emitted_at"), doc.get("expires_at")
    if isinstance(emitted, dt.datetime) and isinstance(expires, dt.datetime):
        kept = as_utc(now) + (as_utc(expires) - as_utc(emitted))
        if kept > as_utc(expires):
            return {"expires_at": kept}
    return {}


class SubscriberStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def register(self, rows: list[Doc]) -> None:
        """Upsert each (event, subscriber) declared by this process (never removes any)."""
        for row in rows:
            await self.coll.update_one({"_id": row["_id"]}, {"$set": row}, upsert=True)

    def for_event_cursor(self, event: str) -> Any:
        return self.coll.find({"event": event}).sort([("position", 1)])

    async def for_event(self, event: str) -> list[Doc]:
        """The subscribers of an event, in declaration order (read by every emit)."""
        return await all_docs(self.for_event_cursor(event))

    async def all(self) -> list[Doc]:
        return await all_docs(self.coll.find({}).sort([("event", 1), ("position", 1)]))

    async def remove(self, ids: list[str]) -> int:
        res = await self.coll.delete_many({"_id": {"$in": ids}})
        return int(res.deleted_count)


class DeliveryStore:
    """Delivery verbs on the jobs collection (claims, runs and final writes are the JobStore's)."""

    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def create(self, docs: list[Doc]) -> list[Doc]:
        """Insert delivery jobs in one round trip; those whose `delivery_key` exists already
        (created by another process completing the same fan-out) are read back instead.
        Returns the delivery of each key, as stored."""
        if not docs:
            return []
        taken: list[str] = []
        try:
            await self.coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            taken = [docs[e["index"]]["delivery_key"] for e in errors]
        if not taken:
            return docs
        existing = {d["delivery_key"]: d for d in await self.by_keys(taken)}
        return [existing.get(d["delivery_key"], d) for d in docs]

    def by_keys_cursor(self, keys: list[str]) -> Any:
        return self.coll.find({"delivery_key": {"$in": keys}})

    async def by_keys(self, keys: list[str]) -> list[Doc]:
        return await all_docs(self.by_keys_cursor(keys))

    def for_event_cursor(self, event_id: str) -> Any:
        return self.coll.find({"event_id": event_id}).sort(DELIVERY_SORT)

    async def for_event(self, event_id: str, limit: int = 0) -> list[Doc]:
        """Every delivery of an event (replays included), in creation order; the first `limit`
        of them when it is not 0."""
        return await all_docs(self.for_event_cursor(event_id).limit(limit))

    async def own_for_event(self, event_id: str, targets: int) -> list[Doc]:
        """The deliveries of the event's own fan-out (one per target at most), replays aside."""
        return await all_docs(self.own_for_event_cursor(event_id, targets))

    def own_for_event_cursor(self, event_id: str, targets: int) -> Any:
        where = {"event_id": event_id, "payload.replay_id": None}  # null or missing
        return self.coll.find(where).sort(DELIVERY_SORT).limit(max(targets, 1))

    async def counts_for_event(self, event_id: str) -> dict[str, int]:
        """How many deliveries of the event are in each status (replays included)."""
        rows = await aggregate(
            self.coll,
            [{"$match": {"event_id": event_id}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}],
        )
        return {str(r["_id"]): int(r["n"]) for r in rows}

    async def get_many(self, ids: list[ObjectId]) -> list[Doc]:
        return await all_docs(self.coll.find({"_id": {"$in": ids}}))

    async def delete_chain_stopped(self, key: str) -> bool:
        """The placeholder of a serial subscriber skipped because the chain stopped before it,
        removed when the chain resumes (a retried delivery before it finished)."""
        res = await self.coll.delete_one(
            {"delivery_key": key, "status": "skipped", "skip_reason": "chain_stopped"}
        )
        return bool(res.deleted_count)
