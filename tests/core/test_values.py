"""What MongoDB cannot store is named by its path, its type and the conversion that fixes it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum

import pytest

from job_processor.core.errors import InvalidPayloadError
from job_processor.core.values import checked_payload, unstorable_at


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    ("payload", "path", "kind", "fix"),
    [
        ({"when": dt.date(2026, 1, 2)}, "when", "type date", "value.isoformat()"),
        ({"at": dt.time(9, 30)}, "at", "type time", "value.isoformat()"),
        (
            {"order": {"lines": [1, decimal.Decimal("9.90")]}},
            "order.lines[1]",
            "type Decimal",
            "str(value)",
        ),
        ({"tags": {"a", "b"}}, "tags", "type set", "sorted(value)"),
        ({"color": Color.RED}, "color", "type Color", "value.value"),
        ({"n": 2**64}, "n", "type int", "64 bits"),
        ({"p": Point(1)}, "p", "type Point", "dataclasses.asdict(value)"),
        ({"raw": bytearray(b"x")}, "raw", "type bytearray", "bytes(value)"),
        ({"by_id": {7: "x"}}, "by_id[7]", "a key of type int", "str(key)"),
    ],
)
def test_the_first_unstorable_part_is_named_with_its_fix(
    payload: dict[str, object], path: str, kind: str, fix: str
) -> None:
    found = unstorable_at(payload)
    assert found is not None
    assert found[:2] == (path, kind)
    assert fix in found[2]
    with pytest.raises(InvalidPayloadError) as err:
        checked_payload("job", "send", payload, 10**6)
    assert str(err.value).startswith(f"job 'send': payload field {path!r} cannot be stored")


def test_storable_values_pass_unchanged() -> None:
    payload = {
        "s": "x",
        "n": 2**62,
        "f": 1.5,
        "ok": True,
        "none": None,
        "at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        "blob": b"x",
        "rows": [{"a": (1, 2)}],
    }
    assert unstorable_at(payload) is None
    assert checked_payload("event", "paid", payload, 10**6) == payload
