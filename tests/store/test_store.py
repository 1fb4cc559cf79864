"""Storage verbs on nx-27017 (PyMongo async and motor) and mongomock-motor."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from job_processor.errors import JobNotFoundError
from job_processor.models import JobStatus
from job_processor.store import Store

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
async def store(any_db: Any) -> Store:
    s = Store(any_db, "t_")
    await s.ensure_indexes()
    await s.ensure_indexes()  # idempotent
    return s


async def add(store: Store, name: str = "a", **kw: Any) -> dict[str, Any]:
    return await store.insert_job(store.new_job(name, {"n": 1}, now=NOW, **kw))


async def test_claim_order_priority_then_time_then_insertion(store: Store) -> None:
    first = await add(store, scheduled_for=later(-30))
    second = await add(store, scheduled_for=later(-30))
    urgent = await add(store, scheduled_for=later(-1), priority=5)
    await add(store, scheduled_for=later(60))  # not due
    await add(store, name="other")  # not eligible
    got = []
    while (doc := await store.claim_next(["a"], "w1", NOW)) is not None:
        got.append(doc["_id"])
    assert got == [urgent["_id"], first["_id"], second["_id"]]


async def test_claim_sets_owner_and_run(store: Store) -> None:
    job = await add(store)
    doc = await store.claim_next(["a"], "w1", later(1))
    assert doc is not None
    assert doc["_id"] == job["_id"]
    assert doc["status"] == "running"
    assert doc["worker_id"] == "w1"
    assert doc["attempt"] == 1
    assert doc["run_started_at"] == later(1)
    assert doc["run_id"]
    assert await store.claim_next(["a"], "w2", later(2)) is None


async def test_concurrent_claims_never_share_a_job(store: Store) -> None:
    for _ in range(12):
        await add(store)
    results = await asyncio.gather(*(store.claim_next(["a"], f"w{i}", NOW) for i in range(16)))
    ids = [r["_id"] for r in results if r is not None]
    assert len(ids) == 12
    assert len(set(ids)) == 12


async def test_end_run_is_compare_and_set_on_the_run(store: Store) -> None:
    await add(store, exclusive=True)
    claimed = await store.claim_next(["a"], "w1", NOW)
    assert claimed is not None
    stale = claimed | {"run_id": "someone-else"}
    assert await store.end_run(stale, S.FINISHED, later(1), {"result": 1}) is None
    done = await store.end_run(claimed, S.FINISHED, later(2), {"result": 2})
    assert done is not None
    assert done["status"] == "finished"
    assert done["ended_at"] == later(2)
    assert done["started_at"] == NOW
    assert "exclusive_key" not in done
    assert done["output"] == {"result": 2}
    # a second final write (a zombie) changes nothing
    assert await store.end_run(claimed, S.ERRORED, later(3), {"error": "x"}) is None
    assert (await store.get_job(claimed["_id"]))["status"] == "finished"  # type: ignore[index]


async def test_pause_keeps_first_start_and_state_and_resume_keeps_them(store: Store) -> None:
    await add(store)
    claimed = await store.claim_next(["a"], "w1", NOW)
    assert claimed is not None
    assert await store.save_checkpoint(claimed["_id"], claimed["run_id"], {"i": 3}, later(1))
    paused = await store.end_run(claimed, S.PAUSED, later(2), None)
    assert paused is not None
    assert paused["status"] == "paused"
    assert paused["worker_id"] is None
    resumed = await store.claim_next(["a"], "w2", later(3))
    assert resumed is not None
    assert resumed["state"] == {"i": 3}
    assert resumed["started_at"] == NOW
    assert resumed["run_started_at"] == later(3)
    assert resumed["attempt"] == 2
    assert not await store.save_checkpoint(claimed["_id"], claimed["run_id"], {"i": 9}, later(4))


async def test_exclusive_insert_is_skipped_with_conflict_and_freed_at_the_end(store: Store) -> None:
    first = await add(store, exclusive=True)
    second = await add(store, exclusive=True)
    assert second["status"] == "skipped"
    assert second["conflicting_job_id"] == first["_id"]
    assert second["skip_reason"] == "exclusive"
    assert "exclusive_key" not in second
    claimed = await store.claim_next(["a"], "w", NOW)
    assert claimed is not None
    await store.end_run(claimed, S.ERRORED, later(1), {"error": "x"})
    third = await add(store, exclusive=True)
    assert third["status"] == "pending"


async def test_exclusive_race_creates_one_active_job(store: Store) -> None:
    docs = await asyncio.gather(*(add(store, exclusive=True) for _ in range(8)))
    assert sorted(d["status"] for d in docs).count("pending") == 1


async def test_kill_pending_running_and_ended(store: Store) -> None:
    pending = await add(store)
    outcome, doc = await store.kill(pending["_id"], later(1))
    assert (outcome, doc["status"]) == ("killed", "killed")
    await add(store, name="b")
    running = await store.claim_next(["b"], "w1", NOW)
    assert running is not None
    outcome, doc = await store.kill(running["_id"], later(2))
    assert (outcome, doc["status"]) == ("requested", "running")
    assert [d["_id"] for d in await store.kill_requests("w1")] == [running["_id"]]
    assert await store.kill_requests("w2") == []
    outcome, doc = await store.kill(pending["_id"], later(3))
    assert outcome == "ended"
    with pytest.raises(JobNotFoundError):
        await store.kill(ObjectId(), NOW)


async def test_recovery_happens_once_per_job(store: Store) -> None:
    await add(store)
    claimed = await store.claim_next(["a"], "dead", NOW)
    assert claimed is not None
    orphans = await store.orphaned_jobs(["alive"], later(31))
    assert [o["_id"] for o in orphans] == [claimed["_id"]]
    assert await store.orphaned_jobs(["dead"], later(31)) == []  # its worker is alive
    assert await store.orphaned_jobs(["alive"], NOW) == []  # claimed too recently
    results = await asyncio.gather(
        *(store.recover(orphans[0], S.ERRORED, "worker crashed", later(31), {}) for _ in range(5))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0]["status"] == "errored"
    assert winners[0]["output"]["error"] == "worker crashed"


async def test_workers_beat_and_stale_delete(store: Store) -> None:
    await store.register_worker({"_id": "w1", "last_seen": NOW, "hostname": "h", "pid": 1})
    assert await store.beat("w1", later(5))
    assert not await store.beat("ghost", later(5))
    (w,) = await store.list_workers()
    assert w["last_seen"] == later(5)
    assert not await store.delete_stale_worker("w1", later(5))
    assert await store.delete_stale_worker("w1", later(6))
    assert not await store.beat("w1", later(7))


async def test_counts(store: Store) -> None:
    await add(store)
    await add(store)
    await add(store, name="b")
    assert await store.counts_by_name(S.PENDING) == {"a": 2, "b": 1}
    assert await store.count({"status": "pending", "name": "a"}) == 2


async def test_final_write_survives_a_lost_reply(store: Store, monkeypatch: Any) -> None:
    """The write lands but the connection drops before the answer: the retry sees it applied."""
    from pymongo.errors import AutoReconnect

    await add(store)
    claimed = await store.claim_next(["a"], "w1", NOW)
    assert claimed is not None
    real = store.jobs.find_one_and_update
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await real(*args, **kwargs)
        if calls == 1:
            raise AutoReconnect("connection reset")
        return result

    monkeypatch.setattr(store.jobs, "find_one_and_update", flaky)
    done = await store.end_run(claimed, S.FINISHED, later(1), {"result": 1})
    assert calls == 2
    assert done is not None
    assert done["status"] == "finished"


async def test_final_write_retries_until_the_server_answers(store: Store, monkeypatch: Any) -> None:
    from pymongo.errors import AutoReconnect

    await add(store)
    claimed = await store.claim_next(["a"], "w1", NOW)
    assert claimed is not None
    real = store.jobs.find_one_and_update
    calls = 0

    async def down_twice(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise AutoReconnect("no primary")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store.jobs, "find_one_and_update", down_twice)
    monkeypatch.setattr("job_processor.store.TRANSIENT_BACKOFF", (0.0, 0.01, 0.01))
    done = await store.end_run(claimed, S.ERRORED, later(1), {"error": "x"})
    assert done is not None
    assert done["status"] == "errored"
