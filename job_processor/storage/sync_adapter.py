"""The synchronous driver under the async code: PyMongo's `MongoClient` database behind the
async collection interface the storage code uses, and `drive()` to run that code without an
event loop.

The producer verbs (schedule, kill, retry, read, wait, emit) are written once, as coroutines over
an async database. A `SyncDatabase` gives them PyMongo's synchronous database instead: each
collection method is a coroutine that calls the synchronous method and returns its result, so
it never suspends. `drive(coro)` runs such a coroutine to its end in the calling thread (no
event loop, no thread of its own): `job_processor.sync.JobClient` is the same code as the async
API, on the same documents, indexes and write concern.

A coroutine that does suspend (an `asyncio.sleep`, an `asyncio.timeout`) cannot be driven this
way: `drive` raises instead of blocking forever. Code meant to run under it sleeps through the
processor's clock (a `BlockingClock` here) and bounds operations with `pymongo.timeout`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from pymongo.collection import Collection
from pymongo.database import Database

T = TypeVar("T")


class DriveError(RuntimeError):
    """A coroutine run by `drive` waited for the event loop (a bug of the code driven)."""


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its result, in this thread."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise DriveError(
        "a synchronous call waited for an event loop; the code it runs must not await asyncio "
        "(report this as a bug of job_processor.sync)"
    )


class SyncCursor:
    """A synchronous cursor (find, aggregate, a change stream) read with `async for`."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def __getattr__(self, name: str) -> Any:  # sort, limit, skip, ... return the cursor
        method = getattr(self._cursor, name)

        def chained(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return self if result is self._cursor else result

        return chained

    def __aiter__(self) -> SyncCursor:
        self._iter: Iterator[Any] = iter(self._cursor)
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._iter)
        except StopIteration:
            raise StopAsyncIteration from None

    async def to_list(self, length: int | None = None) -> list[Any]:
        return list(self._cursor) if length is None else list(self._cursor)[:length]

    async def try_next(self) -> Any:  # a change stream's
        return self._cursor.try_next()

    async def close(self) -> None:
        self._cursor.close()

    async def explain(self) -> Any:
        return self._cursor.explain()


#: Collection methods that return a cursor (wrapped), not a result.
CURSORS = frozenset({"find", "aggregate", "watch", "list_indexes"})


class SyncCollection:
    """A synchronous collection behind the async collection interface."""

    def __init__(self, collection: Collection[Any]) -> None:
        self._coll = collection

    @property
    def name(self) -> str:
        return self._coll.name

    @property
    def write_concern(self) -> Any:
        return self._coll.write_concern

    @property
    def read_preference(self) -> Any:
        return self._coll.read_preference

    @property
    def database(self) -> SyncDatabase:
        return SyncDatabase(self._coll.database)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._coll, name)
        if name in CURSORS:
            return lambda *args, **kwargs: SyncCursor(method(*args, **kwargs))

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


class SyncDatabase:
    """A synchronous PyMongo database behind the async database interface (`get_collection`,
    `command`, `client`, `name`, `codec_options`)."""

    def __init__(self, database: Database[Any]) -> None:
        self.database = database

    @property
    def name(self) -> str:
        return self.database.name

    @property
    def client(self) -> Any:
        return self.database.client

    @property
    def codec_options(self) -> Any:
        return self.database.codec_options

    def get_collection(self, name: str, **options: Any) -> SyncCollection:
        return SyncCollection(self.database.get_collection(name, **options))

    def __getitem__(self, name: str) -> SyncCollection:
        return self.get_collection(name)

    async def command(self, *args: Any, **kwargs: Any) -> Any:
        return self.database.command(*args, **kwargs)


def is_sync(db: Any) -> bool:
    """Whether `db` is driven synchronously (a `SyncDatabase`)."""
    return isinstance(db, SyncDatabase)  # (an async database makes any attribute a collection)
