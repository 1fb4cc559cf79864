"""Server differences and test-server workarounds, each named, in one place.

The storage modules call these instead of branching on the server themselves:

- `ServerProfile`: what the connected server is (a real MongoDB, nx-27017, mongomock) and the
  few choices that depend on it (whether a compound index may contain `_id`; whether a change
  stream can be filtered with `$or`; which indexes are worth creating: nx-27017 uses none to
  query, and pays for each on every write).
- `decode`: nx-27017 stores a date written by a top-level `$set` as text; known date fields are
  turned back into aware UTC datetimes on read (on every server: it is a no-op elsewhere).
- `aggregate`, `open_stream`, `close_stream`: PyMongo's async API awaits `aggregate()` and
  `watch()`, motor returns cursors directly.
- `not_in`: a condition nx-27017 evaluates wrongly in a query (`$nin` combined with a date
  range matches nothing), applied in Python instead to the few documents concerned (running
  jobs). Worker documents' `last_seen` (a date written by `$set`, which nx-27017 stores as
  text, so a range on it in a query compares text) is likewise judged in Python after
  `decode`: `core.coverage.worker_alive`.
- `HOOK_NOT_OWED_PARTS`: in a multi-document delete's filter (`delete_many`), nx-27017 matches
  no document that lacks the field for `{"$ne": value}` (a `find` does, and so do writes by
  `_id`), and an `$or` there makes it drop the date range beside it (it deleted jobs too
  recent to purge). A purge therefore deletes in two filters whose union is "on_job_exited is
  not owed" on every server: `exit_hook` absent (or null, on nx-27017), then `$ne: "owed"`.
  Beside such a date range, nx-27017 also matches nothing for an `$in` on another field: the
  jobs owing a hook their definition does not have are purged one name at a time, by
  equality (only the names that have such jobs).
  Elsewhere, filters on a field that is either absent or one value use
  `{"$exists": False}`, or `None` in a write by `_id` (the final write's `has_dependents`
  and `kill_requested_at` conditions). In an `$or`,
  a branch with `$in` or `$ne` makes nx-27017 lose the other branches' matches on a date
  written by `$set`: the sweep's flow branches use equalities and `$exists` only.

See docs/testing.md for what nx-27017 and mongomock get wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Literal

from bson import json_util
from pymongo.errors import OperationFailure

from ..core.clock import as_utc

Doc = dict[str, Any]
IndexKeys = list[tuple[str, int]]

#: Top-level date fields of our documents.
DATE_FIELDS = frozenset(
    {
        "scheduled_for",
        "created_at",
        "updated_at",
        "started_at",
        "run_started_at",
        "ended_at",
        "kill_requested_at",
        "last_seen",
        "next_slot",
        "start_deadline",
        "exit_hook_at",
        "emitted_at",
        "expires_at",
        "expires_after_settle",
        "first_seen",
        "registered_at",
        "paused_at",
        # events, subscribers, webhook endpoints
        "fanout_owed_at",
        "fanout_done_at",
        "last_replayed_at",
        "declared_at",
        "disabled_at",
        "last_failure_at",
    }
)
#: Top-level flags: nx-27017 stores a top-level `$set` of True / False on an existing document
#: (an upsert that updates, say) as 1 / 0.
BOOL_FIELDS = frozenset({"has_exit_hook", "resumable", "delivery"})


def decode(doc: Doc) -> Doc:
    """Documents read back: dates as aware UTC datetimes and flags as booleans, whatever the
    server stored."""
    for key in DATE_FIELDS.intersection(doc):
        value = doc[key]
        if isinstance(value, str):
            parsed = date_text(value)
            if parsed is not None:
                doc[key] = parsed
        elif isinstance(value, dt.datetime):
            doc[key] = as_utc(value)
    for key in BOOL_FIELDS.intersection(doc):
        if type(doc[key]) is int and doc[key] in (0, 1):
            doc[key] = bool(doc[key])
    logs = doc.get("logs")
    if isinstance(logs, list) and any(isinstance(line, str) for line in logs):
        doc["logs"] = pushed_as_text(logs)
    return doc


def date_text(value: str) -> dt.datetime | None:
    """A date stored as ISO text, aware UTC (without an offset: UTC), or None for other text:
    nx-27017's dates ("2030-01-01 09:00:00.123"), another program's JSON dates ("2030-01-02",
    "2030-01-02T10:00", "...Z"), which pydantic would read naive."""
    if len(value) < 10 or not value[:4].isdigit():
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    try:
        return as_utc(parsed)
    except OverflowError:  # a date UTC cannot hold ("9999-12-31T23:00-05:00"): the nearest one
        return (dt.datetime.max if parsed.year == dt.MAXYEAR else dt.datetime.min).replace(
            tzinfo=dt.UTC
        )


#: Extended JSON as nx-27017 writes it: dates without an offset are UTC.
_EXTENDED_JSON = json_util.JSONOptions(tz_aware=True, tzinfo=dt.UTC)


def pushed_as_text(items: list[Any]) -> list[Any]:
    """nx-27017 stores the documents a `$push` appends to an array as extended-JSON text
    (`'{"at": {"$date": ...}, "message": ...}'`): read them back as the documents they were
    (a job's log lines)."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, str) and item.startswith("{"):
            with contextlib.suppress(ValueError):
                item = json_util.loads(item, json_options=_EXTENDED_JSON)
        out.append(item)
    return out


def decode_opt(doc: Doc | None) -> Doc | None:
    return None if doc is None else decode(doc)


async def all_docs(cursor: Any) -> list[Doc]:
    return [decode(doc) async for doc in cursor]


async def aggregate(collection: Any, pipeline: list[Doc]) -> list[Doc]:
    cursor = collection.aggregate(pipeline)
    if inspect.isawaitable(cursor):  # PyMongo async returns a coroutine; motor a cursor
        cursor = await cursor
    return [doc async for doc in cursor]


def cancel_count() -> int:
    """The running task's pending cancellation requests (0 without a running loop)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return 0
    return 0 if task is None else task.cancelling()


def cancelling(baseline: int = 0) -> bool:
    """Whether the running task was asked to cancel and has not finished cancelling (a driver
    that swallowed the CancelledError leaves it so). False without a running loop (the sync
    client drives its coroutines so: nothing there can be cancelled)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        return False
    return task is not None and task.cancelling() > baseline


async def open_stream(
    collection: Any, pipeline: list[Doc], max_await_ms: int, baseline: int = 0
) -> Any:
    """A change stream, open on the server when this returns (changes made after it are
    seen; a server that refuses change streams raises here)."""
    stream = collection.watch(pipeline, max_await_time_ms=max_await_ms)
    if inspect.isawaitable(stream):  # PyMongo's async API
        stream = await stream
        if cancelling(baseline):
            # a cancellation that came while it opened the stream is swallowed, the stream
            # returned: the caller (a wait_for, the worker's waker at a stop) went on
            await stream.close()
            raise asyncio.CancelledError()
    elif getattr(stream, "delegate", True) is None and hasattr(stream, "__aenter__"):
        # Motor's opens at its first read (a change made before it was missed, a refusal
        # taken for a broken stream): opened here, by Motor on its threads (with the caller's
        # context: a pymongo.timeout around the call bounds it)
        stream = await stream.__aenter__()
    return stream


async def close_stream(stream: Any) -> None:
    """Close a change stream or a cursor (PyMongo's, Motor's, or an async generator's)."""
    close = getattr(stream, "close", None) or getattr(stream, "aclose", None)
    result = close() if callable(close) else None
    if inspect.isawaitable(result):
        await result


ServerKind = Literal["mongodb", "nx-27017", "mongomock"]


@dataclass(frozen=True)
class ServerProfile:
    kind: ServerKind = "mongodb"

    @property
    def index_with_id(self) -> bool:
        """nx-27017 fails every insert into a collection with `_id` in a compound index."""
        return self.kind != "nx-27017"

    @property
    def stream_or(self) -> bool:
        """nx-27017 change streams deliver nothing for a `$match` with `$or`."""
        return self.kind == "mongodb"

    @property
    def stream_waits(self) -> bool:
        """nx-27017 answers a change stream's `getMore` at once, never waiting for an event."""
        return self.kind != "nx-27017"

    @property
    def silent_duplicates(self) -> bool:
        """nx-27017 answers a `find_one_and_update` that would break a unique index with no
        document (as if nothing matched) instead of error 11000 (`update_one` does raise)."""
        return self.kind == "nx-27017"

    @property
    def in_as_or(self) -> bool:
        """nx-27017 translates `$in` on a field other than `_id` to no SQL: it decodes every
        document of the collection and tests it in Python. An `$or` of one explicit `$eq` per
        name (one `$eq` for one name) is plain SQL there, which its claim index answers (a bare
        value is also tested as an array, which no index answers): the one-job claim
        (`find_one_and_update`) reads the claimable jobs instead of the whole collection
        (timed in SQLite over 200 jobs, half of them claimable: 87 us against 214 us for an
        `$or` of bare values). Used there only: the same `$or` in a sorted `find` with a limit
        (the batch claim's read) costs more than the `$in` (1.95x the minimal queue's server
        CPU at concurrency 8 against 1.1x); and up to 200 names only (`MAX_SORTED_NAMES`:
        SQLite refuses an expression deeper than 1000 terms, and nx-27017 then answers "nothing
        claimed"). A top-level `$or` with nothing beside it, the due bound repeated in each
        branch: nx-27017 joins `$or` branches without parentheses, so a key beside an `$or`
        applies to one branch only (a claim took jobs that were not due in a test)."""
        return self.kind == "nx-27017"

    @property
    def nor_ok(self) -> bool:
        """nx-27017 evaluates `$nor` in SQL's three-valued logic: a document without a field
        the negated filter tests matches neither the filter nor its `$nor` (the jobs without
        `has_dependents`, most of them, were left out of "not held"). There the negation is
        its parts, one command each (`DEPENDENTS_COUNTED_PARTS`)."""
        return self.kind != "nx-27017"

    @property
    def bulk_ok(self) -> bool:
        """mongomock-motor's bulk_write breaks with pymongo 4.20: single writes there."""
        return self.kind != "mongomock"

    def wants_index(self, keys: IndexKeys, options: dict[str, Any]) -> bool:
        """nx-27017 keeps each index up to date on every write but looks one up only for a
        plain SQL condition on its first field (an explicit `$eq` or a range, not a bare value,
        which it also tests as an array, nor `$in`): there only the indexes that do something
        are created, the unique ones (they enforce uniqueness), the TTL ones (they expire
        documents) and the claim's (its `$eq` per name: `in_as_or`), which makes the one-job
        claim read the claimable jobs instead of the whole collection."""
        if self.kind != "nx-27017":
            return True
        claim = bool(keys) and keys[0][0] == "claim_name"
        return bool(claim or options.get("unique") or "expireAfterSeconds" in options)

    def index_keys(self, keys: IndexKeys) -> IndexKeys:
        """The `_id` tie-breaker is left out of compound indexes where the server breaks on it
        (nx-27017: there SQLite finds the claim's names through the rest of the index and sorts
        what it found)."""
        if self.index_with_id or len(keys) == 1:
            return keys
        return [(k, d) for k, d in keys if k != "_id"]


def is_motor(db: Any) -> bool:
    """A Motor database: its commands run on one thread pool of the whole process."""
    return type(db).__module__.startswith("motor.")


def stream_waiters(db: Any, most: int) -> int:
    """How many change-stream waits a process may keep open on `db` at once: `most`; with
    Motor, a quarter of its executor's threads at most (Motor runs every command on them, a
    waiting getMore holds one for up to its max await: 10 waits on its 10 threads of a 2-core
    machine stalled every other command of the process behind them)."""
    if not is_motor(db):
        return most
    framework = sys.modules.get("motor.frameworks.asyncio")  # loaded with Motor's database
    try:
        threads = int(framework._EXECUTOR._max_workers)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        threads = 8  # a Motor laid out otherwise: 2 waits on streams, the others poll
    return max(1, min(most, threads // 4))


async def detect(db: Any) -> ServerProfile:
    if type(db).__module__.startswith("mongomock_motor"):
        return ServerProfile("mongomock")
    try:
        info = await db.command("buildInfo")
    except OperationFailure:  # refused (a user without the right): a real MongoDB
        return ServerProfile("mongodb")
    # an outage's error goes to the caller, who asks again later: read as "a real MongoDB",
    # it was kept for good (a dashboard opened during one treated nx-27017 as MongoDB after)
    if str(info.get("process", "")).startswith("nx"):
        return ServerProfile("nx-27017")
    return ServerProfile("mongodb")


#: "on_job_exited is not owed" (`exit_hook` absent, null, "none" or a recorded end) as two
#: filters to delete with one after the other (see above): on MongoDB the first deletes the
#: jobs without the field and the second the rest; on nx-27017 each matches its own part.
HOOK_NOT_OWED_PARTS: tuple[Doc, Doc] = (
    {"exit_hook": {"$exists": False}},
    {"exit_hook": {"$ne": "owed"}},
)
#: The same for "no job scheduled after it is still to count its end" (a purge must not
#: delete such a dependency: its dependents would read it as deleted, a failure): no
#: dependents ever (the field absent, or `false`/`null` as another program may write it), or
#: all of them seen settled by a sweep. Equalities and `$exists` only (beside the date range
#: nx-27017 matches nothing for an `$in`).
DEPENDENTS_COUNTED_PARTS: tuple[Doc, ...] = (
    {"has_dependents": {"$exists": False}},
    {"has_dependents": False},
    {"has_dependents": None},
    {"dependents_settled": True},
)


def counted_part(doc: Doc) -> int | None:
    """Which of DEPENDENTS_COUNTED_PARTS a read document (with `has_dependents` and
    `dependents_settled`) matches; None when its dependents have not all counted it."""
    if "has_dependents" not in doc:
        return 0
    if doc["has_dependents"] is False:
        return 1
    if doc["has_dependents"] is None:
        return 2
    return 3 if doc.get("dependents_settled") else None  # nx-27017 reads a `$set` True as 1


def not_in(docs: list[Doc], key: str, values: set[Any]) -> list[Doc]:
    """`{key: {"$nin": values}}`, applied here: nx-27017 matches nothing for `$nin` next to a
    date range (used on running jobs, which are few)."""
    return [d for d in docs if d.get(key) not in values]


def id_key(value: Any) -> Any:
    """A document's `_id` as a set or dict key: itself, or its repr when it is a document or a
    list (another program's compound key), never sorted beside ObjectIds."""
    try:
        hash(value)
    except TypeError:
        return ("unhashable", repr(value))
    return value
