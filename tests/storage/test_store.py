"""Storage verbs on nx-27017 (PyMongo async and motor) and mongomock-motor."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect, OperationFailure

from job_processor.core import documents as D
from job_processor.core import foreign as FD
from job_processor.core.errors import JobNotFoundError
from job_processor.core.models import Job
from job_processor.core.outcome import Outcome
from job_processor.core.status import JobStatus
from job_processor.storage import Storage
from job_processor.storage.compat import all_docs
from job_processor.storage.jobs import EndWrite

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
async def storage(any_db: Any) -> Storage:
    s = await Storage.open(any_db, "t_")
    await s.ensure_indexes()
    await s.ensure_indexes()  # idempotent
    return s


async def add(storage: Storage, name: str = "a", **kw: Any) -> dict[str, Any]:
    doc = await storage.jobs.insert(D.new_job(name, {"n": 1}, now=NOW, **kw))
    assert doc is not None
    return doc


async def claim(storage: Storage, name: str = "a", worker: str = "w1", at: float = 0) -> Any:
    doc = await storage.jobs.claim_next([name], worker, later(at))
    assert doc is not None
    return doc


async def end(storage: Storage, claimed: Any, outcome: Outcome, at: float = 1) -> Any:
    return (await storage.jobs.end_run(claimed, outcome, later(at), writer="w1", budget=2)).doc


async def test_claim_order_priority_then_time_then_insertion(storage: Storage) -> None:
    first = await add(storage, scheduled_for=later(-30))
    second = await add(storage, scheduled_for=later(-30))
    urgent = await add(storage, scheduled_for=later(-1), priority=5)
    await add(storage, scheduled_for=later(60))  # not due
    await add(storage, name="other")  # not eligible
    got = []
    while (doc := await storage.jobs.claim_next(["a"], "w1", NOW)) is not None:
        got.append(doc["_id"])
    assert got == [urgent["_id"], first["_id"], second["_id"]]


async def test_a_claim_over_several_names_keeps_the_order_across_them(storage: Storage) -> None:
    """On nx-27017 the claim's names are an `$or` of equalities (`ServerProfile.in_as_or`),
    elsewhere one `$in`: the same jobs in the same order either way."""
    b_old = await add(storage, name="b", scheduled_for=later(-30))
    a_old = await add(storage, name="a", scheduled_for=later(-20))
    c_urgent = await add(storage, name="c", scheduled_for=later(-1), priority=5)
    await add(storage, name="a", scheduled_for=later(60))  # not due
    await add(storage, name="d", scheduled_for=later(-40))  # not one of the names
    b_new = await add(storage, name="b", scheduled_for=later(-20))
    best = await storage.jobs.claim_more(["a", "b", "c"], "w2", NOW, 2)  # a batch's read too
    assert [d["_id"] for d in best] == [c_urgent["_id"], b_old["_id"]]
    got = []
    while (doc := await storage.jobs.claim_next(["a", "b", "c"], "w1", NOW)) is not None:
        got.append(doc["_id"])
    assert got == [a_old["_id"], b_new["_id"]]


async def test_the_claim_has_its_index_on_every_server(storage: Storage) -> None:
    """On nx-27017 too (without the `_id` tie-breaker it cannot hold): there the claim's `$eq`
    per name reads the claimable jobs through it instead of the whole collection."""
    cursor = storage.jobs.coll.list_indexes()
    if inspect.isawaitable(cursor):  # PyMongo's async driver; motor gives the cursor itself
        cursor = await cursor
    indexes = await all_docs(cursor)
    keys = [list(dict(ix["key"])) for ix in indexes]
    assert any(k[:3] == ["claim_name", "priority", "due_ms"] for k in keys), keys


async def test_a_claim_over_a_thousand_names_still_claims(storage: Storage) -> None:
    """Past 200 names the claim keeps its `$in` on nx-27017 too (an `$or` of 1000 equalities
    is deeper than SQLite accepts, and nx-27017 answered "nothing claimed")."""
    job = await add(storage, name="n999")
    names = [f"n{i}" for i in range(1000)]
    doc = await storage.jobs.claim_next(names, "w1", NOW)
    assert doc is not None and doc["_id"] == job["_id"]


async def test_claim_sets_owner_and_run_and_leaves_the_claim_index(storage: Storage) -> None:
    job = await add(storage)
    assert job["claim_name"] == "a"
    doc = await claim(storage, at=1)
    assert doc["_id"] == job["_id"]
    assert doc["status"] == "running"
    assert "claim_name" not in doc
    assert doc["worker_id"] == "w1"
    assert doc["attempt"] == 1
    assert doc["run_started_at"] == later(1)
    assert doc["run_id"]
    assert await storage.jobs.claim_next(["a"], "w2", later(2)) is None


async def test_concurrent_claims_never_share_a_job(storage: Storage) -> None:
    for _ in range(12):
        await add(storage)
    results = await asyncio.gather(
        *(storage.jobs.claim_next(["a"], f"w{i}", NOW) for i in range(16))
    )
    ids = [r["_id"] for r in results if r is not None]
    assert len(ids) == 12
    assert len(set(ids)) == 12


async def test_end_run_is_compare_and_set_on_the_run(storage: Storage) -> None:
    await add(storage, exclusive=True)
    claimed = await claim(storage)
    stale = claimed | {"run_id": "someone-else"}
    assert await end(storage, stale, Outcome(S.FINISHED, result=1)) is None
    done = await end(storage, claimed, Outcome(S.FINISHED, result=2, hook_owed=True), at=2)
    assert done["status"] == "finished"
    assert done["ended_at"] == later(2)
    assert Job.read(done).started_at == NOW  # its first run's start (read from run_started_at)
    assert "exclusive_key" not in done
    assert done["output"]["result"] == 2
    assert done["exit_hook"] == "owed"
    assert done["exit_hook_owner"] == "w1"
    # a second final write (a zombie) changes nothing
    assert await end(storage, claimed, Outcome(S.ERRORED, error="x"), at=3) is None
    assert (await storage.jobs.get(claimed["_id"]))["status"] == "finished"  # type: ignore[index]


class LearnsDependentsOnWrite:
    """The jobs collection, where the run's document learns of its dependents while its final
    write is on its way (the kill-request check does that: `engine.ownership`)."""

    def __init__(self, coll: Any, claimed: dict[str, Any]) -> None:
        self._coll, self._claimed = coll, claimed

    async def update_one(self, *args: Any, **kwargs: Any) -> Any:
        self._claimed["has_dependents"] = True
        return await self._coll.update_one(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coll, name)


async def test_a_final_write_is_made_again_when_the_run_learns_of_dependents_meanwhile(
    storage: Storage,
) -> None:
    """A job scheduled after this one while its final write was sent: the write, filtered on "no
    dependents", matches nothing. It was given up as lost (`job_lost`, the job left running, its
    dependents never released) when the run's document had learnt of them meanwhile."""
    await add(storage)
    claimed = await claim(storage)
    await storage.jobs.mark_dependents([claimed["_id"]], dt.datetime.now(dt.UTC))
    storage.jobs.coll = LearnsDependentsOnWrite(storage.jobs.coll, claimed)
    done = await end(storage, claimed, Outcome(S.FINISHED, result=1, expires_at=later(60)))
    assert done is not None and done["status"] == "finished"
    stored = await storage.jobs.get(claimed["_id"])
    assert stored is not None and stored["status"] == "finished"
    assert stored["expires_after_settle"] == later(60)  # held back until its dependents count it
    assert "expires_at" not in stored


async def test_a_kill_requested_meanwhile_refuses_a_retry_write(storage: Storage) -> None:
    await add(storage)
    claimed = await claim(storage)
    outcome, _ = await storage.jobs.kill(claimed["_id"], later(1), "w9")
    assert outcome == "requested"
    retry = Outcome(S.PENDING, error="e", failures=1, retry_at=later(5))
    written = await storage.jobs.end_run(claimed, retry, later(2), writer="w1", budget=2)
    assert written.doc is None
    assert written.kill_requested  # the caller decides again: killed
    killed = await end(storage, claimed, Outcome(S.KILLED, error="killed", hook_owed=True), 3)
    assert killed["status"] == "killed"


async def test_a_retry_computed_from_a_stale_read_is_refused(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the retry's read and its compare-and-set, the job was retried, ran again and
    errored again: the update computed from the stale read (its history) must not apply."""
    await add(storage)
    first = await end(storage, await claim(storage), Outcome(S.ERRORED, error="one"))
    stale = dict(await storage.jobs.get(first["_id"]) or {})
    assert await storage.jobs.retry(first["_id"], later(2), False) is not None
    again = await end(storage, await claim(storage, at=3), Outcome(S.ERRORED, error="two"), at=4)
    assert again["attempt"] == stale["attempt"] + 1  # each claim counts: the guard
    real = storage.jobs.coll.find_one

    async def read_stale(query: Any, *args: Any, **kw: Any) -> Any:
        return stale if query == {"_id": first["_id"]} else await real(query, *args, **kw)

    monkeypatch.setattr(storage.jobs.coll, "find_one", read_stale)
    assert await storage.jobs.retry(first["_id"], later(5), False) is None
    monkeypatch.undo()
    current = Job.read(await storage.jobs.get(first["_id"]) or {})
    assert current.status == S.ERRORED and current.error == "two"
    assert [run["error"] for run in current.history] == ["one", "two"]


async def test_pause_keeps_first_start_and_state_and_resume_keeps_them(storage: Storage) -> None:
    await add(storage)
    claimed = await claim(storage)
    assert await storage.jobs.save_checkpoint(
        claimed["_id"], claimed["run_id"], {"i": 3}, later(1), budget=2
    )
    paused = await end(storage, claimed, Outcome(S.PAUSED), at=2)
    assert paused["status"] == "paused"
    assert paused["worker_id"] is None
    assert paused["claim_name"] == "a"
    resumed = await claim(storage, worker="w2", at=3)
    assert resumed["state"] == {"i": 3}
    assert resumed["started_at"] == NOW
    assert resumed["run_started_at"] == later(3)
    assert resumed["attempt"] == 2
    assert not await storage.jobs.save_checkpoint(
        claimed["_id"], claimed["run_id"], {"i": 9}, later(4), budget=2
    )


async def test_exclusive_insert_is_skipped_with_conflict_and_freed_at_the_end(
    storage: Storage,
) -> None:
    first = await add(storage, exclusive=True)
    second = await add(storage, exclusive=True)
    assert second["status"] == "skipped"
    assert second["conflicting_job_id"] == first["_id"]
    assert second["skip_reason"] == "exclusive"
    assert "exclusive_key" not in second
    assert "claim_name" not in second
    claimed = await claim(storage)
    await end(storage, claimed, Outcome(S.ERRORED, error="x"))
    third = await add(storage, exclusive=True)
    assert third["status"] == "pending"


async def test_exclusive_race_creates_one_active_job(storage: Storage) -> None:
    docs = await asyncio.gather(*(add(storage, exclusive=True) for _ in range(8)))
    assert sorted(d["status"] for d in docs).count("pending") == 1


async def test_dedup_keys_are_scoped_by_job_name(storage: Storage) -> None:
    a = await add(storage, name="a", key="k")
    again = await add(storage, name="a", key="k")
    b = await add(storage, name="b", key="k")
    assert again["_id"] == a["_id"]
    assert b["_id"] != a["_id"]
    assert b["status"] == "pending"


async def test_kill_pending_running_and_ended(storage: Storage) -> None:
    pending = await add(storage)
    outcome, doc = await storage.jobs.kill(pending["_id"], later(1), "w9")
    assert (outcome, doc["status"]) == ("killed", "killed")
    assert doc["exit_hook"] == "owed"
    assert "claim_name" not in doc
    await add(storage, name="b")
    running = await claim(storage, name="b")
    outcome, doc = await storage.jobs.kill(running["_id"], later(2), None)
    assert (outcome, doc["status"]) == ("requested", "running")
    mine = await storage.jobs.running_on("w1")
    assert [d["_id"] for d in mine] == [running["_id"]]
    assert mine[0]["kill_requested_at"] == later(2)
    assert await storage.jobs.running_on("w2") == []
    outcome, doc = await storage.jobs.kill(pending["_id"], later(3), None)
    assert outcome == "ended"
    with pytest.raises(JobNotFoundError):
        await storage.jobs.kill(ObjectId(), NOW, None)


async def test_retry_restores_the_claim_and_its_keys(storage: Storage) -> None:
    await add(storage, key="k", exclusive=True)
    claimed = await claim(storage)
    await end(storage, claimed, Outcome(S.ERRORED, error="x", failures=1))
    retried = await storage.jobs.retry(claimed["_id"], later(5), exclusive=True)
    assert retried is not None
    assert (retried["status"], retried["failures"], retried["claim_name"]) == ("pending", 0, "a")
    assert retried["dedup_key"] == "a|k"
    assert retried["exclusive_key"] == "a"
    assert await storage.jobs.retry(claimed["_id"], later(6), exclusive=True) is None


async def test_recovery_happens_once_per_job(storage: Storage) -> None:
    await add(storage)
    claimed = await claim(storage, worker="dead")
    orphans = await storage.jobs.orphaned(["alive"], later(31))
    assert [o["_id"] for o in orphans] == [claimed["_id"]]
    assert await storage.jobs.orphaned(["dead"], later(31)) == []  # its worker is alive
    assert await storage.jobs.orphaned(["alive"], NOW) == []  # claimed too recently
    crashed = Outcome(S.ERRORED, error="worker crashed", failures=1, hook_owed=True)
    results = await asyncio.gather(
        *(
            storage.jobs.end_run(orphans[0], crashed, later(31), writer=f"s{i}", budget=2)
            for i in range(5)
        )
    )
    winners = [r.doc for r in results if r.doc is not None]
    assert len(winners) == 1
    assert winners[0]["status"] == "errored"
    assert winners[0]["output"]["error"] == "worker crashed"


async def test_an_owed_hook_is_taken_over_once_and_recorded(storage: Storage) -> None:
    await add(storage)
    claimed = await claim(storage, worker="dead")
    done = await end(storage, claimed, Outcome(S.FINISHED, hook_owed=True))
    assert [d["_id"] for d in await storage.jobs.owed_hooks(later(2))] == [done["_id"]]
    assert await storage.jobs.owed_hooks(NOW) == []
    takers = await asyncio.gather(
        *(storage.jobs.take_hook(done, f"w{i}", later(5)) for i in range(4))
    )
    (mine,) = [t for t in takers if t is not None]
    assert not await storage.jobs.hook_ended(
        done["_id"], done["exit_hook_id"], "done", None, later(6), budget=2
    )  # the dead owner's hook id no longer matches
    assert await storage.jobs.hook_ended(
        done["_id"], mine["exit_hook_id"], "done", None, later(6), budget=2
    )
    assert (await storage.jobs.get(done["_id"]))["exit_hook"] == "done"  # type: ignore[index]
    assert await storage.jobs.owed_hooks(later(60)) == []


async def test_workers_beat_and_stale_delete(storage: Storage) -> None:
    w = storage.workers
    await w.register({"_id": "w1", "last_seen": NOW, "hostname": "h", "pid": 1})
    assert await w.beat("w1", later(5)) is not None  # alive (no paused name)
    assert await w.beat("ghost", later(5)) is None
    (doc,) = await w.all()
    assert doc["last_seen"] == later(5)
    assert not await w.delete_stale("w1", later(5))
    assert await w.delete_stale("w1", later(6))
    assert await w.beat("w1", later(7)) is None


async def test_counts(storage: Storage) -> None:
    await add(storage)
    await add(storage)
    await add(storage, name="b")
    assert await storage.jobs.counts_by_name(S.PENDING) == {"a": 2, "b": 1}
    assert await storage.jobs.count_due(["a"], NOW) == 2


class LostReply:
    """The write lands but the connection drops before the answer (the first `n` calls)."""

    def __init__(self, real: Any, n: int = 1, land: bool = True) -> None:
        self.real, self.n, self.land, self.calls = real, n, land, 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.n:
            if self.land:
                await self.real(*args, **kwargs)
            raise AutoReconnect("connection reset")
        return await self.real(*args, **kwargs)


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(S.FINISHED, result=1),
        Outcome(S.PENDING, error="e", failures=1, retry_at=later(9)),  # a retry: run id cleared
        Outcome(S.PAUSED),
    ],
)
async def test_a_final_write_whose_reply_was_lost_is_recognised(
    storage: Storage, monkeypatch: Any, outcome: Outcome
) -> None:
    await add(storage)
    claimed = await claim(storage)
    flaky = LostReply(storage.jobs.coll.update_one)  # the final write
    monkeypatch.setattr(storage.jobs.coll, "update_one", flaky)
    done = await end(storage, claimed, outcome)
    assert flaky.calls == 2
    assert done is not None
    assert done["status"] == outcome.status.value


async def test_final_write_retries_until_the_server_answers(
    storage: Storage, monkeypatch: Any
) -> None:
    await add(storage)
    claimed = await claim(storage)
    flaky = LostReply(storage.jobs.coll.update_one, n=2, land=False)
    monkeypatch.setattr(storage.jobs.coll, "update_one", flaky)
    done = await end(storage, claimed, Outcome(S.ERRORED, error="x"))
    assert done is not None
    assert done["status"] == "errored"


async def test_final_write_gives_up_after_its_budget(storage: Storage, monkeypatch: Any) -> None:
    await add(storage)
    claimed = await claim(storage)
    flaky = LostReply(storage.jobs.coll.update_one, n=10**6, land=False)
    monkeypatch.setattr(storage.jobs.coll, "update_one", flaky)
    with pytest.raises(AutoReconnect):
        await storage.jobs.end_run(claimed, Outcome(S.FINISHED), later(1), writer="w", budget=0.5)
    assert 2 <= flaky.calls <= 6


async def test_claim_more_takes_the_best_k_in_order_and_never_shares(storage: Storage) -> None:
    ids = [(await add(storage, scheduled_for=later(-i)))["_id"] for i in range(10)]
    batches = await asyncio.gather(
        *(storage.jobs.claim_more(["a"], f"w{i}", NOW, 4) for i in range(3))
    )
    while more := await storage.jobs.claim_more(["a"], "w3", NOW, 4):  # what contention left
        batches.append(more)
    got = [d["_id"] for batch in batches for d in batch]
    assert len(got) == len(set(got)) == 10  # each job claimed exactly once
    for worker, batch in enumerate(batches):
        for doc in batch:
            worker = min(worker, 3)
            stored = await storage.jobs.get(doc["_id"])
            assert stored is not None
            assert {k: stored[k] for k in ("status", "worker_id", "run_id", "attempt")} == {
                "status": "running",
                "worker_id": f"w{worker}",
                "run_id": doc["run_id"],
                "attempt": 1,
            }
            assert "claim_name" not in stored
    alone = await storage.jobs.claim_more(["a"], "w9", NOW, 4)
    assert alone == []
    assert sorted(got) == sorted(ids)


async def test_claim_more_computes_what_it_claimed(storage: Storage) -> None:
    for i in range(3):
        await add(storage, scheduled_for=later(-i), priority=i)
    batch = await storage.jobs.claim_more(["a"], "w1", NOW, 5)
    assert [d["priority"] for d in batch] == [2, 1, 0]  # the claim's order
    for doc in batch:
        assert doc == await storage.jobs.get(doc["_id"])  # computed == stored


async def test_grouped_final_writes_apply_each_compare_and_set(storage: Storage) -> None:
    from job_processor.storage.jobs import EndItem

    for _ in range(4):
        await add(storage)
    claimed = await storage.jobs.claim_more(["a"], "w1", NOW, 4)
    stale = claimed[1] | {"run_id": "a-zombie"}
    await storage.jobs.kill(claimed[2]["_id"], later(1), None)  # a kill requested meanwhile
    items = [
        EndItem(claimed[0], Outcome(S.FINISHED, result=1, hook_owed=True), later(2), "w1", 5),
        EndItem(stale, Outcome(S.FINISHED), later(2), "w1"),
        EndItem(
            claimed[2], Outcome(S.PENDING, error="e", failures=1, retry_at=later(9)), later(2), "w1"
        ),
        EndItem(claimed[3], Outcome(S.ERRORED, error="x"), later(2), "w1"),
    ]
    done, lost, kill, errored = await storage.jobs.end_runs(items, budget=2)
    assert isinstance(done, EndWrite) and done.doc is not None
    assert done.doc == await storage.jobs.get(claimed[0]["_id"])
    assert (done.doc["status"], done.doc["exit_hook"], done.doc["output"]["duration_ms"]) == (
        "finished",
        "owed",
        5,
    )
    assert lost == EndWrite(None)
    assert kill == EndWrite(None, kill_requested=True)
    assert isinstance(errored, EndWrite) and errored.doc is not None
    assert errored.doc["status"] == "errored"


async def test_a_write_that_cannot_be_encoded_fails_alone_in_its_group(driver_db: Any) -> None:
    """(On the wire servers only: mongomock stores Python objects without encoding them.)"""
    from job_processor.storage.jobs import EndItem

    storage = await Storage.open(driver_db, "t_")
    await storage.ensure_indexes()
    for _ in range(2):
        await add(storage)
    a, b = await storage.jobs.claim_more(["a"], "w1", NOW, 2)
    unstorable = Outcome(S.FINISHED, result=object())
    bad, fine = await storage.jobs.end_runs(
        [EndItem(a, unstorable, later(1), "w1"), EndItem(b, Outcome(S.FINISHED), later(1), "w1")],
        budget=2,
    )
    assert isinstance(bad, Exception)  # bson cannot encode it: that job alone gets the error
    assert isinstance(fine, EndWrite) and fine.doc is not None
    assert (await storage.jobs.get(a["_id"]))["status"] == "running"  # type: ignore[index]


async def test_a_batch_never_claims_a_candidate_changed_since_it_was_read(
    storage: Storage, monkeypatch: Any
) -> None:
    for _ in range(3):
        await add(storage)
    coll = storage.jobs.coll
    real = coll.update_many

    async def meanwhile(query: Any, update: Any, **kw: Any) -> Any:
        # between the batch's find and its update_many, another worker claims one candidate,
        # runs it and re-queues it (claimable again, but not the document the batch read)
        other = await storage.jobs.claim_next(["a"], "w2", NOW)
        assert other is not None
        retry = Outcome(S.PENDING, error="e", failures=1, retry_at=NOW)
        await storage.jobs.end_run(other, retry, NOW, writer="w2", budget=2)
        monkeypatch.setattr(coll, "update_many", real)
        return await real(query, update, **kw)

    monkeypatch.setattr(coll, "update_many", meanwhile)
    batch = await storage.jobs.claim_more(["a"], "w1", NOW, 3)
    assert len(batch) == 2  # the changed one was left out
    for doc in batch:
        assert doc == await storage.jobs.get(doc["_id"])  # what runs is what is stored


async def test_a_grouped_write_that_partly_failed_reports_what_landed(
    driver_db: Any, monkeypatch: Any
) -> None:
    """(On the wire servers: the fault is injected after the real bulk_write.)"""
    from pymongo.errors import BulkWriteError

    from job_processor.storage.jobs import EndItem

    storage = await Storage.open(driver_db, "t_")
    await storage.ensure_indexes()
    for _ in range(3):
        await add(storage)
    claimed = await storage.jobs.claim_more(["a"], "w1", NOW, 3)
    real = storage.jobs.coll.bulk_write

    async def applied_then_error(ops: Any, **kw: Any) -> Any:
        await real(ops, **kw)  # every write lands, yet the server reports an error
        raise BulkWriteError({"writeErrors": [{"index": 2, "code": 10334, "errmsg": "too big"}]})

    monkeypatch.setattr(storage.jobs.coll, "bulk_write", applied_then_error)
    items = [
        EndItem(c, Outcome(S.FINISHED, result=i), later(1), "w1") for i, c in enumerate(claimed)
    ]
    results = await storage.jobs.end_runs(items, budget=2)
    assert all(isinstance(r, EndWrite) and r.doc is not None for r in results)  # none "lost"


def like_mongodb_refusing_inc_on_strings(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """MongoDB refuses a claim whose `$inc` meets a non-numeric `attempt` (TypeMismatch, code
    14); nx-27017 skips such a document silently instead. Reproduce MongoDB's answer here (the
    real-server tier checks it against MongoDB itself)."""
    coll = storage.jobs.coll
    real_claim, real_many = coll.find_one_and_update, coll.update_many

    async def refuse_if_uncountable(query: Any, sort: Any = None) -> None:
        cursor = coll.find(query)
        if sort is not None:
            cursor = cursor.sort(sort).limit(1)
        async for doc in cursor:
            if "attempt" in doc and not isinstance(doc["attempt"], int):
                raise OperationFailure("Cannot apply $inc to a value of non-numeric type", 14)

    async def claim(query: Any, update: Any, **kw: Any) -> Any:
        await refuse_if_uncountable(query, kw.get("sort"))
        return await real_claim(query, update, **kw)

    async def many(query: Any, update: Any, **kw: Any) -> Any:
        await refuse_if_uncountable(query)
        return await real_many(query, update, **kw)

    monkeypatch.setattr(coll, "find_one_and_update", claim)
    monkeypatch.setattr(coll, "update_many", many)


async def test_a_document_the_claim_cannot_increment_is_errored_not_blocking(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    like_mongodb_refusing_inc_on_strings(storage, monkeypatch)
    bad = D.new_job("a", {}, now=NOW, scheduled_for=later(-60)) | {"attempt": "x"}
    await storage.jobs.coll.insert_one(bad)
    good = await add(storage, scheduled_for=later(-30))
    claimed = await storage.jobs.claim_next(["a"], "w1", NOW)
    assert claimed is not None and claimed["_id"] == good["_id"]
    stored = await storage.jobs.coll.find_one({"_id": bad["_id"]})
    assert stored["status"] == S.ERRORED
    assert stored["output"]["error"] == (
        "invalid job document: attempt is 'x' (str), it must be a number (or left out)"
    )
    assert "claim_name" not in stored
    # a batch meeting one (null counts as not a number: MongoDB refuses $inc on null) errors
    # it and claims the others
    worse = D.new_job("a", {}, now=NOW, scheduled_for=later(-60)) | {"attempt": None}
    await storage.jobs.coll.insert_one(worse)
    rest = [await add(storage, scheduled_for=later(-10)) for _ in range(2)]
    batch = await storage.jobs.claim_more(["a"], "w1", NOW, 4)
    assert [d["_id"] for d in batch] == [d["_id"] for d in rest]
    stored = await storage.jobs.coll.find_one({"_id": worse["_id"]})
    assert stored["status"] == S.ERRORED
    assert "attempt is None (NoneType)" in stored["output"]["error"]


async def test_a_batch_stopped_midway_by_a_document_changed_meanwhile_keeps_what_it_claimed(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program writes `attempt: "x"` between the batch's find and its update_many:
    MongoDB applies the update to the documents before that one, then fails. The ones it
    claimed are read back by run id and run; the cause is errored."""
    jobs = [await add(storage, scheduled_for=later(-30 + i)) for i in range(3)]
    coll = storage.jobs.coll
    real_many = coll.update_many

    async def partly(query: Any, update: Any, **kw: Any) -> Any:
        await coll.update_one({"_id": jobs[1]["_id"]}, {"$set": {"attempt": "x"}})
        await real_many({"_id": jobs[0]["_id"]}, update, **kw)  # the one before it
        raise OperationFailure("Cannot apply $inc to a value of non-numeric type", 14)

    monkeypatch.setattr(coll, "update_many", partly)
    batch = await storage.jobs.claim_more(["a"], "w1", NOW, 3)
    assert [d["_id"] for d in batch] == [jobs[0]["_id"]]
    assert batch[0]["status"] == S.RUNNING and batch[0]["worker_id"] == "w1"
    bad = await coll.find_one({"_id": jobs[1]["_id"]})
    assert bad["status"] == S.ERRORED
    third = await coll.find_one({"_id": jobs[2]["_id"]})
    assert third["status"] == S.PENDING  # untouched: the next claim takes it


async def test_a_batch_stopped_midway_keeps_its_claims_even_if_erroring_the_cause_fails(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [await add(storage, scheduled_for=later(-30 + i)) for i in range(2)]
    coll = storage.jobs.coll
    real_many = coll.update_many

    async def partly(query: Any, update: Any, **kw: Any) -> Any:
        await coll.update_one({"_id": jobs[1]["_id"]}, {"$set": {"attempt": "x"}})
        await real_many({"_id": jobs[0]["_id"]}, update, **kw)
        raise OperationFailure("Cannot apply $inc to a value of non-numeric type", 14)

    async def unreachable(*args: Any) -> int:
        raise AutoReconnect("blip")

    monkeypatch.setattr(coll, "update_many", partly)
    monkeypatch.setattr(storage.jobs, "_error_uncountable_docs", unreachable)
    batch = await storage.jobs.claim_more(["a"], "w1", NOW, 2)
    assert [d["_id"] for d in batch] == [jobs[0]["_id"]]  # run, not left running untracked


async def test_an_index_of_ours_that_exists_with_other_options_is_said_plainly(
    any_db: Any,
) -> None:
    """`expires_at_1` exists without its TTL (an operator made it, or changed its
    expireAfterSeconds): MongoDB refuses create_index (code 85/86); init_job_processor names
    the collection, the index and the fix instead of the driver's bare OperationFailure. (On
    nx-27017, which ignores index options, nothing conflicts; mongomock refuses as MongoDB.)"""
    from job_processor import AbortSignal, JobDef, init_job_processor
    from job_processor.core.errors import JobProcessorError
    from job_processor.storage import _create_index

    class Refusing:
        name = "job_processor_jobs"

        async def create_index(self, keys: Any, **opts: Any) -> None:
            raise OperationFailure(
                "Index with name: expires_at_1 already exists with different options",
                code=85,
                details={
                    "errmsg": "Index with name: expires_at_1 already exists with different options"
                },
            )

    with pytest.raises(
        JobProcessorError,
        match=r"'job_processor_jobs': an index on \{'expires_at': 1\} already exists with other "
        r"options .*dropIndex",
    ):
        await _create_index(Refusing(), [("expires_at", 1)], {"expireAfterSeconds": 0})

    async def quick(job: Job, signal: AbortSignal) -> None:
        return None

    await any_db["job_processor_jobs"].create_index([("expires_at", 1)])
    try:
        await init_job_processor(any_db, jobs={"a": JobDef(handler=quick)})
    except JobProcessorError as exc:  # where the server compares options (mongomock, MongoDB)
        assert "'job_processor_jobs'" in str(exc) and "expires_at" in str(exc)


async def test_a_bare_insert_without_a_priority_is_adopted_as_priority_0(storage: Storage) -> None:
    """docs/scale.md: a bare `{name, payload}` is made claimable with priority 0 when it has
    none (left missing, the claim would sort it after every job that has one, -1 included);
    one that has a priority keeps it."""
    low = await add(storage, priority=-1, scheduled_for=later(-10))
    bare = {"name": "a", "payload": {}}
    urgent = {"name": "a", "payload": {}, "priority": 3}
    await storage.jobs.coll.insert_many([bare, urgent])
    assert await storage.jobs.adopt_bare(NOW, NOW) == (2, 2)
    assert Job.read(await storage.jobs.get(bare["_id"])).priority == 0
    got = []
    while (doc := await storage.jobs.claim_next(["a"], "w1", NOW)) is not None:
        got.append((doc["_id"], doc["priority"]))
    assert got == [(urgent["_id"], 3), (bare["_id"], 0), (low["_id"], -1)]


async def test_a_minimal_insert_without_a_priority_reads_as_0_but_is_claimed_last(
    storage: Storage,
) -> None:
    """docs/scale.md: a minimal insert is claimable as it is, so nothing writes its priority
    before the claim, whose index sorts a missing field after every number (-1 included): it
    reads as priority 0 and is claimed after every job that has a priority; its first run
    writes priority 0 with the other missing fields (a retry is then ordered as 0)."""
    low = await add(storage, priority=-1, scheduled_for=later(-10))
    minimal = {"name": "a", "claim_name": "a", "due_ms": D.epoch_ms(later(-60)), "payload": {}}
    await storage.jobs.coll.insert_one(minimal)
    assert Job.read(await storage.jobs.get(minimal["_id"])).priority == 0
    got = []
    while (doc := await storage.jobs.claim_next(["a"], "w1", NOW)) is not None:
        got.append(doc["_id"])
    assert got == [low["_id"], minimal["_id"]]
    assert FD.completion(minimal, None, NOW)["priority"] == 0  # written by its first run


async def test_a_bare_insert_with_a_null_priority_is_adopted_as_priority_0(
    storage: Storage,
) -> None:
    """A null priority (JSON, an optional field) sorts below every number too: adopted as 0."""
    low = await add(storage, priority=-1, scheduled_for=later(-10))
    bare = {"name": "a", "payload": {}, "priority": None}
    await storage.jobs.coll.insert_one(bare)
    assert await storage.jobs.adopt_bare(NOW, NOW) == (1, 1)
    assert Job.read(await storage.jobs.get(bare["_id"])).priority == 0
    got = []
    while (doc := await storage.jobs.claim_next(["a"], "w1", NOW)) is not None:
        got.append(doc["_id"])
    assert got == [bare["_id"], low["_id"]]
