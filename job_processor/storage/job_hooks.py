"""on_job_exited records on the jobs collection: the hooks owed by processes that are gone, taken
over by compare-and-set on their hook id, and the record of how a hook ended. A mixin of
`JobStore`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument

from ..core import documents as D
from ..core import foreign as FD
from ..core.clock import as_utc
from .compat import DEPENDENTS_COUNTED_PARTS, all_docs, decode, decode_opt
from .transient import ride_out

Doc = dict[str, Any]
AFTER = ReturnDocument.AFTER


class HookRecords:
    coll: Any

    def owed_hooks_cursor(self, cutoff: dt.datetime) -> Any:
        return self.coll.find({"exit_hook": "owed", "exit_hook_at": {"$lt": cutoff}}).limit(500)

    async def owed_hooks(self, cutoff: dt.datetime) -> list[Doc]:
        """Jobs whose on_job_exited was recorded as owed before `cutoff` and not marked done."""
        return await all_docs(self.owed_hooks_cursor(cutoff))

    def unknown_hooks_cursor(self, known: set[str]) -> Any:
        """Owed hooks of jobs whose name is not in `known` (the {exit_hook, exit_hook_at}
        index: owed hooks are few)."""
        query = {"exit_hook": "owed", "name": {"$nin": sorted(known)}}
        fields = {"_id": 1, "name": 1, "exit_hook_id": 1, "exit_hook_at": 1}
        return self.coll.find(query, fields).limit(100)

    async def give_up_unknown(
        self, known: set[str], recorded_before: dt.datetime, now: dt.datetime, grace: float
    ) -> int:
        """Owed hooks recorded before `recorded_before` of jobs whose name is not in `known`
        (no worker defines it: none ever will call them, and an owed hook holds its job for
        good): recorded as failed, saying why. At most 100 per call; compare-and-set each.
        The names select in the query (owed hooks of known names, however many, never hide
        these); the time is compared here (nx-27017 matches nothing for `$nin` beside a date
        range, see compat.py)."""
        given_up = 0
        for doc in await all_docs(self.unknown_hooks_cursor(known)):
            name = str(doc.get("name"))
            at = decode(doc).get("exit_hook_at")
            if not isinstance(at, dt.datetime) or as_utc(at) >= recorded_before:
                continue
            error = FD.unknown_hook_error(name, grace)
            given_up += await self.hook_ended(
                doc["_id"], doc["exit_hook_id"], "failed", error, now, budget=5.0
            )
        return given_up

    async def take_hook(self, doc: Doc, writer: str, now: dt.datetime) -> Doc | None:
        """Take over an owed hook (its owner died): compare-and-set on its hook id."""
        result = await self.coll.find_one_and_update(
            {"_id": doc["_id"], "exit_hook": "owed", "exit_hook_id": doc["exit_hook_id"]},
            {
                "$set": {
                    "exit_hook_id": D.new_id(),
                    "exit_hook_owner": writer,
                    "exit_hook_at": now,
                }
            },
            return_document=AFTER,
        )
        return decode_opt(result)

    async def hook_owed_again(self, doc: Doc) -> None:
        """A hook recorded as a formality ("none", no expiry) for a retry that then did not
        happen: owed again as `doc` had it, so that a worker's sweep records it with the job's
        retention (nothing else would give it one); unless the job changed since."""
        unchanged = {"_id": doc["_id"], "exit_hook": "none", "exit_hook_id": doc["exit_hook_id"]}
        unchanged |= {"status": doc["status"], "attempt": doc.get("attempt")}
        unchanged |= {k: {"$exists": False} for k in ("expires_at", "expires_after_settle")}
        fields = ("exit_hook", "exit_hook_at", "exit_hook_error")
        await self.coll.update_one(unchanged, {"$set": {k: doc.get(k) for k in fields}})

    async def disown_hook(self, job_id: ObjectId, hook_id: str) -> None:
        """An owed hook whose owner cannot call it (it does not define the job): no owner."""
        await self.coll.update_one(
            {"_id": job_id, "exit_hook": "owed", "exit_hook_id": hook_id},
            {"$set": {"exit_hook_owner": None}},
        )

    async def hook_ended(
        self,
        job_id: ObjectId,
        hook_id: str,
        state: str,
        error: str | None,
        now: dt.datetime,
        budget: float,
        expires_at: dt.datetime | None = None,
    ) -> bool:
        """Record that the hook ran ("done"), failed ("failed") or needs nothing ("none"); the
        job's retention starts counting then (`expires_at`). While jobs wait (or are being
        scheduled) on it and no sweep has seen them settled, the expiry is held back as
        `expires_after_settle` (the sweep that marks them settled applies it): decided in each
        update's own filter, never from an earlier read (a job scheduled after it meanwhile
        marks it), the commonest case (no dependents ever) first."""
        fields: Doc = {"exit_hook": state, "exit_hook_error": error, "exit_hook_at": now}
        owed = {"_id": job_id, "exit_hook": "owed", "exit_hook_id": hook_id}
        attempts: list[tuple[Doc, Doc]] = [(owed, fields)]
        if expires_at is not None:
            plain = fields | {"expires_at": expires_at}
            held = fields | {"expires_after_settle": expires_at}
            unsettled = {"has_dependents": True, "dependents_settled": {"$exists": False}}
            first, *others = DEPENDENTS_COUNTED_PARTS
            attempts = [
                (owed | first, plain),
                (owed | unsettled, held),
                *((owed | counted, plain) for counted in others),
            ]

        async def once() -> bool:
            for _ in range(2):  # a mark between two of the filters makes each miss: again
                for query, values in attempts:
                    if (await self.coll.update_one(query, {"$set": values})).matched_count:
                        return True
                if await self.coll.find_one(owed, {"_id": 1}) is None:
                    return False  # recorded elsewhere (a hook taken over), or gone
            # marks keep coming: the record is never lost (the expiry may then not be held)
            done = fields | ({"expires_at": expires_at} if expires_at is not None else {})
            return bool((await self.coll.update_one(owed, {"$set": done})).matched_count)

        return await ride_out(once, budget)
