"""Limit documents on the three backends: races for slots, one release per slot."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from job_processor.core.definitions import Limit
from job_processor.storage import Storage

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def storage(any_db: Any) -> Storage:
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    return s


async def test_racing_workers_never_take_more_slots_than_the_limit(storage: Storage) -> None:
    limit = Limit(key="mail", concurrency=3)
    results = await asyncio.gather(
        *(storage.limits.acquire(limit, [f"r{i}"], f"w{i}", NOW) for i in range(10))
    )
    granted = [ids for ids, _ in results if ids]
    assert len(granted) <= 3
    while len(granted) < 3:  # contention may have left some unused: take them now
        ids, _ = await storage.limits.acquire(limit, [f"x{len(granted)}"], "w", NOW)
        granted.append(ids)
    assert (await storage.limits.acquire(limit, ["late"], "w", NOW))[0] == []
    doc = await storage.limits.get("mail")
    assert doc is not None
    assert doc["running"] == 3
    assert len(doc["holders"]) == 3


async def test_a_slot_is_given_back_once(storage: Storage) -> None:
    limit = Limit(key="mail", concurrency=1)
    assert (await storage.limits.acquire(limit, ["r1"], "w1", NOW))[0] == ["r1"]
    results = await asyncio.gather(*(storage.limits.release("mail", "r1") for _ in range(5)))
    assert results.count(True) == 1
    doc = await storage.limits.get("mail")
    assert doc is not None
    assert (doc["running"], doc["holders"]) == (0, {})
    assert (await storage.limits.acquire(limit, ["r2"], "w1", NOW))[0] == ["r2"]


async def test_rate_window_and_unused_reservations(storage: Storage) -> None:
    limit = Limit(key="api", rate=2, per_seconds=10)
    ids, _ = await storage.limits.acquire(limit, ["a", "b", "c"], "w", NOW)
    assert ids == ["a", "b"]
    none, retry_at = await storage.limits.acquire(limit, ["d"], "w", NOW)
    assert none == []
    assert retry_at == NOW + dt.timedelta(seconds=10)
    assert await storage.limits.release("api", "b", started=False)  # b never started
    assert (await storage.limits.acquire(limit, ["e"], "w", NOW))[0] == ["e"]
    later = NOW + dt.timedelta(seconds=11)  # a and e left the window
    assert (await storage.limits.acquire(limit, ["f", "g", "h"], "w", later))[0] == ["f", "g"]


class _Counting:
    """A collection that counts the commands sent through it."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.coll, name)


async def test_a_new_key_is_created_holding_its_slots_in_two_commands(storage: Storage) -> None:
    # a per-tenant limit makes a document per new tenant: a read and an insert that takes the
    # slots (it was a read, an empty insert, a read again and the compare-and-set)
    limit = Limit(key="tenant:acme", concurrency=2)
    counting = _Counting(storage.limits.coll)
    storage.limits.coll = counting
    ids, retry_at = await storage.limits.acquire(
        limit, ["r1", "r2", "r3"], "w1", NOW, "tenant:{tenant_id}"
    )
    assert (ids, retry_at) == (["r1", "r2"], None)
    assert counting.calls == ["find_one", "insert_one"]
    doc = await storage.limits.get("tenant:acme")
    assert doc is not None
    ms = int(NOW.timestamp() * 1000)  # a rev no earlier document of the key had
    assert (doc["rev"], doc["running"], sorted(doc["holders"])) == (ms, 2, ["r1", "r2"])
    assert doc["holders"]["r1"] == {"worker_id": "w1", "at_ms": int(NOW.timestamp() * 1000)}
    assert (doc["template"], doc["concurrency"]) == ("tenant:{tenant_id}", 2)
    assert (await storage.limits.acquire(limit, ["r4"], "w2", NOW))[0] == []  # full
    assert await storage.limits.release("tenant:acme", "r1")
    assert (await storage.limits.acquire(limit, ["r5"], "w2", NOW))[0] == ["r5"]


async def test_a_new_rate_limited_key_records_its_starts(storage: Storage) -> None:
    limit = Limit(key="api:{user}", rate=2, per_seconds=10)
    assert (await storage.limits.acquire(limit, ["a", "b", "c"], "w", NOW))[0] == ["a", "b"]
    doc = await storage.limits.get("api:{user}")
    assert doc is not None
    ms = int(NOW.timestamp() * 1000)
    assert doc["starts"] == {"a": ms, "b": ms}
    none, retry_at = await storage.limits.acquire(limit, ["d"], "w", NOW)
    assert (none, retry_at) == ([], NOW + dt.timedelta(seconds=10))


@pytest.mark.parametrize("running", ["x", {"n": 1}, None])
async def test_a_full_key_with_a_damaged_running_is_still_swept(
    storage: Storage, running: Any, request: pytest.FixtureRequest
) -> None:
    """A key whose `running` another program wrote as no number reads as its holders' count
    (full here): the sweep's `holding` asked only for `running > 0`, which on MongoDB (and, for
    a null, on nx-27017) matches no text, document or null, so a dead worker's slot was never
    given back and the key admitted no job again, for ever."""
    holder = {"worker_id": "dead", "at_ms": 0}
    await storage.limits.coll.insert_one(
        {"_id": "api", "rev": 1, "running": running, "holders": {"r1": holder}}
    )
    limit = Limit(key="api", concurrency=1)
    assert (await storage.limits.acquire(limit, ["a"], "w", NOW))[0] == []  # full
    assert [d["_id"] for d in await storage.limits.holding()] == ["api"]
    if "mongomock" in request.node.callspec.id:
        return  # its $inc on a non-number raises a TypeError, not MongoDB's WriteError
    assert await storage.limits.release("api", "r1")
    assert (await storage.limits.acquire(limit, ["a"], "w", NOW))[0] == ["a"]
