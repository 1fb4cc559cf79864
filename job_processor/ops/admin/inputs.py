"""The admin verbs' input checks: durations, times, page cursors, payloads, limits, ids; and
who acts. Bad input raises InvalidArgumentError (or InvalidPayloadError) naming the field and
the fix."""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import bson
from bson import Decimal128, ObjectId

from ...core import documents as D
from ...core.clock import iso_utc, to_millis
from ...core.errors import (
    InvalidArgumentError,
    InvalidDefinitionError,
    InvalidPayloadError,
    JobNotFoundError,
)
from ...core.models import Job
from ...core.settings import check_positive, check_prefix
from ...core.values import TOO_DEEP, checked_payload
from ...storage import JobQuery
from ...storage.jobs import MAX_VALUE_BYTES, object_id

Doc = dict[str, Any]

#: Jobs per page when not given; pages hold at most MAX_LIMIT.
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: Jobs one retry_many / bulk action touches at most.
MAX_BULK = 10_000
#: End times read per status for the jobs-per-minute figures.
THROUGHPUT_CAP = 20_000


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest duration parse_duration takes (a cutoff `now - duration` stays a valid date).
MAX_DURATION = dt.timedelta(days=36_500)


def parse_duration(value: str | dt.timedelta | float, field: str = "older_than") -> dt.timedelta:
    """ "90s", "30m", "12h", "7d", "2w", a timedelta, or seconds."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise InvalidArgumentError(
            f"{field} {value!r} is not a duration: use a number and a unit, e.g. 90s, 30m, 12h, "
            "7d or 2w"
        )
    if not seconds > 0:  # NaN too
        raise InvalidArgumentError(f"{field} must be positive, got {value!r}")
    if seconds > MAX_DURATION.total_seconds():  # `now - duration` must stay a date
        raise InvalidArgumentError(
            f"{field} {value!r} is too long: at most {MAX_DURATION.days}d (100 years)"
        )
    return dt.timedelta(seconds=seconds)


def parse_time(value: str | dt.datetime | None, field: str) -> dt.datetime | None:
    """An aware datetime or ISO 8601 text (a time without offset is taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            # RFC 3339: "Z", as "T", may be lower case
            value = dt.datetime.fromisoformat(value.strip().upper().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgumentError(
                f"{field} {value!r} is not a date: use ISO 8601, e.g. 2030-01-31T09:00:00Z"
            ) from None
    if not isinstance(value, dt.datetime):
        raise InvalidArgumentError(f"{field} must be a datetime or ISO 8601 text, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return to_millis(value)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidArgumentError(
            f"{field} {value.isoformat()!r} is out of range: in UTC it falls outside years "
            "1 to 9999"
        ) from None


def encode_cursor(doc: Doc) -> str:
    """The position after `doc` (its creation time and id). A document another program
    inserted has no `created_at` until its first claim: it is sorted last, among the undated
    jobs (`u`), which follow by `_id`; an `_id` of its own that is not an ObjectId is kept with
    its type (`i:`, `f:`, `d:` numbers, `s:` text)."""
    created = doc.get("created_at")
    oid = doc["_id"]
    if isinstance(oid, ObjectId):
        shown = str(oid)
    elif isinstance(oid, int | float) and not isinstance(oid, bool):  # its type kept
        shown = f"{'i' if isinstance(oid, int) else 'f'}:{oid!r}"
    elif isinstance(oid, Decimal128):
        shown = f"d:{oid}"
    else:
        shown = f"s:{oid}"
    if isinstance(created, dt.datetime):
        at: int | str = D.epoch_ms(created)
    elif created is None:  # among the undated jobs, by `_id`
        at = "u"
    else:  # another program's text or number (sorted between): the undated jobs follow
        at = 0
    raw = f"{at}.{shown}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[dt.datetime | None, Any]:
    """A position: its creation time (None among the undated jobs) and its `_id`."""
    try:
        padded = token + "=" * (-len(token) % 4)
        ms, oid = base64.urlsafe_b64decode(padded.encode()).decode().split(".", 1)
        kinds: dict[str, Any] = {"s:": str, "i:": int, "f:": float, "d:": Decimal128}
        kind = kinds.get(oid[:2])
        shown = kind(oid[2:]) if kind else ObjectId(oid)
        if ms == "u":
            return None, shown
        return to_millis(dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC)), shown
    except (
        ValueError,
        TypeError,
        bson.errors.InvalidId,
        UnicodeDecodeError,
        OverflowError,  # a time past year 9999
        ArithmeticError,  # a `d:` id that is no Decimal128, or past its range
        OSError,  # a time the platform's C library cannot convert
    ):
        raise InvalidArgumentError(
            f"cursor {token!r} is not a cursor of a job listing: pass it as it was given (the "
            "next_cursor of list_jobs and /api/jobs, the --cursor printed by jobs list)"
        ) from None


def check_payload(name: str, payload: Any) -> dict[str, Any]:
    """JSON text or a dict; must be a JSON object that BSON can store (under ~15 MB)."""
    if payload is None or payload == "":
        return {}
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload, parse_int=_json_int)
        except RecursionError:
            raise InvalidPayloadError(f"job {name!r}: payload {TOO_DEEP}") from None
        except json.JSONDecodeError as exc:
            raise InvalidPayloadError(
                f"job {name!r}: payload is not valid JSON ({exc.msg} at line {exc.lineno} "
                f'column {exc.colno}); give a JSON object such as {{"to": "a@b.c"}}'
            ) from None
        try:
            long = _long_integer_at(payload)
        except RecursionError:
            raise InvalidPayloadError(f"job {name!r}: payload {TOO_DEEP}") from None
        if long is not None:
            where, digits = long
            field = f"payload field {where!r}" if where else "payload"
            raise InvalidPayloadError(
                f"job {name!r}: {field} is an integer of {digits} digits: MongoDB's integers "
                "have 64 bits (19 digits at most): store it as a string"
            )
    if not isinstance(payload, Mapping):
        raise InvalidPayloadError(
            f"job {name!r}: payload must be a JSON object ({{...}}), got {type(payload).__name__}"
        )
    return checked_payload("job", name, payload, MAX_VALUE_BYTES)


class _LongInteger:
    """An integer of a JSON text longer than Python reads (`sys.get_int_max_str_digits()`,
    4,300 digits): kept as its number of digits, to be refused naming its field."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _json_int(text: str) -> int | _LongInteger:
    try:
        return int(text)
    except ValueError:  # past the digits Python converts: no int64 anyway
        return _LongInteger(len(text.lstrip("-")))


def _long_integer_at(value: Any, path: str = "") -> tuple[str, int] | None:
    """Where a payload read from JSON holds an integer too long to read, and its digits."""
    if isinstance(value, _LongInteger):
        return path, value.digits
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for where, item in items:
        found = _long_integer_at(item, where)
        if found is not None:
            return found
    return None


def limit_of(value: Any, field: str = "limit", most: int = MAX_LIMIT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{field} must be a positive integer, got {value!r}")
    return min(value, most)


def ids_of(
    job_ids: str | ObjectId | Iterable[str | ObjectId],
    *,
    empty_ok: bool = False,
    most: int | None = None,
    instead: str = "",
) -> list[ObjectId]:
    """Job ids as given: one (a str, an ObjectId, a Job) or an iterable of them (an empty one
    refused unless `empty_ok`). An action's ids (`most`: MAX_BULK) are refused past that many,
    before anything is done, naming `instead` (what acts on more)."""
    given: Any = job_ids
    items: Iterable[Any]
    if isinstance(given, str | ObjectId | Job):
        items = [given]
    elif isinstance(given, Iterable) and not isinstance(given, bytes | Mapping):
        items = given
    else:
        raise InvalidArgumentError(
            f"job_ids must be a job id (a str of 24 hex characters) or a list of them, got a "
            f"{type(given).__name__}"
        )
    unique: dict[ObjectId, None] = {}  # an id given twice is acted on, and reported, once
    for item in items:  # read only up to one past `most`: a huge generator is not built
        try:
            unique[object_id(item)] = None
        except JobNotFoundError as exc:
            raise InvalidArgumentError(str(exc)) from None
        if most is not None and len(unique) > most:
            # each id is a round trip, and the audit entry lists the first 1,000 only
            raise InvalidArgumentError(
                f"job_ids holds more than {most:,} ids: an action takes at most {most:,} "
                f"(MAX_BULK); nothing was done: give them in batches of {most:,}{instead}"
            )
    if not unique and not empty_ok:
        raise InvalidArgumentError("give at least one job id")
    return list(unique)


def one_id(job_id: str | ObjectId) -> ObjectId:
    """One job id (a str, an ObjectId, a Job), or InvalidArgumentError."""
    if not isinstance(job_id, str | ObjectId | Job):
        raise InvalidArgumentError(
            f"job_id must be a job id (a str of 24 hex characters), got a {type(job_id).__name__}"
        )
    return ids_of(job_id)[0]


def check_options(collection_prefix: Any, clock: Any, worker_timeout: Any) -> None:
    """An Admin's options, refused as init_job_processor refuses them (InvalidArgumentError
    naming the option): a wrong one surfaced later as a bare TypeError (a worker_timeout of
    "30" at the first worker document without its own timeout) or read the wrong collections
    (a prefix of "")."""
    try:
        check_prefix(collection_prefix)
        check_positive("worker_timeout", worker_timeout)
    except InvalidDefinitionError as exc:
        raise InvalidArgumentError(str(exc)) from None
    if clock is not None and not (
        callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))
    ):
        raise InvalidArgumentError(
            f"clock must have now() and sleep() (job_processor.SystemClock(), or FakeClock() "
            f"in tests), got {clock!r:.60}"
        )


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def describe_query(query: JobQuery) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("name", "tag", "key"):
        if getattr(query, field) is not None:
            out[field] = getattr(query, field)
    if query.status is not None:
        out["status"] = query.status.value
    for field in ("created_after", "created_before"):
        value = getattr(query, field)
        if value is not None:
            out[field] = iso_utc(value)
    return out
