"""Paging through values of several BSON types, one type ("kind") at a time.

`$lt` / `$lte` compare within one BSON type, and the servers order the types against each other
differently (MongoDB: null, numbers, text, documents, lists, ObjectIds, booleans, dates;
nx-27017 compares dates as their text and numbers among text), so a listing whose sort field
holds values of several types (an `_id` or a time another program wrote) pages through each
kind apart, in a fixed order of kinds, each read bounded on the server to its own kind. The
audit log pages its `_id` kinds so, the events listing its `emitted_at` kinds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bson import Decimal128, ObjectId

T = TypeVar("T")


def is_number(value: Any) -> bool:
    """A BSON number (a Decimal128 too: `$lt` compares it with every number); not a bool."""
    return isinstance(value, int | float | Decimal128) and not isinstance(value, bool)


def id_order(value: Any) -> tuple[int, Any]:
    """An `_id` as MongoDB orders them across types (numbers, text, documents, ObjectIds,
    booleans), comparable here whatever another program used."""
    if isinstance(value, ObjectId):
        return (7, value.binary)
    if isinstance(value, Decimal128):  # a number, as MongoDB orders it
        return (1, float(value.to_decimal()))
    if isinstance(value, bool):
        return (8, value)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, repr(value))


def same_value(a: Any, b: Any) -> bool:
    """Equal as MongoDB compares them: numbers of any type by value (5 == 5.0 ==
    Decimal128("5")), anything else only within its type."""
    if is_number(a) and is_number(b):
        return bool(id_order(a)[1] == id_order(b)[1])
    return type(a) is type(b) and bool(a == b)


async def through_kinds(
    read: Callable[[int, int], Awaitable[tuple[list[T], bool]]],
    start: int,
    kinds: int,
    limit: int,
) -> tuple[list[T], bool]:
    """Up to `limit` items: `read(kind, wanted)` of the kind `start` (where the page's position
    is), then, where those run out, of each later kind up to `kinds` (exclusive), one read per
    kind reached. A read that says stop (True) ends the walk, and the stop is returned."""
    out: list[T] = []
    for kind in range(start, kinds):
        got, stop = await read(kind, limit - len(out))
        out += got
        if stop or len(out) >= limit:
            return out, stop
    return out, False
