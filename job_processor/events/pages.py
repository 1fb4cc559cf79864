"""Pages of `list_events` past a cursor, newest first (emitted_at desc, then id desc: a stable
order even when events share their time), for the CLI's `events list --cursor` and the
dashboard's Events page. The cursor is the last event shown: its time (ms) and id."""

from __future__ import annotations

import base64
import datetime as dt

from bson import ObjectId
from bson.errors import InvalidId

from ..core.clock import as_utc
from ..core.errors import InvalidArgumentError
from ..core.models import Event
from ..storage import Storage
from .queries import LIST_LIMIT, check_limit, read_events

#: Past a cursor, the events of the cursor's second are read again and those already shown
#: dropped (nx-27017 compares dates to the second): read this many more, growing up to
#: TIES_MAX when a burst was emitted within that second.
TIES_SLACK = 100
TIES_MAX = 10_000

Position = tuple[dt.datetime, str]


def encode_cursor(event: Event) -> str:
    ms = int(as_utc(event.emitted_at).timestamp() * 1000)
    return base64.urlsafe_b64encode(f"{ms}.{event.id}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()).decode()
        ms, oid = raw.split(".")
        at = dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC)
        if at.year >= 9999:  # the page reads up to the end of its second: one more must fit
            raise ValueError(at)
        return at, str(ObjectId(oid))
    except (ValueError, TypeError, InvalidId, UnicodeDecodeError, OverflowError, OSError):
        raise InvalidArgumentError(
            f"cursor {token!r} is not a cursor of an events listing: pass it as it was given "
            "(the --cursor printed by events list, the Events page's Older link)"
        ) from None


def _older(event: Event, position: Position) -> bool:
    """After `position` in listing order (emitted_at desc, id desc)."""
    at = as_utc(event.emitted_at)
    return at < position[0] or (at == position[0] and event.id < position[1])


async def event_page(
    storage: Storage,
    name: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    before: Position | None,
) -> tuple[list[Event], str | None, bool]:
    """One page of events newest first, the next page's cursor, and whether a burst of more than
    TIES_MAX events in one second cut the page short."""
    want = check_limit(limit, LIST_LIMIT) + 1  # one more is read: is there more?
    if before is None:
        found = await read_events(storage, name, since, until, want)
        cut = False
    else:
        # list_events' `until` is exclusive, and nx-27017 compares to the second: bound the
        # read by the end of the cursor's second and drop what was already shown
        bound = before[0].replace(microsecond=0) + dt.timedelta(seconds=1)
        hi = bound if until is None else min(until, bound)
        n = want + TIES_SLACK
        while True:
            got = await read_events(storage, name, since, hi, n)
            found = [e for e in got if _older(e, before)]
            cut = len(got) == n and n >= TIES_MAX
            if len(found) >= want or len(got) < n or cut:
                break
            n = min(n * 4, TIES_MAX)
    page = found[:limit]
    more = len(found) > limit
    return page, encode_cursor(page[-1]) if more and page else None, cut and len(found) < want
