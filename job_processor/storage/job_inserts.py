"""Creating jobs: one, or a batch in one `insert_many`, with the database deciding every
"only one active" rule. A mixin of `JobStore`.

- A dedup key held by an active job: that job is returned instead (compare `_id`).
- An exclusive name that already has an active job: the new job is inserted as `skipped`,
  recording the conflicting job's id.
- A cron slot whose task exists: None (another replica created it).
- A write retried after a lost reply (`retried`): a duplicate of the `_id` chosen before the
  first attempt means that attempt landed, and the job as stored is returned; nothing is ever
  inserted twice, without relying on the server's retryable writes.

Race-free: the unique sparse indexes on `dedup_key`, `exclusive_key` and `cron_slot_key`
decide, never a read before the write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..core import documents as D
from ..core.status import JobStatus, check_transition
from .compat import all_docs, decode

Doc = dict[str, Any]
S = JobStatus

#: MongoDB's duplicate key error codes.
DUPLICATE_KEY = frozenset({11000, 11001})


class JobInserts:
    coll: Any

    async def insert(
        self,
        doc: Doc,
        skipped_expires_at: dt.datetime | None = None,
        *,
        retried: bool = False,
        conflicted: bool = False,
    ) -> Doc | None:
        """Insert a pending (or running) job; see the module docstring for what comes back on
        a conflict. `conflicted`: the insert already failed on a unique key (a batch's item),
        resolve it without writing it again first."""
        check_transition(None, S(doc["status"]))
        for _ in range(10):
            try:
                if not conflicted:
                    await self.coll.insert_one(doc)
                    return doc
                raise DuplicateKeyError("duplicate key (from the batch insert)")
            except DuplicateKeyError:
                conflicted = False
                if retried:
                    landed = await self.coll.find_one({"_id": doc["_id"]})
                    if landed is not None:  # the attempt whose reply was lost wrote it
                        return decode(landed)
                resolved = await self._conflict(doc, skipped_expires_at, retried)
                if resolved is not _AGAIN:
                    return resolved  # type: ignore[return-value]
        raise RuntimeError(f"could not insert exclusive job {doc['name']!r}: constant contention")

    async def _conflict(
        self, doc: Doc, skipped_expires_at: dt.datetime | None, retried: bool
    ) -> Doc | object | None:
        """After a duplicate key: the job that holds it, the skipped record, None (a cron
        slot taken), or _AGAIN when the holder ended meanwhile (insert again)."""
        if await self._slot_taken(doc):
            return None
        if "dedup_key" in doc:
            same = await self.coll.find_one({"dedup_key": doc["dedup_key"]})
            if same is not None:
                return decode(same)
            if "exclusive_key" not in doc:
                return _AGAIN  # it ended meanwhile
        if "exclusive_key" not in doc:
            raise DuplicateKeyError(f"job {doc['name']!r}: a unique key is already taken")
        holder = await self.coll.find_one({"exclusive_key": doc["exclusive_key"]}, {"_id": 1})
        if holder is None:  # it ended between our insert and this read
            return _AGAIN
        skipped = D.as_skipped(doc, holder["_id"], skipped_expires_at)
        try:
            await self.coll.insert_one(skipped)
        except DuplicateKeyError:
            if await self._slot_taken(doc):
                return None
            landed = await self.coll.find_one({"_id": doc["_id"]}) if retried else None
            if landed is not None:  # this skipped record, from the attempt whose reply was lost
                return decode(landed)
            raise
        return skipped

    async def _slot_taken(self, doc: Doc) -> bool:
        key = doc.get("cron_slot_key")
        return (
            key is not None
            and await self.coll.find_one({"cron_slot_key": key}, {"_id": 1}) is not None
        )

    async def insert_many(
        self,
        docs: Sequence[Doc],
        skipped_expiry: Callable[[Doc], dt.datetime | None],
        *,
        retried: bool = False,
    ) -> list[Doc]:
        """Insert a batch in one `insert_many(ordered=False)`; each item that hit a unique key
        is then resolved alone, as `insert` resolves it (its dedup holder, or recorded as
        skipped). Returns the jobs in the order given."""
        for doc in docs:
            check_transition(None, S(doc["status"]))
        out: list[Doc] = list(docs)
        conflicts: list[int] = []
        try:
            await self.coll.insert_many(list(docs), ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if any(e.get("code") not in DUPLICATE_KEY for e in errors):
                raise
            conflicts = sorted(int(e["index"]) for e in errors)
        if not conflicts:
            return out
        landed: dict[Any, Doc] = {}
        if retried:  # written by the attempt whose reply was lost
            ids = [docs[i]["_id"] for i in conflicts]
            landed = {d["_id"]: d for d in await all_docs(self.coll.find({"_id": {"$in": ids}}))}
        for i in conflicts:
            doc = docs[i]
            if doc["_id"] in landed:
                out[i] = landed[doc["_id"]]
                continue
            resolved = await self.insert(doc, skipped_expiry(doc), conflicted=True)
            assert resolved is not None  # None only for cron slots, which batches never hold
            out[i] = resolved
        return out


#: `_conflict`: the conflicting job ended meanwhile; insert again.
_AGAIN = object()
