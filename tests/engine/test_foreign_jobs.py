"""Jobs inserted by another program (mongosh, Node, a trigger): the minimal document runs like
any other; a malformed one is errored with the reason; nothing blocks a worker."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from bson import ObjectId

from job_processor import AbortSignal, CronDef, Job, JobDef, JobStatus
from tests.helpers import make, wait_status

S = JobStatus


async def send(job: Job, signal: AbortSignal) -> str:
    return f"sent to {job.payload['to']}"


async def test_the_minimal_document_runs_like_a_scheduled_job(db: Any) -> None:
    processor = await make(db, {"send-email": JobDef(handler=send, max_attempts=3)})
    # what docs/scale.md tells other programs to insert (mongosh's insertOne)
    raw = {
        "name": "send-email",
        "claim_name": "send-email",
        "due_ms": int(time.time() * 1000),
        "payload": {"to": "ada@example.com"},
    }
    inserted = await db["job_processor_jobs"].insert_one(raw)
    job_id = str(inserted.inserted_id)
    async with processor:
        done = await wait_status(processor, job_id, S.FINISHED)
    assert done.result == "sent to ada@example.com"
    assert (done.max_attempts, done.attempt, done.failures) == (3, 1, 0)
    assert done.created_at == ObjectId(job_id).generation_time
    assert done.started_at is not None and done.ended_at is not None
    assert [j.id for j in await processor.list_jobs("send-email")] == [job_id]


@pytest.mark.parametrize(
    "field, value",
    [
        ("payload", "oops"),
        ("failures", "x"),
        ("max_attempts", "three"),
        ("priority", "high"),
        ("history", 7),
        ("scheduled_for", "soon"),
    ],
)
async def test_a_malformed_document_is_errored_with_the_reason(
    db: Any, field: str, value: Any
) -> None:
    processor = await make(db, {"send-email": JobDef(handler=send)})
    now_ms = int(time.time() * 1000)
    doc = {"name": "send-email", "claim_name": "send-email", "due_ms": now_ms, "payload": {}}
    bad = await db["job_processor_jobs"].insert_one(doc | {field: value})
    good = await processor.schedule_job("send-email", {"to": "bob@example.com"})
    async with processor:
        failed = await wait_status(processor, str(bad.inserted_id), S.ERRORED)
        await wait_status(processor, good.id, S.FINISHED)  # the worker went on
        later = await processor.schedule_job("send-email", {"to": "eve@example.com"})
        await wait_status(processor, later.id, S.FINISHED)  # and its loops are alive
        assert not processor.failed.is_set()
    assert failed.error is not None
    assert failed.error.startswith("invalid job document:")
    assert field in failed.error
    listed = await processor.list_jobs("send-email", limit=10)  # reading never fails on it
    assert str(bad.inserted_id) in [j.id for j in listed]


async def test_a_job_of_a_name_no_worker_defines_is_errored_after_the_grace(db: Any) -> None:
    processor = await make(db, {"send-email": JobDef(handler=send)}, unknown_name_grace=5)
    now_ms = int(time.time() * 1000)
    inserted = ObjectId.from_datetime(dt.datetime.fromtimestamp(now_ms / 1000 - 10, dt.UTC))
    typo = await db["job_processor_jobs"].insert_one(  # inserted and due 10 s ago
        {
            "_id": inserted,
            "name": "send-emial",
            "claim_name": "send-emial",
            "due_ms": now_ms - 10_000,
        }
    )
    recent = await db["job_processor_jobs"].insert_one(
        {"name": "new-job", "claim_name": "new-job", "due_ms": now_ms}  # a deploy under way
    )
    async with processor:  # the start's sweep
        failed = await wait_status(processor, str(typo.inserted_id), S.ERRORED)
    assert failed.error == (
        "unknown job name 'send-emial': no worker defines it (a typo, or a job removed from the "
        "code); define it and retry the job"
    )
    still = await db["job_processor_jobs"].find_one({"_id": recent.inserted_id})
    assert still is not None
    assert still["claim_name"] == "new-job"  # within its grace: left alone


async def test_a_job_that_could_never_be_due_is_errored_with_the_reason(db: Any) -> None:
    """`due_ms` missing, text, or a date (mongosh's `new Date()`): never due. The worker's
    periodic pass errors such jobs, once they are a minute old (a program inserting in two
    steps has finished)."""
    import datetime as dt

    from ..conftest import REAL_SERVER

    jobs = {"send-email": JobDef(handler=send), "audit": JobDef(handler=send, keep_failed=True)}
    processor = await make(db, jobs)
    now = dt.datetime.now(dt.UTC)
    old = ObjectId.from_datetime(now - dt.timedelta(minutes=2))
    coll = db["job_processor_jobs"]
    base = {"name": "send-email", "claim_name": "send-email", "payload": {}}
    missing = (await coll.insert_one(base | {"_id": old})).inserted_id
    young = (await coll.insert_one(base)).inserted_id  # just inserted: left alone for now
    audit = {
        "name": "audit",
        "claim_name": "audit",
        "_id": ObjectId.from_datetime(now - dt.timedelta(minutes=5)),
    }
    await coll.insert_one(audit)
    text_old = (
        await coll.insert_one(
            base | {"_id": ObjectId.from_datetime(now - dt.timedelta(minutes=3)), "due_ms": "now"}
        )
    ).inserted_id
    date = (
        await coll.insert_one(
            base | {"_id": ObjectId.from_datetime(now - dt.timedelta(minutes=4)), "due_ms": now}
        )
    ).inserted_id
    async with processor:  # the start's sweep runs the pass
        gone = await wait_status(processor, str(missing), S.ERRORED)
        wrong = await wait_status(processor, str(text_old), S.ERRORED)
        kept = await wait_status(processor, str(audit["_id"]), S.ERRORED)
        if REAL_SERVER:  # its filter ({$type: "date"}) is the pass's last: wait for it too
            await wait_status(processor, str(date), S.ERRORED)
    assert kept.expires_at is None  # its definition keeps failed jobs for ever
    assert gone.error is not None and gone.error.startswith(
        "invalid job document: due_ms is missing, it must be a number"
    )
    assert wrong.error is not None and "due_ms is 'now' (str)" in wrong.error
    assert gone.ended_at is not None and gone.expires_at is not None  # kept like a failed job
    assert gone.expires_at - gone.ended_at == dt.timedelta(days=30)
    assert gone.exit_hook is None  # it never ran: no on_job_exited
    left = await coll.find_one({"_id": young})
    assert left is not None and left["claim_name"] == "send-email"  # not errored (yet)
    if not REAL_SERVER:  # nx-27017 cannot select dates by $type: such a job stays pending there
        assert (await processor.get_job(str(date))).status == S.PENDING


async def test_a_bare_insert_is_adopted_within_a_minute_and_runs(db: Any) -> None:
    """`{name, payload}` alone (no status, claim_name or due_ms): the periodic pass makes it
    claimable once it is a minute old, and it runs like any job; a younger one is left alone."""
    import datetime as dt

    processor = await make(db, {"send-email": JobDef(handler=send)})
    now = dt.datetime.now(dt.UTC)
    coll = db["job_processor_jobs"]
    bare = {"name": "send-email", "payload": {"to": "ada@example.com"}}
    old = ObjectId.from_datetime(now - dt.timedelta(minutes=2))
    await coll.insert_one(bare | {"_id": old})
    young = (await coll.insert_one(dict(bare))).inserted_id
    async with processor:  # the start's sweep runs the pass
        done = await wait_status(processor, str(old), S.FINISHED)
    assert done.result == "sent to ada@example.com"
    assert done.created_at == old.generation_time  # a foreign document: dated by its _id
    assert "status" not in (await coll.find_one({"_id": young}) or {})  # left for the next pass


@pytest.mark.parametrize(
    ("field", "status"), [("has_dependents", "finished"), ("kill_requested_at", "errored")]
)
async def test_a_foreign_false_where_the_final_write_expects_unset_still_ends_the_job(
    db: Any, field: str, status: str
) -> None:
    """Another program wrote `false` where the final write's filter expects the field unset
    (`has_dependents`: no dependent since the claim; `kill_requested_at`: no kill): the filter
    takes the value the claim saw, so the job ends (finished; errored as invalid for a
    `kill_requested_at` that is not a date) instead of staying `running` for ever."""
    runs: list[str] = []

    async def send(job: Job, signal: AbortSignal) -> str:
        runs.append(job.id)
        return "ok"

    processor = await make(db, {"send": JobDef(handler=send, max_attempts=2)})
    doc = {"name": "send", "claim_name": "send", "due_ms": int(time.time() * 1000), field: False}
    inserted = await db["job_processor_jobs"].insert_one(doc)
    async with processor:
        ended = await wait_status(processor, str(inserted.inserted_id), JobStatus(status))
    assert len(runs) == (1 if status == "finished" else 0)
    assert ended.attempt == 1


async def test_a_network_blip_while_completing_a_foreign_job_is_ridden_out(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fields a worker fills in on a job another program inserted are written as the
    final write is: a short outage is ridden out and the job runs (it used to be errored for
    good, "internal error: AutoReconnect")."""
    from pymongo.errors import AutoReconnect

    async def send(job: Job, signal: AbortSignal) -> str:
        return "ok"

    processor = await make(db, {"send": JobDef(handler=send)})
    coll = processor.storage.jobs.coll
    real = coll.update_one
    blips: list[int] = []

    async def blip(query: Any, update: Any, **kw: Any) -> Any:
        if "created_at" in update.get("$set", {}) and "run_id" in query and not blips:
            blips.append(1)
            raise AutoReconnect("connection reset (test)")
        return await real(query, update, **kw)

    monkeypatch.setattr(coll, "update_one", blip)
    doc = {"name": "send", "claim_name": "send", "due_ms": int(time.time() * 1000)}
    inserted = await db["job_processor_jobs"].insert_one(doc)
    async with processor:
        ended = await wait_status(
            processor, str(inserted.inserted_id), JobStatus.FINISHED, JobStatus.ERRORED
        )
    assert blips == [1]
    assert ended.status == JobStatus.FINISHED and ended.result == "ok"


@pytest.mark.parametrize(
    "foreign_id",
    [
        "order-17",  # a string id of its own, on a minimal document: claimed and run
        {"tenant": "acme", "n": 17},  # a document as _id (a compound key), on a bare insert
    ],
)
async def test_a_foreign_id_that_is_not_an_object_id_never_crashes_the_sweep(
    db: Any, monkeypatch: pytest.MonkeyPatch, foreign_id: Any
) -> None:
    """docs/scale.md: "A malformed one never crashes or blocks a worker". The sweep's one query
    reads running jobs (run started over worker_timeout ago) and documents without a status;
    with one of them holding an `_id` that is not an ObjectId and a long job running, the
    sweep raised (`sorted()` of a str and an ObjectId; a document in a set: unhashable) and
    the processor's side loops crashed."""
    import asyncio

    started: list[str] = []

    async def long(job: Job, signal: AbortSignal) -> str:
        started.append(job.id)
        await signal.wait()
        return "stopped"

    processor = await make(db, {"long": JobDef(handler=long)}, concurrency=2)
    coll = db["job_processor_jobs"]
    now_ms = int(time.time() * 1000)
    if isinstance(foreign_id, str):
        doc = {"_id": foreign_id, "name": "long", "claim_name": "long", "due_ms": now_ms}
        expected_runs = 2
    else:
        doc = {"_id": foreign_id, "name": "long", "payload": {}}  # bare: never adopted
        expected_runs = 1
    await coll.insert_one(doc)
    ours = await processor.schedule_job("long", {})
    cutoffs: list[Any] = []
    real = processor.storage.jobs.needing_attention

    async def spy(cutoff: Any, now: Any, bare_before: Any = None) -> Any:
        cutoffs.append(cutoff)
        return await real(cutoff, now, bare_before)

    monkeypatch.setattr(processor.storage.jobs, "needing_attention", spy)
    loop = asyncio.get_running_loop()
    async with processor:
        deadline = loop.time() + 15
        while len(started) < expected_runs:
            assert loop.time() < deadline, started
            await asyncio.sleep(0.05)
        running = await processor.get_job(ours.id)
        assert running.run_started_at is not None
        # sweeps that read our run as running for more than worker_timeout
        while not processor.failed.is_set() and (
            len([c for c in cutoffs if c > running.run_started_at]) < 2
        ):
            assert loop.time() < deadline + 15, "no sweep saw the long runs"
            await asyncio.sleep(0.05)
        assert not processor.failed.is_set(), "a sweep crashed the processor's loops"


async def test_a_minimal_document_of_an_unknown_name_is_flagged_by_status(db: Any) -> None:
    """A misspelt name's minimal document has no status until a claim: no status count held it,
    so get_status() gave no warning and counted it in no queue."""
    processor = await make(db, {"send-email": JobDef(handler=send)})
    now_ms = int(time.time() * 1000)
    await db["job_processor_jobs"].insert_one(
        {
            "name": "send-emial",
            "claim_name": "send-emial",
            "due_ms": now_ms - 10_000,
            "payload": {"to": "ada@example.com"},
        }
    )
    async with processor:
        status = await processor.get_status()
    assert any("send-emial" in w for w in status.warnings), status.warnings
    assert status.queue["due"] == 1, status.queue


async def test_a_foreign_insert_under_a_cron_name_never_breaks_get_status(db: Any) -> None:
    """A manual run of a cron inserted from mongosh has no status nor created_at: the cron's
    recent tasks read it as stored (`t["status"]`: KeyError)."""
    processor = await make(
        db,
        {"send-email": JobDef(handler=send)},
        crons={"nightly": CronDef(handler=send, cron_string="0 3 * * *")},
    )
    later = int(time.time() * 1000) + 3_600_000
    docs = [
        {"name": "nightly", "claim_name": "nightly", "due_ms": later, "payload": {}},
        {"name": "nightly", "payload": {}},  # a bare insert, not adopted yet
        {"name": "nightly", "status": "errored", "output": "boom", "trigger": 7, "ended_at": "x"},
    ]
    ids = [str((await db["job_processor_jobs"].insert_one(doc)).inserted_id) for doc in docs]
    status = await processor.get_status()
    (nightly,) = [c for c in status.crons if c["name"] == "nightly"]
    assert sorted(t["id"] for t in nightly["recent"]) == sorted(ids)
    shown = {t["id"]: t for t in nightly["recent"]}
    assert shown[ids[0]]["status"] == shown[ids[1]]["status"] == S.PENDING
    assert shown[ids[2]]["status"] == S.ERRORED and shown[ids[2]]["trigger"] is None
    assert shown[ids[0]]["slot"] == ObjectId(ids[0]).generation_time


async def test_a_new_name_scheduled_for_a_past_time_is_not_errored_as_unknown_at_once(
    db: Any,
) -> None:
    """A rolling deploy adds 'backfill'; the new release's web app schedules one for a time
    already past before any new worker has started. A job of a name no worker defines waits
    unknown_name_grace (scale.md: "so that a rolling deploy has time to start the workers that
    define a new job"): the grace was counted from its due time only, and the old worker's
    pass errored it at once."""
    old_worker = await make(db, {"send-email": JobDef(handler=send)})
    await old_worker.heartbeat.register()  # a live worker of the previous release
    new_web_app = await make(
        db, {"send-email": JobDef(handler=send), "backfill": JobDef(handler=send)}
    )
    now = dt.datetime.now(dt.UTC)
    job = await new_web_app.schedule_job("backfill", {}, scheduled_for=now - dt.timedelta(hours=2))
    await old_worker.recovery.error_unknown_names(dt.datetime.now(dt.UTC))  # its 5-minute pass
    got = await new_web_app.get_job(job.id)
    assert got.status == S.PENDING, (got.status, got.error)


async def test_an_old_unknown_job_is_errored_behind_100_recent_ones(db: Any) -> None:
    """The insert-time grace was applied to the pass's read of 100: once 100 recently inserted
    past-due jobs of a new name filled it, an old typo's job behind them was never errored.
    The bound is in the query now. A text `_id` (no insert time) is errored by its due time."""
    worker = await make(db, {"send-email": JobDef(handler=send)}, unknown_name_grace=60)
    now = dt.datetime.now(dt.UTC)
    past_ms = int((now - dt.timedelta(hours=3)).timestamp() * 1000)
    jobs = db["job_processor_jobs"]
    await jobs.insert_many(
        [{"name": "backfill", "claim_name": "backfill", "due_ms": past_ms} for _ in range(100)]
    )
    two_hours_ago = now - dt.timedelta(hours=2)
    typo = await jobs.insert_one(
        {
            "_id": ObjectId.from_datetime(two_hours_ago),
            "name": "send-emial",
            "claim_name": "send-emial",
            "due_ms": int(two_hours_ago.timestamp() * 1000),
        }
    )
    await jobs.insert_one(
        {"_id": "ext-9", "name": "send-emial", "claim_name": "send-emial", "due_ms": past_ms}
    )
    await worker.recovery.error_unknown_names(dt.datetime.now(dt.UTC))
    got = await worker.get_job(str(typo.inserted_id))
    assert got.status == S.ERRORED, (got.status, got.error)
    text = await jobs.find_one({"_id": "ext-9"})
    assert text is not None and text["status"] == "errored", text
    assert await jobs.count_documents({"name": "backfill", "status": "errored"}) == 0


@pytest.mark.parametrize("own_id", [4711, 2**40], ids=["int", "long"])
async def test_an_unknown_name_job_with_a_numeric_id_is_errored(db: Any, own_id: Any) -> None:
    """The pass read ObjectId and text _ids only: a minimal document whose own _id is a
    number, of a name no worker defines, stayed pending for good."""
    worker = await make(db, {"send-email": JobDef(handler=send)}, unknown_name_grace=60)
    past_ms = int((dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)).timestamp() * 1000)
    jobs = db["job_processor_jobs"]
    await jobs.insert_one(
        {"_id": own_id, "name": "send-emial", "claim_name": "send-emial", "due_ms": past_ms}
    )
    errored = await worker.recovery.error_unknown_names(dt.datetime.now(dt.UTC))
    doc = await jobs.find_one({"_id": own_id})
    assert doc is not None and doc.get("status") == "errored", (errored, doc)


async def test_a_never_due_job_is_errored_with_the_retention_of_its_name(db: Any) -> None:
    """A `due_ms` another program got wrong, under a name another worker defines (its own
    service, with `keep_failed` of an hour): the pass of a worker that knows the name from
    the registry only errored it first, without an expiry (it does not know the retention),
    and nothing gives one later: kept for ever (scale.md: such jobs "follow their name's
    keep_failed"). A worker errors such jobs of the names it defines: the name's own
    worker does, with its retention."""
    owner = await make(db, {"report": JobDef(handler=send, keep_failed=dt.timedelta(hours=1))})
    await owner.heartbeat.register()  # its definitions in the registry
    other = await make(db, {"send-email": JobDef(handler=send)})
    now = dt.datetime.now(dt.UTC)
    coll = db["job_processor_jobs"]
    stray = {"name": "report", "claim_name": "report", "payload": {}, "due_ms": "now"}
    stray["_id"] = ObjectId.from_datetime(now - dt.timedelta(minutes=5))
    await coll.insert_one(stray)
    await other.recovery.error_unknown_names(now)  # the first of their 5-minute passes
    await owner.recovery.error_unknown_names(now)
    job = await owner.get_job(str(stray["_id"]))
    assert job.status == S.ERRORED
    assert job.error is not None and "due_ms is 'now' (str)" in job.error
    assert job.ended_at is not None and job.expires_at is not None, job.expires_at
    assert job.expires_at - job.ended_at == dt.timedelta(hours=1)
