"""The definitions registry and the paused names: what workers serve, and what they must not claim.

`<prefix>definitions`: one document per job or cron name (`_id` = name), written by every worker
that serves it when it registers (one `update_one` per name: nx-27017 and mongomock break
`bulk_write`), and its `last_seen` refreshed with one `update_many` every few minutes. A row
written by a worker that is no longer live is written again by a live worker that defines the
name (`stale`, `reassert`: see `engine.upkeep.Registry.refresh` for who). Which live workers
serve a name is not stored here: each worker document lists the names it claims (`names`),
which is exact whatever tags or code version the worker runs.

`<prefix>paused`: one document per paused name (`_id` = name). Workers read the whole (small)
collection once per heartbeat and leave those names out of their claims.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ..core import event_documents as E
from ..core.definitions import HOOK_WHEN_MARK, CronDef
from ..core.payload_fields import payload_fields
from .compat import IndexKeys, all_docs, decode_opt

Doc = dict[str, Any]

INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = []  # read whole, or by _id
PAUSED_INDEXES: list[tuple[IndexKeys, dict[str, Any]]] = []


def definition_fields(definition: Any) -> Doc:
    """What the registry records of a JobDef / CronDef (never the handler itself)."""
    model = definition.payload_model
    fields: Doc = {
        "kind": "cron" if isinstance(definition, CronDef) else "job",
        "tag": definition.tag,
        "resumable": bool(definition.resumable),
        "concurrency": definition.concurrency,
        "max_attempts": definition.attempts,
        "max_runtime_in_minutes": definition.max_runtime_in_minutes,
        "backoff": definition.backoff.model_dump(mode="json"),
        # a hook owed only for some jobs (`HOOK_WHEN_MARK`: a delivery's chain step) is none
        # for the others, which a process without the definition settles at once
        "has_exit_hook": definition.on_job_exited is not None
        and getattr(definition.on_job_exited, HOOK_WHEN_MARK, None) is None,
        "limit_key": definition.limit.key if getattr(definition, "limit", None) else None,
        "payload_model": model.__name__ if model is not None else None,
        "payload_schema": _schema(model),
        "payload_fields": payload_fields(model),
        "sensitive_fields": list(definition.sensitive_fields),
        "cron_string": getattr(definition, "cron_string", None),
        "timezone": getattr(definition, "timezone", None),
    }
    # made by emit(), never by hand (written either way: a name may change its nature)
    fields["delivery"] = getattr(definition.handler, E.DELIVERY_MARK, False) is True
    return fields


def fingerprints(definitions: Mapping[str, Any]) -> dict[str, str]:
    """name -> a short digest of what the registry records of its definition and of its
    handler's qualified name (not its module: `python app.py` names it `__main__`): recorded on
    each worker document, so that live workers running different definitions of one name (two
    apps, or a deploy under way) can be told apart. Event deliveries are left out (the
    built-in `webhook-delivery` follows each process's webhook options; a subscriber's is
    declared by its event, not renamed)."""
    out: dict[str, str] = {}
    for name, definition in definitions.items():
        fields = definition_fields(definition)
        if fields["delivery"] or name == E.WEBHOOK_JOB:
            continue
        handler = definition.handler
        fields["handler"] = getattr(handler, "__qualname__", type(handler).__name__)
        # what else two versions may disagree on, not recorded in the registry: the limit's
        # capacity (each plans its slots from its own), retention, the hook's bound, the
        # cron's check-in margin
        limit = getattr(definition, "limit", None)
        fields["limit"] = limit.model_dump(mode="json") if limit is not None else None
        fields["keep"] = [repr(definition.keep_finished), repr(definition.keep_failed)]
        fields["on_job_exited_timeout"] = definition.on_job_exited_timeout
        fields["checkin_margin"] = getattr(definition, "checkin_margin", None)
        text = json.dumps(fields, sort_keys=True, default=str)
        out[name] = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:10]
    return out


def _schema(model: Any) -> Doc | None:
    if model is None:
        return None
    try:
        schema: Doc = model.model_json_schema()
    except Exception:  # a model whose schema cannot be generated: the name is enough
        return None
    # MongoDB field names may not start with "$" ("$defs", "$ref"): keep the schema as text
    return {"json": json.dumps(schema, sort_keys=True)}


def written_by(definition: Any, worker_id: str, now: dt.datetime) -> Doc:
    """A row's fields as `worker_id` writes them (at its start, or over a gone writer's row)."""
    return definition_fields(definition) | {
        "last_seen": now,
        "registered_by": worker_id,
        "registered_at": now,
    }


class DefinitionStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def register(
        self, definitions: Mapping[str, Any], worker_id: str, now: dt.datetime
    ) -> None:
        """Upsert each definition this worker serves (the last worker to start wins when two
        versions of a definition run side by side during a deploy)."""
        for name, definition in definitions.items():
            await self.coll.update_one(
                {"_id": name},
                {
                    "$set": written_by(definition, worker_id, now),
                    "$setOnInsert": {"first_seen": now},
                },
                upsert=True,
            )

    async def seen(
        self,
        names: Iterable[str],
        now: dt.datetime,
        registered_by: Collection[str] | None = None,
    ) -> int:
        """One write for all of a worker's names: they are still served. With `registered_by`
        (the live workers' ids), only the rows one of them wrote: how many matched (fewer than
        the names when a row was written by a worker no longer live, or has gone)."""
        names = list(names)
        if not names:
            return 0
        query: Doc = {"_id": {"$in": names}}
        if registered_by is not None:
            query["registered_by"] = {"$in": sorted(registered_by)}
        res = await self.coll.update_many(query, {"$set": {"last_seen": now}})
        return int(res.matched_count)

    async def stale(self, names: Iterable[str], live: Collection[str]) -> dict[str, str | None]:
        """One query: name -> who wrote its row, for those of `names` whose row was written by
        none of the `live` workers (rows that do not exist are not among them)."""
        found = await all_docs(
            self.coll.find(
                {"_id": {"$in": list(names)}, "registered_by": {"$nin": sorted(live)}},
                {"registered_by": 1},
            )
        )
        return {str(d["_id"]): d.get("registered_by") for d in found}

    async def reassert(
        self, name: str, definition: Any, worker_id: str, was: str | None, now: dt.datetime
    ) -> bool:
        """Write this worker's definition of `name` over the row `was` wrote (compare-and-set:
        False if someone else has written it since, or it is gone)."""
        res = await self.coll.update_one(
            {"_id": name, "registered_by": was},
            {"$set": written_by(definition, worker_id, now)},
        )
        return bool(res.matched_count)

    async def all(self) -> list[Doc]:
        return await all_docs(self.coll.find({}))

    async def limit_keys(self) -> set[str]:
        """The limit keys the registered definitions name (status pages: a limit no definition
        names any more is shown only while in use)."""
        query = {"limit_key": {"$type": "string"}}  # the limited names only (each scrape)
        docs = await all_docs(self.coll.find(query, {"_id": 0, "limit_key": 1}))
        return {str(d["limit_key"]) for d in docs if d.get("limit_key")}

    async def get(self, name: str) -> Doc | None:
        return decode_opt(await self.coll.find_one({"_id": name}))

    async def forget(self, name: str, registered_by: Any = None) -> bool:
        """Remove a name's registration (a worker that defines it registers it again), only
        as it was read (`registered_by`, when it has one): a worker that started since wrote
        it afresh, and keeps it."""
        query: Doc = {"_id": name}
        if registered_by is not None:
            query["registered_by"] = registered_by
        return bool((await self.coll.delete_one(query)).deleted_count)


class PausedStore:
    def __init__(self, collection: Any) -> None:
        self.coll = collection

    async def pause(self, name: str, by: str, now: dt.datetime) -> bool:
        """True if this call paused the name (False: it already was)."""
        res = await self.coll.update_one(
            {"_id": name},
            {"$setOnInsert": {"paused_at": now, "paused_by": by}},
            upsert=True,
        )
        return res.upserted_id is not None

    async def resume(self, name: str) -> bool:
        """True if the name was paused."""
        res = await self.coll.delete_one({"_id": name})
        return bool(res.deleted_count)

    async def is_paused(self, name: str) -> bool:
        return await self.coll.find_one({"_id": name}, {"_id": 1}) is not None

    async def names(self) -> set[str]:
        """One query: every paused name."""
        return {str(d["_id"]) async for d in self.coll.find({}, {"_id": 1})}

    async def all(self) -> list[Doc]:
        return await all_docs(self.coll.find({}))
