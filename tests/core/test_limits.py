"""Limit maths (pure): slots, the sliding rate window, when a start is allowed again."""

from __future__ import annotations

import datetime as dt

import pytest

from job_processor import JobDef
from job_processor.core.definitions import Limit
from job_processor.core.errors import InvalidDefinitionError
from job_processor.core.limits import check_limits, plan, taken

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MS = int(NOW.timestamp() * 1000)


def test_concurrency_grants_what_is_free() -> None:
    limit = Limit(key="mail", concurrency=3)
    assert plan({"running": 0}, limit, 5, NOW).slots == 3
    assert plan({"running": 2}, limit, 5, NOW).slots == 1
    full = plan({"running": 3}, limit, 1, NOW)
    assert (full.slots, full.retry_at) == (0, None)  # wait for a slot to free


def test_rate_counts_starts_in_the_sliding_window_and_says_when_one_is_allowed() -> None:
    limit = Limit(key="api", rate=2, per_seconds=10)
    starts = {"a": MS - 9_000, "b": MS - 4_000, "old": MS - 11_000}  # "old" left the window
    grant = plan({"starts": starts}, limit, 5, NOW)
    assert grant.slots == 0
    assert grant.retry_at == NOW + dt.timedelta(seconds=1)  # when "a" leaves the window
    assert plan({"starts": {"b": MS - 4_000}}, limit, 5, NOW).slots == 1


def test_both_limits_apply() -> None:
    limit = Limit(key="k", concurrency=5, rate=2, per_seconds=1)
    assert plan({"running": 0, "starts": {}}, limit, 10, NOW).slots == 2
    assert plan({"running": 4, "starts": {}}, limit, 10, NOW).slots == 1


def test_taking_slots_records_holders_and_starts_and_drops_old_starts() -> None:
    limit = Limit(key="k", concurrency=5, rate=3, per_seconds=10)
    doc = {"rev": 4, "running": 1, "starts": {"old": MS - 20_000, "x": MS - 1_000}}
    update = taken(doc, limit, ["r1", "r2"], "w1", NOW)
    assert update["$inc"] == {"running": 2}
    assert update["$set"]["rev"] == 5
    assert update["$set"]["starts"] == {"x": MS - 1_000, "r1": MS, "r2": MS}
    assert update["$set"]["holders.r1"] == {"worker_id": "w1", "at_ms": MS}


def test_limit_definitions_are_checked() -> None:
    with pytest.raises(ValueError, match="give concurrency=N"):
        Limit(key="k")
    with pytest.raises(ValueError, match="rate and per_seconds go together"):
        Limit(key="k", rate=5)
    a = JobDef(handler=lambda j, s: None, limit=Limit(key="mail", concurrency=3))
    b = JobDef(handler=lambda j, s: None, limit=Limit(key="mail", concurrency=4))
    assert set(check_limits({"a": a, "c": a})) == {"mail"}
    with pytest.raises(InvalidDefinitionError, match="limit 'mail' is declared differently"):
        check_limits({"a": a, "b": b})
