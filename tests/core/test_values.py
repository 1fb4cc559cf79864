"""What MongoDB cannot store is named by its path, its type and the conversion that fixes it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import struct
import types

import bson
import pytest

from job_processor.core.errors import InvalidPayloadError
from job_processor.core.notes import log_line
from job_processor.core.values import (
    checked_payload,
    finite_or_text,
    may_hold_non_finite,
    unstorable_at,
)


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
        ({"a": ["x", "\udfff"]}, "a[1]", "a str with a lone surrogate, not UTF-8", "surrogate"),
        (
            {"a": {"\ud800": 1}},
            "a.'\\ud800'",
            "a key with a lone surrogate, not UTF-8",
            "surrogate",
        ),
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


@pytest.mark.parametrize(
    ("payload", "path", "shown"),
    [
        ({"x": float("nan")}, "x", "nan"),
        ({"rows": [{"price": 1.0}, {"price": float("inf")}]}, "rows[1].price", "inf"),
        ({"t": (0.5, -math.inf)}, "t[1]", "-inf"),
    ],
)
def test_nan_and_infinity_are_refused_with_the_field_named(
    payload: dict[str, object], path: str, shown: str
) -> None:
    with pytest.raises(InvalidPayloadError) as err:
        checked_payload("job", "send", payload, 10**6)
    assert str(err.value).startswith(f"job 'send': payload field {path!r} is {shown}:")
    assert "store None, or a str" in str(err.value)


def test_the_byte_scan_never_misses_a_non_finite_number_and_spares_ordinary_values() -> None:
    for number in (
        math.nan,
        -math.nan,
        math.inf,
        -math.inf,
        struct.unpack("<d", b"\x01" * 6 + b"\xf8\xff")[0],
    ):
        assert not math.isfinite(number)
        assert may_hold_non_finite(bson.encode({"v": number}))
    # (a negative integer's bytes may match: then the value is walked, and passes)
    ordinary = {"s": "é😀 text", "n": [0, 1, 2**40, 2**62], "f": [0.1, -1e300, 5e-324]}
    assert not may_hold_non_finite(bson.encode(ordinary))
    assert checked_payload("job", "x", {"n": -1, "f": -2.5}, 10**6) == {"n": -1, "f": -2.5}


def test_results_and_log_fields_keep_nan_and_infinity_as_text() -> None:
    assert finite_or_text({"a": [math.nan, 1.5], "b": math.inf}) == {"a": ["nan", 1.5], "b": "inf"}

    class Float64(float):  # as numpy's, whose repr() is "np.float64(nan)"
        def __repr__(self) -> str:
            return f"np.float64({float(self)!r})"

    proxy = types.MappingProxyType({"x": Float64("nan"), "y": (Float64("-inf"), Float64(2.0))})
    assert finite_or_text(proxy) == {"x": "nan", "y": ["-inf", 2.0]}
    fields = {"x": math.nan, "y": -math.inf, "big": 2**70, "ok": 2.5}
    line = log_line(1, "info", "measured", fields, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert line["fields"] == {"x": "nan", "y": "-inf", "big": str(2**70), "ok": 2.5}
    bson.encode(line)  # storable
