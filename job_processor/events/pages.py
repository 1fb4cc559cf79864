"""Pages of `list_events` past a cursor, for the CLI's `events list --cursor` and the
dashboard's Events page. The order is stable even when events share their time: the events
whose `emitted_at` is a date (what emit writes) newest first, then those another program wrote
with text there, then with a number (each greatest first), then with none or null (a boolean,
a document, a list is not listed) by id (ObjectIds, text, then numbers:
`storage.events.kind_page`); within a kind, ties by id desc (`storage.events.EMITTED_KINDS`).
A listing with a time window (since / until) lists dated events only. The cursor is the last
event shown: its kind, its `emitted_at` as stored (a date to the ms) and its id."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any, NamedTuple

from bson import ObjectId, json_util
from bson.errors import InvalidId
from bson.json_util import CANONICAL_JSON_OPTIONS

from ..core.clock import as_utc
from ..core.errors import InvalidArgumentError
from ..core.models import Event
from ..storage import Storage
from ..storage.events import DATED, EMITTED_KINDS, OTHER, emitted_kind
from ..storage.kinds import id_order, is_number, same_value, through_kinds
from .queries import LIST_LIMIT, check_limit, listing_window, readable_event

#: Past a cursor, the events of the cursor's second (its value, for text and numbers) are read
#: again and those already shown dropped (nx-27017 compares dates to the second): read this
#: many more, growing up to TIES_MAX when a burst was emitted within that second.
TIES_SLACK = 100
TIES_MAX = 10_000

Doc = dict[str, Any]
_JSON = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=dt.UTC)


class Position(NamedTuple):
    """Where a page ends: the kind of its last event's `emitted_at` (`EMITTED_KINDS`), that
    `emitted_at` as stored (None for the kind "other", listed by id) and the event's `_id`."""

    kind: int
    value: Any
    id: Any


def encode_cursor(position: Position) -> str:
    """A dated event with an ObjectId as `ms.id` (what every cursor was before the other kinds
    were listed: those still decode); any other position as extended JSON."""
    if position.kind == DATED and isinstance(position.id, ObjectId):
        ms = int(as_utc(position.value).timestamp() * 1000)
        raw = f"{ms}.{position.id}"
    else:
        fields = {"k": EMITTED_KINDS[position.kind], "v": position.value, "id": position.id}
        raw = json_util.dumps(fields, json_options=_JSON)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()).decode()
        if raw.startswith("{"):
            position = _json_position(raw)
        else:
            ms, oid = raw.split(".")
            at = dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC)
            position = Position(DATED, at, ObjectId(oid))
        if position.kind == DATED and position.value.year >= 9999:
            raise ValueError(position)  # the page reads up to the end of its second
        return position
    except (
        ValueError,
        TypeError,
        KeyError,
        InvalidId,
        UnicodeDecodeError,
        OverflowError,
        OSError,
        binascii.Error,
        json.JSONDecodeError,
    ):
        raise InvalidArgumentError(
            f"cursor {token!r} is not a cursor of an events listing: pass it as it was given "
            "(the --cursor printed by events list, the Events page's Older link)"
        ) from None


def _json_position(raw: str) -> Position:
    fields = json_util.loads(raw, json_options=_JSON)
    kind = EMITTED_KINDS.index(fields["k"])
    value, oid = fields["v"], fields["id"]
    if (kind == OTHER and value is not None) or (kind != OTHER and emitted_kind(value) != kind):
        raise ValueError(raw)
    if not (isinstance(oid, ObjectId | str) or is_number(oid)):
        raise ValueError(raw)
    if kind == DATED:
        value = as_utc(value)
    return Position(kind, value, oid)


def _older(value: Any, oid: Any, position: Position) -> bool:
    """After `position` in listing order, for an event of the position's kind read up to it:
    a date (compared here: nx-27017 compares to the second) below it, or a tie below its id."""
    if position.kind == DATED:
        at, bound = as_utc(value), position.value
        if at != bound:
            return bool(at < bound)
    elif position.kind != OTHER and not same_value(value, position.value):
        return True  # the server read up to the position's value only
    return id_order(oid) < id_order(position.id)


def _upto(position: Position | None) -> Any:
    """The server-side bound of a read from `position`."""
    if position is None:
        return None
    if position.kind == DATED:  # to the end of its second (nx-27017 compares to the second)
        return position.value.replace(microsecond=0) + dt.timedelta(seconds=1)
    return position.id if position.kind == OTHER else position.value


async def event_page(
    storage: Storage,
    name: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    before: Position | None,
) -> tuple[list[Event], str | None, bool]:
    """One page of events (`Event`), the next page's cursor, and whether a burst of more than
    TIES_MAX events sharing one second (one value) cut the page short. Each kind of
    `emitted_at` is read apart (the first page's dates on the listing indexes, as before)."""
    want = check_limit(limit, LIST_LIMIT) + 1  # one more is read: is there more?
    window = listing_window(name, since, until)
    kinds = 1 if window != (None, None) else len(EMITTED_KINDS)  # a window: dated ones only
    start = DATED if before is None else before.kind

    async def read(kind: int, wanted: int) -> tuple[list[tuple[Position, Doc]], bool]:
        position = before if kind == start else None
        n = wanted + (TIES_SLACK if position is not None else 0)
        while True:
            got, count = await storage.events.kind_page(kind, name, window, _upto(position), n)
            found = [
                (Position(kind, None if kind == OTHER else v, d["_id"]), d)
                for v, d in got
                if position is None or _older(v, d["_id"], position)
            ]
            cut = count == n and n >= TIES_MAX
            if len(found) >= wanted or count < n or cut:
                return found[:wanted], cut and len(found) < wanted
            n = min(n * 4, TIES_MAX)

    found, cut = await through_kinds(read, start, kinds, want)
    page = found[:limit]  # the cursor is the last one read, shown or not (unreadable)
    events = [e for e in (readable_event(d) for _, d in page) if e is not None]
    return events, encode_cursor(page[-1][0]) if len(found) > limit else None, cut
