"""What MongoDB can store, checked before a write: payloads and checkpoint states (and the
naive datetimes refused in results too).

One rule for every value a job or an event carries: a dict BSON can encode, with no datetime
without a time zone (it would be read back as UTC) and no NaN or infinity (JSON has no such
number), that fits. When a value cannot be stored,
the error names its path (`order.lines[2].price`), its type and the conversion that fixes it.
Only the error path walks the value: a storable one costs one `bson.encode` (and one scan of
its bytes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import re
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import bson
from pydantic import BaseModel

from .errors import InvalidPayloadError
from .payload_forms import secret_message, secret_stored_as_mask

Doc = dict[str, Any]

MIB = 1024 * 1024
#: What breaks an encoding (bson's own errors, an int over 64 bits, a bad key).
ENCODING_ERRORS = (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError)

#: MongoDB's integers.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


def non_finite_at(value: Any, path: str = "") -> tuple[str, float] | None:
    """The path and value of the first NaN or infinity in a value, or None. They are refused in
    payloads and checkpoint states: JSON (webhooks, the dashboard, `--json`) has no such
    number, and not every server stores them."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "(the value)", value)
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = non_finite_at(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = non_finite_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


#: Two bytes every NaN or infinity has in its little-endian encoding (its top 12 bits are set):
#: a value whose BSON has none of them holds none, and is not walked.
_NON_FINITE_TOP = re.compile(rb"[\xf0-\xff][\x7f\xff]")


def may_hold_non_finite(encoded: bytes) -> bool:
    """False when BSON bytes surely hold no NaN or infinity (one scan, no walk)."""
    return _NON_FINITE_TOP.search(encoded) is not None


def refuse_non_finite(what: str, value: Any, encoded: bytes | None = None) -> None:
    """InvalidPayloadError naming the field when `value` holds NaN or infinity (`encoded`: its
    BSON, when at hand, spares the walk of a value that holds none)."""
    if encoded is not None and not may_hold_non_finite(encoded):
        return
    found = non_finite_at(value)
    if found is not None:
        path, number = found
        raise InvalidPayloadError(
            f"{what} field {path!r} is {number!r}: NaN and infinity are not stored (JSON has no "
            "such number): store None, or a str such as 'nan'"
        )


def finite_or_text(value: Any) -> Any:
    """A result as stored: NaN and infinity as their text ('nan', 'inf', '-inf'), as anything
    else BSON or JSON cannot hold is stored as its repr()."""
    if isinstance(value, float):  # a subclass (numpy.float64) too, written as plain text
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: finite_or_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_text(v) for v in value]
    return value


class CyclicValue(ValueError):
    """A dict or list that holds itself (at `path`): BSON cannot store it."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path!r} holds itself (a cycle)")


def naive_datetime_at(
    value: Any, path: str = "", _within: tuple[Any, ...] = ()
) -> tuple[str, dt.datetime] | None:
    """The path ("a.b[2]") and value of the first naive datetime in a payload, or None: one rule
    for every datetime a job or event carries (scheduled_for refuses them too). Raises
    CyclicValue for a dict or list found inside itself (`_within`: the containers above)."""
    if isinstance(value, dt.datetime):
        return (path or "(payload)", value) if value.utcoffset() is None else None
    if isinstance(value, Mapping | list | tuple):
        if any(value is outer for outer in _within):
            raise CyclicValue(path)
        within = (*_within, value)
        if isinstance(value, Mapping):
            for key, item in value.items():
                at = f"{path}.{key}" if path else str(key)
                if isinstance(key, dt.datetime) and key.utcoffset() is None:  # a model's dict key
                    return (at, key)
                found = naive_datetime_at(item, at, within)
                if found is not None:
                    return found
        else:
            for i, item in enumerate(value):
                found = naive_datetime_at(item, f"{path}[{i}]", within)
                if found is not None:
                    return found
    return None


#: A payload or checkpoint nested deeper than Python's stack (BSON could not encode it either).
TOO_DEEP = "is nested too deeply to be stored (hundreds of levels): flatten it"


def cycle_message(what: str, exc: CyclicValue) -> str:
    return (
        f"{what} field {exc.path!r} holds the dict or list that contains it (a cycle), which "
        "MongoDB cannot store: pass a copy without the cycle"
    )


def conversion(value: Any) -> str:
    """How to make a value BSON cannot hold storable, by its type."""
    if isinstance(value, dt.date | dt.time):  # not a datetime: that one BSON holds
        return "store value.isoformat() (a str), or a datetime with a time zone"
    if isinstance(value, decimal.Decimal):
        return "store str(value) (exact) or float(value)"
    if isinstance(value, uuid.UUID):
        return "store str(value)"
    if isinstance(value, set | frozenset):
        return "store a list: sorted(value) or list(value)"
    if isinstance(value, enum.Enum):
        return "store value.value (or derive the enum from str or int)"
    if isinstance(value, int):
        return "MongoDB's integers have 64 bits: store str(value)"
    if isinstance(value, bytearray | memoryview):
        return "store bytes(value)"
    if isinstance(value, BaseModel):
        return "store value.model_dump(mode='json')"
    if hasattr(value, "__dataclass_fields__"):
        return "store dataclasses.asdict(value)"
    return "convert it to str, int, float, bool, None, a datetime, a list or a dict"


def unstorable_at(value: Any, path: str = "") -> tuple[str, str, str] | None:
    """The path of the first part of `value` MongoDB cannot store, what it is and what to do
    about it, or None. Each leaf is judged by bson itself: the answer agrees with the driver."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                where = f"{path}[{key!r}]" if path else f"[{key!r}]"
                return (
                    where,
                    f"a key of type {type(key).__name__}",
                    "keys must be str, e.g. str(key)",
                )
            if "\0" in key:
                where = f"{path}.{key!r}" if path else repr(key)
                return where, "a key with a NUL character", "remove it from the key"
            if not is_utf8(key):
                where = f"{path}.{key!r}" if path else repr(key)
                return where, "a key with a lone surrogate, not UTF-8", SURROGATE_FIX
            found = unstorable_at(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unstorable_at(item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(value, str) and not is_utf8(value):
        return path or "(the value)", "a str with a lone surrogate, not UTF-8", SURROGATE_FIX
    try:
        bson.encode({"v": value})
    except ENCODING_ERRORS:
        return path or "(the value)", f"type {type(value).__name__}", conversion(value)
    return None


#: What to do about a str holding half of a UTF-16 pair ("\ud800", e.g. from JSON's "\ud800").
SURROGATE_FIX = "remove the unpaired surrogate (\\ud800-\\udfff) or decode the text correctly"


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def why_unstorable(what: str, value: Any, exc: Exception) -> str:
    """`what` ("job 'send': payload") cannot be stored: where and how to fix it."""
    found = unstorable_at(value)
    if found is None:  # bson refused the whole and no part: say what it said
        return f"{what} cannot be stored in MongoDB ({exc})"
    path, kind, fix = found
    return f"{what} field {path!r} cannot be stored in MongoDB ({kind}): {fix}"


def checked_payload(kind: str, name: str, payload: Any, max_bytes: int) -> Doc:
    """A job's or an event's payload as stored: a dict (or a pydantic model, as JSON) that BSON
    can hold and that fits; otherwise InvalidPayloadError naming the job or event, the field
    and the fix."""
    if payload is None:
        return {}
    if isinstance(payload, BaseModel):
        model = type(payload)
        form = json_form(kind, name, payload)
        check_model_datetimes(kind, name, payload, read_back(model, form))
        masked = secret_stored_as_mask(payload, form, computed=False)
        if masked is not None:
            raise InvalidPayloadError(f"{kind} {name!r}: {secret_message(masked, model.__name__)}")
        payload = form
    if not isinstance(payload, Mapping):
        raise InvalidPayloadError(
            f"{kind} {name!r}: payload must be a dict, got {type(payload).__name__}"
        )
    try:
        naive = naive_datetime_at(payload)
    except CyclicValue as exc:
        raise InvalidPayloadError(cycle_message(f"{kind} {name!r}: payload", exc)) from None
    except RecursionError:
        raise InvalidPayloadError(f"{kind} {name!r}: payload {TOO_DEEP}") from None
    if naive is not None:
        raise InvalidPayloadError(naive_message(kind, name, *naive))
    try:
        encoded = bson.encode(dict(payload))
    except ENCODING_ERRORS as exc:
        raise InvalidPayloadError(
            why_unstorable(f"{kind} {name!r}: payload", payload, exc)
        ) from None
    refuse_non_finite(f"{kind} {name!r}: payload", payload, encoded)
    size = len(encoded)
    if size > max_bytes:
        raise InvalidPayloadError(
            f"{kind} {name!r}: payload is {size / MIB:.1f} MiB ({size} bytes), over the "
            f"{max_bytes / MIB:.0f} MiB a {kind} can carry (MongoDB's documents hold 16 MiB): "
            "store the data elsewhere (GridFS, object storage) and pass a reference"
        )
    return dict(payload)


def naive_message(kind: str, name: str, path: str, value: Any) -> str:
    return (
        f"{kind} {name!r}: payload field {path!r} is a datetime without a time zone "
        f"({value.isoformat()}); it would be read back as UTC: pass an aware datetime, "
        "e.g. datetime.now(UTC) or value.replace(tzinfo=ZoneInfo('Europe/Paris'))"
    )


def json_form(kind: str, name: str, value: BaseModel, **options: Any) -> Doc:
    """A model's JSON form; its dump's own errors (a cycle, too deep) said as the payload's."""
    try:
        dumped: Doc = value.model_dump(mode="json", **options)
    except RecursionError:
        raise InvalidPayloadError(f"{kind} {name!r}: payload {TOO_DEEP}") from None
    except ValueError as exc:  # pydantic: "Circular reference detected", a depth exceeded
        raise InvalidPayloadError(f"{kind} {name!r}: payload cannot be stored: {exc}") from None
    return dumped


def check_model_datetimes(kind: str, name: str, value: BaseModel, back: Any) -> None:
    """A naive datetime its consumer would read back is refused (the JSON form is text, which
    the naive check cannot tell): one the model carries, or one a JSON serializer writes
    without its offset; not one a serializer writes aware, nor a computed field that is not
    stored. `back`: the stored form as its consumer reads it (`read_back`; None when it cannot:
    then the dump's naive datetimes are refused, as the stored text is naive)."""
    try:
        found = naive_datetime_at(back if back is not None else value.model_dump())
    except CyclicValue as exc:
        raise InvalidPayloadError(cycle_message(f"{kind} {name!r}: payload", exc)) from None
    except RecursionError:
        raise InvalidPayloadError(f"{kind} {name!r}: payload {TOO_DEEP}") from None
    except InvalidPayloadError:
        raise
    except ValueError as exc:  # pydantic's dump: "Circular reference detected", ...
        raise InvalidPayloadError(f"{kind} {name!r}: payload cannot be stored: {exc}") from None
    if found is not None:
        raise InvalidPayloadError(naive_message(kind, name, *found))


def read_back(model: type[BaseModel], form: Doc) -> Any:
    """The JSON form read back through the model, as the consumer holds it: its attributes'
    values (not its dump, which a serializer of every mode would write as text; no computed
    field)."""
    try:
        return held(model.model_validate(form))
    except ValueError:  # a ValidationError: not read back (the consumer says why)
        return None


def held(value: Any) -> Any:
    """A value as a handler holds it, in plain containers: a model's or a dataclass's fields
    (a model's extra keys too) by name; lists, tuples and sets as lists."""
    if isinstance(value, BaseModel):
        fields = {k: getattr(value, k, None) for k in type(value).model_fields}
        return {k: held(v) for k, v in (fields | (value.__pydantic_extra__ or {})).items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: held(getattr(value, f.name, None)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: held(v) for k, v in value.items()}
    if isinstance(value, Collection) and not isinstance(value, str | bytes | bytearray):
        return [held(v) for v in value]  # lists, tuples, sets, deques
    return value
