"""job_processor.admin on nx-27017 (PyMongo async and motor) and mongomock-motor: what an
operator sees and what each action does, from the database alone."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any

import pytest
from bson import ObjectId
from pydantic import BaseModel, ConfigDict
from pymongo.errors import AutoReconnect

from job_processor import CronDef, FakeClock, JobDef, init_job_processor
from job_processor.core import documents as D
from job_processor.core import flows as F
from job_processor.core.errors import (
    InvalidArgumentError,
    InvalidPayloadError,
    JobNotFoundError,
    UnknownJobError,
)
from job_processor.core.masking import redact
from job_processor.core.outcome import Outcome
from job_processor.core.status import JobStatus
from job_processor.ops.admin import Admin
from job_processor.ops.admin.inputs import MAX_BULK, decode_cursor, parse_duration, parse_time
from job_processor.storage import Storage, object_id
from tests.helpers import FAST, make

S = JobStatus
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


async def noop(job: object, signal: object) -> None:
    return None


DEFS: dict[str, Any] = {
    "email": JobDef(handler=noop, sensitive_fields=("password", "card.number")),
    "report": JobDef(handler=noop, tag="main", concurrency="exclusive"),
    "nightly": CronDef(handler=noop, cron_string="0 2 * * *", timezone="Europe/Paris"),
}


@pytest.fixture
async def env(any_db: Any) -> tuple[Admin, Storage, FakeClock]:
    clock = FakeClock(NOW)
    storage = await Storage.open(any_db, "t_")
    await storage.ensure_indexes()
    await storage.definitions.register(DEFS, "w-setup", NOW)
    nightly = DEFS["nightly"]
    await storage.crons.register(
        {"nightly": nightly}, {"nightly": NOW + dt.timedelta(hours=14)}, NOW
    )
    admin = await Admin.open(any_db, "t_", clock, actor="alice")
    return admin, storage, clock


async def add(storage: Storage, name: str = "email", at: float = 0, **kw: Any) -> dict[str, Any]:
    doc = await storage.jobs.insert(
        D.new_job(name, {"n": 1}, now=NOW + dt.timedelta(seconds=at), **kw)
    )
    assert doc is not None
    return doc


async def ended(storage: Storage, status: JobStatus, name: str = "email", at: float = 0) -> str:
    doc = await add(storage, name, at=at, priority=1000)  # claimed before any pending job
    claimed = await storage.jobs.claim_next([name], "w1", NOW + dt.timedelta(seconds=at))
    assert claimed is not None and claimed["_id"] == doc["_id"]
    outcome = Outcome(status, error="boom" if status == S.ERRORED else None)
    end = await storage.jobs.end_run(
        claimed, outcome, NOW + dt.timedelta(seconds=at + 1), writer="w1", budget=2
    )
    assert end.doc is not None
    return str(doc["_id"])


async def test_pages_cover_every_job_once_newest_first_even_with_ties(env: Any) -> None:
    admin, storage, _ = env
    ids = [str((await add(storage, at=0))["_id"]) for _ in range(7)]  # same instant
    ids += [str((await add(storage, at=1.5))["_id"]) for _ in range(3)]
    ids += [str((await add(storage, "report", at=3))["_id"])]
    expected = sorted(ids, key=lambda i: i)  # ObjectIds grow: the insertion order
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await admin.list_jobs(limit=3, cursor=cursor)
        seen += [j.id for j in page.jobs]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(expected))
    assert pages == 4
    json.dumps(page.model_dump(mode="json"))  # serializable as is


async def test_filters(env: Any) -> None:
    admin, storage, _ = env
    email = await add(storage, key="k1")
    report = await add(storage, "report", at=5, tag="main")
    failed = await ended(storage, S.ERRORED, at=10)
    assert [j.id for j in (await admin.list_jobs(name="report")).jobs] == [str(report["_id"])]
    assert [j.id for j in (await admin.list_jobs(status="errored")).jobs] == [failed]
    assert [j.id for j in (await admin.list_jobs(tag="main")).jobs] == [str(report["_id"])]
    assert [j.id for j in (await admin.list_jobs(key="k1")).jobs] == [str(email["_id"])]
    window = await admin.list_jobs(
        created_after=NOW + dt.timedelta(seconds=3), created_before="2030-01-01T12:00:08Z"
    )
    assert [j.id for j in window.jobs] == [str(report["_id"])]
    assert [j.id for j in (await admin.list_jobs(id=failed)).jobs] == [failed]
    assert (await admin.list_jobs(id=failed, status="pending")).jobs == []
    with pytest.raises(InvalidArgumentError, match="unknown status 'broken'"):
        await admin.list_jobs(status="broken")
    with pytest.raises(InvalidArgumentError, match="not a job id"):
        await admin.list_jobs(id="nope")
    with pytest.raises(InvalidArgumentError, match="not a cursor"):
        await admin.list_jobs(cursor="garbage!")
    with pytest.raises(InvalidArgumentError, match="created_after"):
        await admin.list_jobs(created_after="yesterday")
    with pytest.raises(InvalidArgumentError, match=r"is not before created_before .*swap them"):
        await admin.list_jobs(created_after="2030-01-02", created_before="2030-01-01")


async def test_a_tag_filter_no_definition_worker_or_job_has_is_named_with_a_did_you_mean(
    env: Any,
) -> None:
    """list_jobs(tag='mian') listed nothing, as a tag with no job yet does, while a misspelt
    name is named with a did-you-mean: a tag no definition, no live worker's worker_tags and
    no job has is refused the same way (the CLI's jobs list --tag and the dashboard's filter
    read it from here), and so is retry_many's."""
    admin, storage, clock = env
    with pytest.raises(
        InvalidArgumentError, match=r"^unknown tag 'mian' \(did you mean 'main'\?\)"
    ):
        await admin.list_jobs(tag="mian")
    with pytest.raises(InvalidArgumentError, match="did you mean 'main'"):
        await admin.retry_many(tag="mian")
    assert (await admin.list_jobs(tag="main")).jobs == []  # a definition's: no job yet
    worker = D.new_worker(NOW, ["gpu"], None, 1, ["email"], worker_timeout=60)
    await storage.workers.coll.insert_one(worker)
    assert (await admin.list_jobs(tag="gpu")).jobs == []  # a live worker's
    clock.advance(3600)  # that worker is dead: its tags are no longer known
    with pytest.raises(InvalidArgumentError, match="unknown tag 'gpu'"):
        await admin.list_jobs(tag="gpu")
    legacy = await add(storage, tag="legacy")  # a tag only a stored job has
    assert [j.id for j in (await admin.list_jobs(tag="legacy")).jobs] == [str(legacy["_id"])]
    assert (await admin.list_jobs(tag="legacy", status="errored")).jobs == []
    # ... is known to the did-you-mean too (read from the tag index): it listed only the
    # definitions' and live workers' tags, so that a misspelt stored tag had no suggestion
    with pytest.raises(
        InvalidArgumentError, match=r"^unknown tag 'legcy' \(did you mean 'legacy'\?\)"
    ) as refused:
        await admin.list_jobs(tag="legcy")
    assert "known tags: legacy, main)" in str(refused.value)


async def test_retry_one_and_many_and_what_cannot_be_retried(env: Any) -> None:
    admin, storage, _ = env
    a = await ended(storage, S.ERRORED)
    b = await ended(storage, S.ERRORED, at=2)
    done = await ended(storage, S.FINISHED, at=4)
    other = await ended(storage, S.ERRORED, "report", at=6)
    one = await admin.retry([a, done])
    assert one.changed == [a]
    assert one.skipped == {done: "finished: only errored or killed jobs can be retried"}
    assert one.done
    assert (await admin.get_job(a)).status == S.PENDING
    many = await admin.retry_many(name="email", status="errored")
    assert many.changed == [b]
    assert (await admin.get_job(other)).status == S.ERRORED
    nothing = await admin.retry_many(name="email")
    assert not nothing.done
    with pytest.raises(InvalidArgumentError, match="errored or killed"):
        await admin.retry_many(status="finished")


async def test_kill_pending_running_and_ended(env: Any) -> None:
    admin, storage, _ = env
    pending = str((await add(storage))["_id"])
    running = str((await add(storage, "report", tag="main"))["_id"])
    assert await storage.jobs.claim_next(["report"], "w1", NOW) is not None
    finished = await ended(storage, S.FINISHED, at=1)
    result = await admin.kill([pending, running, finished])
    assert result.changed == [pending, running]
    assert result.detail["requested"] == [running]
    assert result.skipped == {finished: "already ended (finished)"}
    killed = await admin.get_job(pending)
    assert killed.status == S.KILLED
    assert killed.exit_hook == "owed"  # called by the next sweep of a worker that defines it
    assert (await admin.get_job(running)).kill_requested_at == NOW


async def test_run_now_makes_a_later_job_due(env: Any) -> None:
    admin, storage, clock = env
    later = str((await add(storage, scheduled_for=NOW + dt.timedelta(hours=3)))["_id"])
    due = str((await add(storage))["_id"])
    assert await storage.jobs.claim_next(["email"], "w1", NOW) is not None  # takes `due`
    clock.advance(1)
    result = await admin.run_now([later, due])
    assert result.changed == [later]
    assert result.skipped == {due: "running: only pending jobs can be run now"}
    job = await admin.get_job(later)
    assert job.scheduled_for == clock.now()
    claimed = await storage.jobs.claim_next(["email"], "w1", clock.now())
    assert claimed is not None and str(claimed["_id"]) == later
    again = await admin.run_now(later)
    assert not again.done


async def test_run_now_makes_a_minimal_foreign_insert_due_now(env: Any) -> None:
    """docs/scale.md's minimal document (no status until its first claim) reads as pending and
    scheduled later, and is claimable as it is: run-now refused it as a bare insert."""
    admin, storage, _ = env
    later = D.epoch_ms(NOW + dt.timedelta(hours=1))
    doc = {"name": "email", "claim_name": "email", "due_ms": later, "payload": {}}
    oid = (await storage.jobs.coll.insert_one(doc)).inserted_id
    shown = await admin.get_job(str(oid))
    assert shown.status == S.PENDING and shown.scheduled_for > NOW  # what an operator sees
    result = await admin.run_now([str(oid)])
    assert result.skipped == {}, result.skipped
    assert result.changed == [str(oid)]
    assert result.jobs[0].scheduled_for == NOW
    stored = await storage.jobs.coll.find_one({"_id": oid})
    assert stored is not None and stored["due_ms"] <= D.epoch_ms(NOW)
    assert "status" not in stored and "created_at" not in stored  # its first claim completes it
    assert (await admin.get_job(str(oid))).scheduled_for == NOW
    claimed = await storage.jobs.claim_next(["email"], "w1", NOW)
    assert claimed is not None and claimed["_id"] == oid
    # already due, and a bare insert (claimable once adopted), each said as it is
    due = {"name": "email", "claim_name": "email", "due_ms": later - 7_200_000, "payload": {}}
    due_id = str((await storage.jobs.coll.insert_one(due)).inserted_id)
    bare_id = str(
        (await storage.jobs.coll.insert_one({"name": "email", "payload": {}})).inserted_id
    )
    text = {"name": "email", "claim_name": "email", "due_ms": "x", "payload": {}}  # never due
    text_id = str((await storage.jobs.coll.insert_one(text)).inserted_id)
    again = await admin.run_now([due_id, bare_id, text_id])
    assert again.changed == []
    assert again.skipped[due_id] == "already due"
    assert again.skipped[bare_id].startswith("a bare insert, pending once a worker adopts it")
    assert again.skipped[text_id].startswith("invalid job document: due_ms is 'x' (str)")


async def test_the_overview_and_status_count_a_due_minimal_foreign_insert(env: Any) -> None:
    """docs/scale.md's minimal document has no status until its first claim: the overview's
    names came from the counts by status and the registry, so a misspelt name's due job was
    in no queue and got no warning (`job-processor status`, the dashboard)."""
    admin, storage, _ = env
    due_ms = D.epoch_ms(NOW - dt.timedelta(minutes=1))
    for name in ("email", "emial"):
        doc = {"name": name, "claim_name": name, "due_ms": due_ms, "payload": {}}
        await storage.jobs.coll.insert_one(doc)
    overview = await admin.overview()
    for name in ("email", "emial"):
        row = overview.queue[name]
        assert (row.due, row.pending, row.oldest_due_age_seconds) == (1, 0, 60.0), row
    assert overview.unknown_names == {"emial": 1}
    assert any("unknown name 'emial'" in w for w in overview.warnings), overview.warnings
    status = await admin.status()
    assert status.queue["due"] == 2, status.queue


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "nightly", "claim_name": "nightly", "due_ms": 1_893_500_000_000, "payload": {}},
        {"name": "nightly", "payload": {}},  # a bare insert, not adopted yet
        {"name": "nightly", "status": "errored", "output": "boom", "trigger": 7, "ended_at": "x"},
    ],
    ids=["minimal", "bare", "wrong-types"],
)
async def test_a_foreign_insert_under_a_cron_name_never_breaks_the_cron_listings(
    env: Any, doc: dict[str, Any]
) -> None:
    """A cron's recent tasks are read by name: a manual run inserted from mongosh (no status nor
    created_at: no slot) or a task with fields of the wrong type failed list_crons (and with it
    `crons list`, `status` and the dashboard's crons page)."""
    admin, storage, _ = env
    oid = (await storage.jobs.coll.insert_one(dict(doc))).inserted_id
    (nightly,) = await admin.list_crons()
    (run,) = [r for r in nightly.recent if r.id == str(oid)]
    assert run.slot == oid.generation_time
    assert run.status == (S.ERRORED if "status" in doc else S.PENDING)
    assert run.trigger is None and run.ended_at is None and run.error is None
    status = await admin.status()
    assert [c["name"] for c in status.crons] == ["nightly"]


async def test_a_bare_insert_or_an_unknown_status_never_breaks_a_listing(env: Any) -> None:
    """Documents another program wrote: one without a status (a bare insert, adopted within a
    minute) lists as pending; one with a status of its own ("queued", never claimed) lists as
    errored with the stored value in `invalid_fields`, and is not deleted (it may be a newer
    version's active job during a rolling deploy)."""
    admin, storage, _ = env
    ours = str((await add(storage))["_id"])
    bare = (await storage.jobs.coll.insert_one({"name": "email", "payload": {}})).inserted_id
    odd = {"name": "email", "status": "queued", "payload": {}, "created_at": NOW}
    queued = (await storage.jobs.coll.insert_one(odd)).inserted_id
    listed = {j.id: j for j in (await admin.list_jobs()).jobs}
    assert listed[ours].status == S.PENDING
    assert listed[str(bare)].status == S.PENDING and listed[str(bare)].invalid_fields == {}
    assert listed[str(queued)].status == S.ERRORED
    assert listed[str(queued)].invalid_fields == {"status": "queued"}
    deleted = await admin.delete([str(queued), str(bare), ours])
    assert deleted.changed == []  # pending (or will be): active; queued: not ours to judge
    assert set(deleted.skipped) == {str(queued), str(bare), ours}
    assert "queued: not a status of this version" in deleted.skipped[str(queued)]
    assert "a bare insert, pending once a worker adopts it" in deleted.skipped[str(bare)]
    killed = await admin.kill([str(bare)])  # as a pending job is
    assert killed.changed == [str(bare)]
    assert (await admin.get_job(str(bare))).status == S.KILLED


async def test_delete_refuses_active_jobs_and_purge_deletes_old_ended_ones(env: Any) -> None:
    admin, storage, clock = env
    pending = str((await add(storage))["_id"])
    old = await ended(storage, S.FINISHED, at=0)
    errored = await ended(storage, S.ERRORED, at=0)
    deleted = await admin.delete([pending, errored])
    assert deleted.changed == [errored]
    assert deleted.skipped == {pending: "pending: active jobs are not deleted (kill it first)"}
    clock.advance(8 * 86400)
    recent = await ended(storage, S.FINISHED, at=8 * 86400 - 10)
    purged = await admin.purge(status="finished", older_than="7d")
    assert purged.count == 1
    assert purged.done
    with pytest.raises(JobNotFoundError):
        await admin.get_job(old)
    assert (await admin.get_job(recent)).status == S.FINISHED
    with pytest.raises(InvalidArgumentError, match="only finished, errored, killed or skipped"):
        await admin.purge(status="pending", older_than="1d")
    with pytest.raises(InvalidArgumentError, match="not a duration"):
        await admin.purge(status="finished", older_than="a week")


async def test_new_job_duplicate_and_trigger(env: Any) -> None:
    admin, _, _ = env
    created = await admin.new_job("email", '{"to": "a@b.c"}', priority=3)
    assert created.done
    job = created.jobs[0]
    assert (job.name, job.payload, job.priority, job.status) == (
        "email",
        {"to": "a@b.c"},
        3,
        "pending",
    )
    with pytest.raises(UnknownJobError, match="unknown job 'emial'"):
        await admin.new_job("emial", {})
    with pytest.raises(InvalidPayloadError, match="not valid JSON"):
        await admin.new_job("email", "{to: 1}")
    with pytest.raises(InvalidPayloadError, match="must be a JSON object"):
        await admin.new_job("email", "[1, 2]")
    with pytest.raises(
        InvalidArgumentError,
        match=r"is a cron, not a job: .*trigger_cron\('nightly'\) "
        r"\(job-processor crons trigger nightly\)",
    ):
        await admin.new_job("nightly", {})
    # the names of event deliveries are made by emit(), never by hand, nor offered as known
    _, storage, clock = env

    def deliver(job: Any, signal: Any) -> None:  # as the event bus marks its deliveries
        pass

    deliver.event_delivery = True  # type: ignore[attr-defined]
    registered = {
        "webhook-delivery": JobDef(handler=lambda j, s: None),
        "paid:email": JobDef(handler=deliver),
        "reports:daily": JobDef(handler=noop),  # a job's own name may hold ':'
    }
    await storage.definitions.register(registered, "w-setup", NOW)
    for name in ("webhook-delivery", "paid:email"):
        with pytest.raises(InvalidArgumentError, match=f"'{name}' is an event delivery"):
            await admin.new_job(name, {})
    assert (await admin.new_job("reports:daily", {})).done
    # written by the version before the mark: a delivery if a subscriber's job has its name
    for name in ("paid:email", "reports:daily"):
        await storage.definitions.coll.update_one({"_id": name}, {"$unset": {"delivery": ""}})
    await storage.subscribers.register(
        [{"_id": "paid|email", "event": "paid", "name": "email", "job_name": "paid:email"}]
    )
    admin = await Admin.open(storage.db, "t_", clock, actor="alice")  # reads the registry anew
    with pytest.raises(InvalidArgumentError, match="'paid:email' is an event delivery"):
        await admin.new_job("paid:email", {})
    with pytest.raises(InvalidArgumentError, match="'paid:email' is an event delivery, not a cron"):
        await admin.trigger_cron("paid:email")
    assert (await admin.new_job("reports:daily", {})).done  # a job of one's own, ':' or not
    # a delivery's name registered again as a job of one's own: the mark is written False
    await storage.definitions.register({"paid:email": JobDef(handler=noop)}, "w-setup", NOW)
    admin = await Admin.open(storage.db, "t_", clock, actor="alice")
    assert (await admin.new_job("paid:email", {})).done
    with pytest.raises(UnknownJobError) as unknown:
        await admin.new_job("webhok", {})
    assert "webhook-delivery" not in str(unknown.value)

    # a payload model this process does not have: its schema's required and unknown fields
    class Report(BaseModel):
        model_config = ConfigDict(extra="forbid")
        customer: str
        year: int = 2030

    class Loose(BaseModel):
        customer: str

    models = {"build": JobDef(handler=noop, payload_model=Report)}
    models["loose"] = JobDef(handler=noop, payload_model=Loose)
    await storage.definitions.register(models, "w-setup", NOW)
    with pytest.raises(InvalidPayloadError) as wrong:
        await admin.new_job("build", {"custmer": "acme"})
    assert str(wrong.value) == (
        "job 'build': payload does not match Report: missing 'customer'; unknown 'custmer' "
        "(did you mean 'customer'?) (its fields: 'customer', 'year')"
    )
    assert (await admin.new_job("build", {"customer": "acme"})).done
    assert (await admin.new_job("loose", {"customer": "acme", "extra": 1})).done  # allowed
    with pytest.raises(InvalidPayloadError, match="payload does not match Loose: missing"):
        await admin.new_job("loose", {})
    dup = await admin.duplicate(job.id)
    copy = dup.jobs[0]
    assert dup.done and copy.id != job.id
    assert (copy.name, copy.payload, copy.priority) == ("email", {"to": "a@b.c"}, 3)
    # exclusive: the registry knows "report" is exclusive, so a second active one is skipped
    first = await admin.new_job("report", {})
    second = await admin.new_job("report", {})
    assert first.done and first.jobs[0].tag == "main"
    assert not second.done
    assert "exclusive" in next(iter(second.skipped.values()))
    triggered = await admin.trigger_cron("nightly")
    task = triggered.jobs[0]
    assert (task.type, task.trigger, task.status) == ("cron_task", "manual", "pending")
    with pytest.raises(UnknownJobError, match="unknown cron 'daily'"):
        await admin.trigger_cron("daily")
    with pytest.raises(InvalidArgumentError, match="'email' is a job, not a cron: schedule one"):
        await admin.trigger_cron("email")
    assert "paused" not in created.detail
    await admin.pause("email")
    while_paused = await admin.new_job("email", {})  # created, said to wait for the resume
    assert while_paused.done and while_paused.detail["paused"] == ["email"]


async def test_run_now_retry_duplicate_and_trigger_say_the_name_is_paused(env: Any) -> None:
    """As new_job does, every action that queues a job of a paused name says so
    (detail["paused"]: the CLI prints it, the dashboard flashes it): nothing runs until the
    name is resumed."""
    admin, storage, clock = env
    later = str((await add(storage, scheduled_for=NOW + dt.timedelta(hours=3)))["_id"])
    failed = await ended(storage, S.ERRORED, at=1)
    await admin.pause("email")
    clock.advance(2)
    ran_now = await admin.run_now(later)
    retried = await admin.retry(failed)
    copied = await admin.duplicate(later)
    assert ran_now.done and retried.done and copied.done
    assert [r.detail.get("paused") for r in (ran_now, retried, copied)] == [["email"]] * 3
    await admin.resume("email")
    assert "paused" not in (await admin.duplicate(later)).detail


async def test_pause_resume_and_the_audit_log(env: Any) -> None:
    admin, storage, _ = env
    assert (await admin.pause("email")).done
    assert not (await admin.pause("email", actor="bob")).done
    assert await storage.paused.names() == {"email"}
    views = {d.name: d for d in await admin.list_definitions()}
    assert views["email"].paused and not views["report"].paused
    assert views["report"].tag == "main" and views["report"].concurrency == "exclusive"
    assert views["nightly"].kind == "cron"
    with pytest.raises(UnknownJobError):
        await admin.pause("nope")
    assert (await admin.resume("email")).done
    assert not (await admin.resume("email")).done
    log = await admin.audit_log()
    assert [(e.action, e.actor, e.ids) for e in log] == [
        ("name_resumed", "alice", []),
        ("name_resumed", "alice", ["email"]),
        ("name_paused", "bob", []),
        ("name_paused", "alice", ["email"]),
    ]


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_a_pause_or_resume_an_outage_stops_after_its_write_is_in_the_audit_log(
    env: Any, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """pause('email') saved the pause, then MongoDB stopped answering while the worker
    documents were updated: the error went on and the audit log said nothing of a pause that
    holds. As the job actions do, what was done is recorded with why (detail.interrupted)."""
    admin, storage, _ = env
    if action == "resume":
        await admin.pause("email")

    async def outage(name: str) -> None:
        raise AutoReconnect("connection reset (test)")

    where = "pause_everywhere" if action == "pause" else "resume_everywhere"
    monkeypatch.setattr(admin.storage.workers, where, outage)
    with pytest.raises(AutoReconnect):
        await getattr(admin, action)("email")
    monkeypatch.undo()
    assert await storage.paused.names() == ({"email"} if action == "pause" else set())
    entry = (await admin.storage.audit.recent())[0]
    assert entry["action"] == f"name_{action}d" and entry["ids"] == ["email"]
    assert entry["detail"]["name"] == "email"
    assert "AutoReconnect" in entry["detail"]["interrupted"]


async def test_pause_a_name_only_another_programs_jobs_have(env: Any) -> None:
    """A name only jobs another program inserted have (no status before their first claim,
    docs/scale.md) is listed by the overview with its queued jobs and a Pause button, and a
    name with jobs may be paused; pause() refused it as an unknown job."""
    admin, storage, _ = env
    due = D.epoch_ms(NOW) - 1000
    await storage.jobs.coll.insert_one(
        {"name": "imported", "payload": {}, "claim_name": "imported", "due_ms": due}
    )
    assert (await admin.overview()).unknown_names == {"imported": 1}
    assert (await admin.pause("imported")).done
    assert await storage.paused.names() == {"imported"}
    assert (await admin.overview()).paused_names == ["imported"]


async def test_overview_numbers_and_warnings(env: Any) -> None:
    admin, storage, _ = env
    await add(storage, at=-120)
    await add(storage, at=-30)
    await add(storage, scheduled_for=NOW + dt.timedelta(hours=1))
    await add(storage, "ghost")  # no worker defines it
    await add(storage, "report", tag="main")
    for i in range(3):
        await ended(storage, S.FINISHED, at=-200 + i)
    await ended(storage, S.ERRORED, at=-100)
    # a live worker serving "email" and the cron, but not "report" (tag main)
    worker = D.new_worker(
        NOW, ["secondary"], "runner-2", 1, ["email", "nightly"], 10.0, crons=["nightly"]
    )
    await storage.workers.register(worker)
    dead = D.new_worker(NOW - dt.timedelta(minutes=5), ["main"], "runner-1", 1, ["report"], 10.0)
    await storage.workers.register(dead)
    ov = await admin.overview(minutes=5)
    assert ov.counts["email"] == {"pending": 3, "finished": 3, "errored": 1}
    q = ov.queue["email"]
    assert (q.pending, q.due) == (3, 2)
    assert q.oldest_due_age_seconds == 120
    assert ov.queue["report"].due == 1
    assert sum(r.finished for r in ov.throughput) == 3
    assert sum(r.errored for r in ov.throughput) == 1
    assert len(ov.throughput) == 5 and ov.throughput[-1].minute == NOW
    assert (ov.workers_alive, ov.workers_dead) == (1, 1)
    assert ov.unserved_names == ["report"]
    assert ov.unknown_names == {"ghost": 1}
    text = "\n".join(ov.warnings)
    assert "job 'report' (tag 'main'): no live worker can run it (1 queued)" in text
    assert "1 queued job of unknown name 'ghost'" in text
    assert "kill them (their ids: job-processor jobs list --name ghost; then" in text
    assert "runner-1" in text and "heartbeat" in text
    workers = await admin.list_workers()
    assert [(w.instance_id, w.alive) for w in workers] == [("runner-2", True), ("runner-1", False)]
    crons = await admin.list_crons()
    assert crons[0].name == "nightly" and crons[0].timezone == "Europe/Paris"
    assert crons[0].next_slot_local is not None and crons[0].next_slot_local.hour == 3
    assert crons[0].served_by == [worker["_id"]]
    status = await admin.status()
    assert status.queue["pending"] == 5
    assert status.unserved_names == ["report"]
    json.dumps(ov.model_dump(mode="json"))


def test_durations() -> None:
    assert parse_duration("7d") == dt.timedelta(days=7)
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("1.5h") == dt.timedelta(minutes=90)
    with pytest.raises(InvalidArgumentError, match="must be positive"):
        parse_duration(0)
    assert parse_duration("36500d") == dt.timedelta(days=36_500)


@pytest.mark.parametrize("value", ["99999999999999d", "3000000d", "36501d", float("inf")])
def test_a_duration_past_100_years_is_refused_not_an_overflow(value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="is too long: at most 36500d"):
        parse_duration(value, "--older-than")
    with pytest.raises(InvalidArgumentError, match="must be positive"):
        parse_duration(float("nan"))


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-01:00", "0001-01-01T00:30+01:00"]
)
def test_a_date_outside_years_1_to_9999_in_utc_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^after '.*' is out of range: in UTC"):
        parse_time(text, "after")
    assert parse_time("0001-01-01T00:00:00+00:00", "after") == dt.datetime(1, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("ms", ["99999999999999999999", "-99999999999999999999", "nan", "1e400"])
def test_a_cursor_with_an_impossible_time_is_not_a_cursor(ms: str) -> None:
    token = base64.urlsafe_b64encode(f"{ms}.{'ab' * 12}".encode()).decode().rstrip("=")
    with pytest.raises(InvalidArgumentError, match="is not a cursor of a job listing"):
        decode_cursor(token)


async def test_a_json_payload_nested_too_deeply_is_refused(env: Any) -> None:
    admin, _, _ = env
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    with pytest.raises(InvalidPayloadError, match="'email': payload is nested too deeply"):
        await admin.new_job("email", deep)


async def test_pages_step_over_a_burst_created_in_one_instant(env: Any) -> None:
    admin, storage, _ = env
    from job_processor.storage import admin as store_admin

    n = store_admin.TIES_SLACK + 30
    docs = [D.new_job("email", {}, now=NOW) for _ in range(n)]
    await storage.jobs.coll.insert_many(docs)
    seen: list[str] = []
    page = await admin.list_jobs(limit=10)
    seen += [j.id for j in page.jobs]
    while page.next_cursor:
        page = await admin.list_jobs(limit=10, cursor=page.next_cursor)
        seen += [j.id for j in page.jobs]
    assert seen == sorted((str(d["_id"]) for d in docs), reverse=True)


async def test_sensitive_fields_are_never_shown_but_kept(env: Any) -> None:
    admin, storage, _ = env
    payload = {"to": "a@b.c", "password": "hunter2", "card": {"number": "4111", "exp": "12/30"}}
    created = await admin.new_job("email", payload)
    shown = created.jobs[0].payload
    assert shown == {
        "to": "a@b.c",
        "password": "[redacted]",
        "card": {"number": "[redacted]", "exp": "12/30"},
    }
    assert (await admin.get_job(created.jobs[0].id)).payload == shown
    assert (await admin.list_jobs(name="email")).jobs[0].payload == shown
    assert "hunter2" not in json.dumps((await admin.list_jobs()).model_dump(mode="json"))
    copy = (await admin.duplicate(created.jobs[0].id)).jobs[0]
    stored = await storage.jobs.get(object_id(copy.id))
    assert stored is not None and stored["payload"] == payload  # the duplicate has the real values
    strict = await Admin.open(admin.storage.db, "t_", sensitive_fields=["to"])
    assert (await strict.get_job(copy.id)).payload["to"] == "[redacted]"
    views = {d.name: d for d in await admin.list_definitions()}
    assert views["email"].sensitive_fields == ["password", "card.number"]


def test_redact_nested_and_lists() -> None:
    value = {"a": [{"k": 1, "x": 2}, {"k": 3}], "b": {"c": {"d": 4}}, "e": 5}
    assert redact(value, ["a.k", "b.c.d", "missing.x"]) == {
        "a": [{"k": "[redacted]", "x": 2}, {"k": "[redacted]"}],
        "b": {"c": {"d": "[redacted]"}},
        "e": 5,
    }
    assert value["e"] == 5 and value["a"][0]["k"] == 1  # a copy


def test_secret_values_under_a_sensitive_path_are_hidden_everywhere() -> None:
    from bson import ObjectId

    from job_processor.core.masking import hide_in_texts, redact_any, values_at
    from job_processor.core.models import Job

    card = {"number": "4111111111111111", "cvc": "123"}
    assert values_at({"card": card}, ["card"]) == {"4111111111111111"}  # under it; "123" too short
    assert values_at([{"card": card}], ["card.number"]) == {"4111111111111111"}  # in a list
    assert redact_any([{"card": card}], ["card"]) == [{"card": "[redacted]"}]
    nested = {"cards": [[{"number": "4111111111111111"}]]}  # lists of lists
    assert values_at(nested, ["cards.number"]) == {"4111111111111111"}
    assert redact(nested, ["cards.number"]) == {"cards": [[{"number": "[redacted]"}]]}
    job = Job.read(
        {
            "_id": ObjectId(),
            "name": "pay",
            "status": "errored",
            "payload": {"card": card},
            "output": {"error": "declined 4111111111111111"},
            "history": [{"attempt": 1, "error": "declined 4111111111111111"}],
        }
    )
    hide_in_texts(job, values_at(job.payload, ["card"]))
    assert job.error == "declined [redacted]"
    assert job.history[0]["error"] == "declined [redacted]"


async def test_payloads_and_checkpoints_of_the_wrong_type_are_redacted_too(env: Any) -> None:
    admin, storage, _ = env
    secret = "4111222233334444"
    doc = D.new_job("email", {}, now=NOW) | {
        "payload": [{"card": {"number": secret}}],  # another program stored a list
        "state": [{"password": "hunter2-hunter2"}],
        "output": f"declined {secret}",  # not a document: shown in invalid_fields, scrubbed
    }
    await storage.jobs.coll.insert_one(doc)
    shown = await admin.get_job(str(doc["_id"]))
    text = json.dumps(shown.model_dump(mode="json"))
    assert secret not in text and "hunter2-hunter2" not in text
    assert shown.invalid_fields["state"] == [{"password": "[redacted]"}]
    assert shown.invalid_fields["output"] == "declined [redacted]"
    assert shown.payload == {"(not a document)": [{"card": {"number": "[redacted]"}}]}


async def test_an_action_that_did_nothing_records_why_in_the_audit_log(env: Any) -> None:
    admin, storage, _ = env
    done = await ended(storage, S.FINISHED)
    result = await admin.retry([done])
    assert not result.done
    [entry] = await admin.audit_log(limit=1)
    assert entry.action == "jobs_retried" and entry.count == 0
    assert entry.detail["skipped"] == {done: "finished: only errored or killed jobs can be retried"}


async def test_jobs_without_a_hook_record_are_deleted_purged_trimmed_and_retried(
    env: Any,
) -> None:
    """A skipped job has no `exit_hook` field, and a job written by an older version may hold
    null there: "not owed" must match both in deletes and updates, on every server."""
    admin, storage, clock = env
    skipped = []
    for _ in range(3):  # an exclusive job while one is active: each recorded as skipped
        doc = await storage.jobs.insert(
            D.new_job("report", {}, now=NOW, tag="main", exclusive=True)
        )
        assert doc is not None
        if doc["status"] == S.SKIPPED.value:
            assert "exit_hook" not in doc
            skipped.append(str(doc["_id"]))
    assert len(skipped) == 2
    deleted = await admin.delete(skipped[0])
    assert (deleted.count, deleted.skipped) == (1, {})
    clock.advance(3600)
    recent = await add(storage, "report", at=3600, tag="main", exclusive=True)  # skipped now
    assert recent["status"] == S.SKIPPED.value
    purged = await admin.purge(status="skipped", older_than="1m")
    assert purged.count == 1
    with pytest.raises(JobNotFoundError):
        await admin.get_job(skipped[1])
    assert (await admin.get_job(str(recent["_id"]))).status == S.SKIPPED  # too recent: kept
    assert await storage.jobs.trim("report", [S.SKIPPED], keep=0, batch=10) == (1, False)
    errored = await ended(storage, S.ERRORED)  # then as an older version left it: exit_hook null
    await storage.jobs.coll.update_one({"_id": object_id(errored)}, {"$set": {"exit_hook": None}})
    retried = await admin.retry(errored)
    assert retried.count == 1 and (await admin.get_job(errored)).status == S.PENDING


async def test_a_killed_job_without_a_hook_is_deleted_after_its_name_registered_twice(
    env: Any,
) -> None:
    """Every worker start registers its names again (an update): the registry's flags still
    read as booleans, so the hook the definition does not have is a formality."""
    admin, storage, _ = env
    await storage.definitions.register(DEFS, "w-other", NOW)  # a second worker started
    job_id = str((await add(storage))["_id"])
    assert (await admin.kill([job_id])).done
    deleted = await admin.delete([job_id])
    assert deleted.done and deleted.skipped == {}


async def test_a_cron_tasks_error_is_masked_in_the_crons_listings(db: Any) -> None:
    """`crons list`, `status` and `get_status()` show a task's error as the job's page does:
    `token=...` pairs masked (they used to print it, traceback and all, in clear)."""
    from job_processor import init_job_processor
    from job_processor.core.masking import MASK
    from tests.helpers import wait_status

    async def backup(job: Any, signal: Any) -> None:
        raise RuntimeError("upload failed: token=tok_live_SECRET1234 password='p4ss w0rd'")

    crons = {"backup": {"cron_string": "0 3 * * *", "handler": backup}}
    p = await init_job_processor(db, crons=crons, poll_interval=0.1)
    async with p:
        task = await p.trigger_cron("backup")
        await wait_status(p, task.id, S.ERRORED)
        shown = [
            (await Admin(db).list_crons())[0].recent[0].error,
            (await p.get_status()).crons[0]["recent"][0]["error"],
        ]
    for error in shown:
        assert error is not None and error.startswith(
            f"RuntimeError: upload failed: token={MASK} password='{MASK}'"
        )
        assert "SECRET1234" not in error and "p4ss" not in error


async def echo(job: Any, signal: Any) -> None:
    return None


async def killing_two_stopped_at_the_second(
    db: Any, monkeypatch: pytest.MonkeyPatch, second: Any
) -> tuple[Any, Admin, str, str]:
    """Two pending jobs a and b, and an Admin whose second `find_one_and_update` (the kill of
    b) first awaits `second()` (which raises, or waits to be cancelled): (the processor, the
    Admin, a's id, b's id)."""
    p = await make(db, {"echo": JobDef(handler=echo)})
    a = await p.schedule_job("echo", delay=3600)
    b = await p.schedule_job("echo", delay=3600)
    admin = await Admin.open(db, actor="ops")
    coll = admin.storage.jobs.coll
    real, calls = coll.find_one_and_update, []

    async def stopped_at_the_second(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            await second()
        return await real(*args, **kw)

    monkeypatch.setattr(coll, "find_one_and_update", stopped_at_the_second)
    return p, admin, a.id, b.id


async def test_an_action_an_outage_stops_midway_is_still_in_the_audit_log(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill([a, b])`: a is killed, then MongoDB stops answering: the error goes on to the
    operator, and the audit log says what was done (a), with the error (it said nothing)."""

    async def fails() -> None:
        raise AutoReconnect("connection reset (test)")

    _, admin, a, b = await killing_two_stopped_at_the_second(db, monkeypatch, fails)
    with pytest.raises(AutoReconnect):
        await admin.kill([a, b])
    monkeypatch.undo()
    (entry,) = await admin.storage.audit.coll.find({}).to_list()
    assert entry["action"] == "jobs_killed" and entry["ids"] == [a]
    assert "AutoReconnect" in entry["detail"]["interrupted"]


async def test_a_purge_deletes_jobs_another_program_wrote_with_has_dependents_false_or_null(
    env: Any,
) -> None:
    """A program writing the documents itself may store `has_dependents: false` (or null) on
    a job with no dependents: a purge used to leave such jobs for ever (it only took the
    field absent, or the dependents settled)."""
    admin, storage, clock = env
    ids = []
    for value in (False, None):
        job_id = await ended(storage, S.FINISHED)
        await storage.jobs.coll.update_one(
            {"_id": object_id(job_id)}, {"$set": {"has_dependents": value}}
        )
        ids.append(job_id)
    clock.advance(3600)
    purged = await admin.purge(status="finished", older_than="1m")
    assert purged.count == 2
    for job_id in ids:
        with pytest.raises(JobNotFoundError):
            await admin.get_job(job_id)


async def test_list_crons_survives_a_stored_time_zone_this_process_lacks(env: Any) -> None:
    """Another version registered a time zone this process's tzdata lacks: the listing (CLI
    `crons`, the dashboard's crons page) used to raise; it shows the cron, with no local time."""
    admin, storage, _ = env
    await storage.crons.coll.update_one(
        {"_id": "nightly"}, {"$set": {"timezone": "Mars/Olympus_Mons"}}
    )
    (view,) = await admin.list_crons()
    assert view.name == "nightly" and view.timezone == "Mars/Olympus_Mons"
    assert view.next_slot_utc is not None and view.next_slot_local is None


async def test_crons_remove_an_outage_stops_can_be_run_again_to_the_end(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crons remove nightly` removed the cron, then MongoDB stopped answering before its
    pending tasks were deleted: run again, it said "not a stored cron" and the pending task
    stayed for ever (no worker defines it; `names forget` refused it as an active job). The
    tasks go first, then the cron: run again, it finishes the removal."""
    admin, storage, _ = env
    task = (await admin.trigger_cron("nightly")).jobs[0]
    real = admin.storage.jobs.delete_pending_tasks_of

    async def outage(names: list[str], now: dt.datetime) -> int:
        raise AutoReconnect("connection reset (test)")

    monkeypatch.setattr(admin.storage.jobs, "delete_pending_tasks_of", outage)
    with pytest.raises(AutoReconnect):
        await admin.remove_crons(["nightly"])
    monkeypatch.setattr(admin.storage.jobs, "delete_pending_tasks_of", real)
    again = await admin.remove_crons(["nightly"])
    assert again.changed == ["nightly"], again.skipped
    assert await storage.crons.docs(["nightly"]) == []
    assert await storage.job_admin.by_id(object_id(task.id)) is None


async def test_a_cron_gone_from_the_code_is_forgotten_once_pruned(env: Any) -> None:
    """A cron no worker defines any more: status says to prune it, then forget it. `forget`
    used to refuse any cron, pruned or not, so the warning could not be cleared."""
    admin, storage, clock = env
    clock.advance(3600)  # the setup worker, which defined it, is gone: served an hour ago
    now = clock.now()
    await storage.workers.register(  # a live worker of the new code, without the cron
        {"_id": "w-new", "hostname": "h", "pid": 1, "started_at": now, "last_seen": now}
        | {"names": ["email", "report"]}
    )
    warned = [w for w in (await admin.status()).warnings if "'nightly'" in w]
    assert (
        warned
        and "job-processor crons remove nightly" in warned[0]
        and "names forget nightly" in warned[0]
    )
    refused = await admin.forget("nightly")
    assert refused.changed == [] and "crons remove nightly" in refused.skipped["nightly"]
    await storage.crons.remove(["nightly"])  # what prune_crons() does, with its tasks
    assert (await admin.forget("nightly")).changed == ["nightly"]
    assert not [w for w in (await admin.status()).warnings if "'nightly'" in w]


@pytest.mark.parametrize(
    "blip_on", ["paused_read", "job_lost_reply", "audit_lost_reply", "redaction_read"]
)
async def test_a_new_job_rides_out_a_blip_before_and_after_its_insert(
    db: Any, monkeypatch: pytest.MonkeyPatch, blip_on: str
) -> None:
    """`jobs new` rides out a short outage: one job, one record. A dropped connection on the
    read of the paused names (before the insert), on the job's insert whose reply is lost
    (written again under the same id, it is recognised), on the audit record whose reply is
    lost after it landed, or on the read that redacts the jobs it returns (both after the
    insert) is retried: the call is not reported failed (the CLI would exit 3 and a second try
    make a second job), and the audit holds one entry."""
    from pymongo.errors import AutoReconnect

    from job_processor import AbortSignal, Job
    from tests.helpers import make

    async def echo(job: Job, signal: AbortSignal) -> None:
        return None

    p = await make(db, {"echo": JobDef(handler=echo)})
    await p.start()  # registers "echo"
    await p.stop()
    admin = await Admin.open(db, actor="ops")
    blipped: list[int] = []
    if blip_on in ("job_lost_reply", "audit_lost_reply"):
        audit = admin.storage.jobs.coll if blip_on == "job_lost_reply" else admin.storage.audit.coll
        real_insert = audit.insert_one

        async def lost(*args: Any, **kw: Any) -> Any:
            result = await real_insert(*args, **kw)
            if not blipped:
                blipped.append(1)
                raise AutoReconnect("connection reset (test): the reply was lost")
            return result

        monkeypatch.setattr(audit, "insert_one", lost)
    elif blip_on == "redaction_read":
        definitions = admin.storage.definitions
        real_all = definitions.all
        inserted = admin.storage.audit.coll

        async def after_the_insert(*args: Any, **kw: Any) -> Any:
            if not blipped and await inserted.count_documents({"action": "job_created"}):
                blipped.append(1)  # the first read after the action and its record
                raise AutoReconnect("connection reset (test)")
            return await real_all(*args, **kw)

        monkeypatch.setattr(definitions, "all", after_the_insert)
    else:
        paused = admin.storage.paused
        real_names = paused.names

        async def refused() -> Any:
            if not blipped:
                blipped.append(1)
                raise AutoReconnect("connection refused (test)")
            return await real_names()

        monkeypatch.setattr(paused, "names", refused)
    made = await admin.new_job("echo", "{}")
    monkeypatch.undo()
    assert blipped == [1] and made.done and len(made.jobs) == 1
    assert await admin.storage.jobs.coll.count_documents({"name": "echo"}) == 1
    assert await admin.storage.audit.coll.count_documents({"action": "job_created"}) == 1


@pytest.mark.parametrize("last_seen", [None, "yesterday"])
async def test_a_worker_document_without_a_readable_heartbeat_is_listed_dead(
    env: Any, last_seen: Any
) -> None:
    """A worker document whose last_seen is not a date (another program's, a damaged one; the
    sweep removes it as showing no heartbeat) is listed as dead, with what it holds: not a
    failure of list_workers(), the overview and status (the CLI, the dashboard), nor of the
    health check."""
    from job_processor.ops.health import check

    admin, storage, _ = env
    doc: dict[str, Any] = {"_id": "w-odd", "hostname": "h-odd", "pid": "x", "worker_timeout": "6"}
    if last_seen is not None:
        doc["last_seen"] = last_seen
    await storage.workers.coll.insert_one(doc)
    workers = await admin.list_workers()
    assert [(w.id, w.alive, w.hostname, w.pid) for w in workers] == [("w-odd", False, "h-odd", 0)]
    await admin.overview()
    assert [w.alive for w in (await admin.status()).workers] == [False]
    health = await check(storage.db, collection_prefix=storage.prefix, hostname="h-odd")
    assert not health.ok and "no worker heartbeat" in str(health.reason)


async def test_a_page_that_ends_on_a_document_another_program_inserted_has_a_cursor(
    env: Any,
) -> None:
    """The minimal insert docs/scale.md documents ({name, claim_name, due_ms, payload}: no
    status nor created_at until a worker claims it) reads as pending by id and is sorted last
    in the listings; a page that ends on one gives a cursor (it raised KeyError: the CLI's
    traceback, the dashboard's 500), whose next page repeats none of the jobs shown."""
    admin, storage, _ = env
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)  # before the inserts below
    ours = []
    for s in (0, 1):
        doc = await storage.jobs.insert(
            D.new_job("email", {"n": s}, now=earlier + dt.timedelta(seconds=s))
        )
        assert doc is not None
        ours.append(str(doc["_id"]))
    due = D.epoch_ms(earlier + dt.timedelta(hours=1))
    minimal = {"name": "email", "claim_name": "email", "due_ms": due, "payload": {}}
    foreign = [
        str((await storage.jobs.coll.insert_one(dict(minimal))).inserted_id) for _ in range(3)
    ]
    assert (await admin.get_job(foreign[0])).status == S.PENDING
    first = await admin.list_jobs(limit=3)
    assert [j.id for j in first.jobs][:2] == ours[::-1]  # newest first, theirs last
    assert first.jobs[2].id in foreign and first.next_cursor is not None
    second = await admin.list_jobs(limit=3, cursor=first.next_cursor)
    assert not {j.id for j in second.jobs} & {j.id for j in first.jobs}


@pytest.mark.parametrize(
    ("ids", "order"),
    [
        (["order.0", "order.1", "order.2"], ["order.2", "order.1", "order.0"]),  # a dot in it
        ([1, 2, 3], ["3", "2", "1"]),
        (["a", 1], ["a", "1"]),  # MongoDB's order: numbers before text
    ],
)
async def test_a_cursor_a_listing_gives_is_accepted_whatever_the_id_of_its_last_job(
    env: Any, ids: list[Any], order: list[str]
) -> None:
    """Another program's jobs with `_id`s of their own, created in one instant: the cursor a
    page ending on one gives is accepted by the next call, which goes on in MongoDB's order
    and lists each once."""
    admin, storage, _ = env
    for n, oid in enumerate(ids):
        await storage.jobs.insert(D.new_job("email", {"n": n}, now=NOW) | {"_id": oid})
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = await admin.list_jobs(limit=1, cursor=cursor)
        seen += [j.id for j in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == order


@pytest.mark.parametrize(
    "odd",
    [
        {"tags": [1]},
        {"worker_timeout": "abc"},
        {"crashed": {"error": "x"}},
        {"names": "x"},
        {"definitions": ["x"]},
        {"stuck_threads": "x"},
        {"running_jobs": 3},
        {"running_jobs": [3, "x"]},
    ],
    ids=lambda o: next(iter(o)),
)
async def test_a_worker_document_with_an_odd_field_is_still_listed(env: Any, odd: Any) -> None:
    """The listings read a worker document another program (another version) wrote, or a
    damaged one, whatever its fields hold: list_workers(), the overview and status (the CLI,
    the dashboard) list it, never fail on it."""
    admin, storage, _ = env
    doc: dict[str, Any] = {"_id": "w-odd", "hostname": "h-odd", "pid": 7, "last_seen": NOW}
    await storage.workers.coll.insert_one(doc | odd)
    assert [w.id for w in await admin.list_workers()] == ["w-odd"]
    await admin.overview()
    assert [w.id for w in (await admin.status()).workers] == ["w-odd"]


async def test_the_audit_log_lists_actions_of_two_processes_in_the_order_they_happened(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commands within one second, each a process of its own: the audit log listed them
    in the order of each process's random ObjectId bytes (a resume before the pause it
    followed: the name read as paused). Entries are ordered by the action's millisecond."""
    import os

    from bson import ObjectId

    from job_processor import AbortSignal, Job
    from tests.helpers import make

    async def ok(job: Job, signal: AbortSignal) -> None:
        return None

    processor = await make(db, {"ok": JobDef(handler=ok)})
    await processor.schedule_job("ok", {})  # a name with a job: one an operator can pause
    clock = FakeClock(dt.datetime(2030, 1, 1, 12, 0, 0, 100_000, tzinfo=dt.UTC))
    admin = Admin(db, clock=clock)

    def as_process(random: bytes) -> None:  # what a fresh process's ObjectId() draws
        monkeypatch.setattr(ObjectId, "_pid", os.getpid())
        monkeypatch.setattr(ObjectId, "_ObjectId__random", random * 5)

    as_process(b"\xff")  # the first command's process
    await admin.pause("ok", actor="first-command")
    clock.advance(0.002)  # 2 ms later, the same second
    as_process(b"\x00")  # the second command's
    await admin.resume("ok", actor="second-command")
    latest = await admin.audit_log(limit=2)
    assert [(e.action, e.actor) for e in latest] == [
        ("name_resumed", "second-command"),  # newest first: the name is NOT paused now
        ("name_paused", "first-command"),
    ]


_FORKED_ACTIONS = r"""
import asyncio, datetime as dt, json, os, sys
from pymongo import AsyncMongoClient
from job_processor import FakeClock, JobDef, init_job_processor
from job_processor.ops.admin import Admin

URL = sys.argv[1]
AT = dt.datetime(2030, 1, 1, 12, 0, 0, 100_000, tzinfo=dt.UTC)  # one millisecond for both


async def ok(job, signal):
    return None


async def setup():
    client = AsyncMongoClient(URL, tz_aware=True)
    db = client.get_default_database()
    p = await init_job_processor(db, jobs={"a": JobDef(handler=ok), "b": JobDef(handler=ok)})
    await p.schedule_job("a", {})
    await p.schedule_job("b", {})
    await client.close()


async def act(name):
    client = AsyncMongoClient(URL, tz_aware=True)
    try:
        admin = Admin(client.get_default_database(), clock=FakeClock(AT))
        await admin.pause(name, actor=f"worker-{name}")
    finally:
        await client.close()


async def listed():
    client = AsyncMongoClient(URL, tz_aware=True)
    admin = Admin(client.get_default_database())
    entries = await admin.audit_log(limit=10)
    await client.close()
    return sorted(e.actor for e in entries)


asyncio.run(setup())
children = []
for name in ("a", "b"):  # two workers forked from one loaded app (gunicorn --preload)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            asyncio.run(act(name))
            out = "ok"
        except Exception as exc:
            out = f"{type(exc).__name__}: {str(exc)[:80]}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    children.append((name, pid, r))
results = {}
for name, pid, r in children:
    os.waitpid(pid, 0)
    results[name] = os.read(r, 1000).decode()
print(json.dumps({"results": results, "audit": asyncio.run(listed())}))
"""


def test_actions_of_two_forked_processes_in_one_millisecond_are_both_recorded(
    scratch_url: str, tmp_path: Any
) -> None:
    """Audit ids ordered by the millisecond must stay unique across processes forked from one
    that imported the library (gunicorn --preload, a multiprocessing pool): a tail drawn once
    at import gave both the same _id, and the second action was done but raised
    DuplicateKeyError and was never recorded."""
    import subprocess
    import sys

    script = tmp_path / "forked_actions.py"
    script.write_text(_FORKED_ACTIONS)
    done = subprocess.run(
        [sys.executable, str(script), scratch_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"results": {"a": "ok", "b": "ok"}, "audit": ["worker-a", "worker-b"]}


async def test_admin_hides_a_sensitive_value_in_the_jobs_limit_key(env: Any) -> None:
    """operations.md: Admin(sensitive_fields=[...]) hides those paths' values in every job it
    returns (a value quoted elsewhere shows "[redacted]"); the limit key filled from it did
    not (the dashboard's own masking came after, the value already replaced)."""
    admin, storage, _ = env
    iban = "DE89370400440532013000"
    doc = await storage.jobs.insert(
        D.new_job("email", {"iban": iban, "note": f"for {iban}"}, now=NOW, limit_key=f"acct:{iban}")
    )
    assert doc is not None
    strict = await Admin.open(admin.storage.db, "t_", sensitive_fields=["iban"])
    shown = await strict.get_job(str(doc["_id"]))
    assert shown.payload == {"iban": "[redacted]", "note": "for [redacted]"}
    assert shown.limit_key == "acct:[redacted]"
    assert iban not in json.dumps(shown.model_dump(mode="json"), default=str)


async def test_a_purge_that_left_a_dependency_says_why(env: Any) -> None:
    """A purge whose only match is a dependency its dependents have not all counted deletes
    nothing (rightly) and said nothing: the audit log recorded no reason and the CLI printed
    "nothing matched" (operations.md: an action that did nothing records why)."""
    admin, storage, clock = env
    job_id = await ended(storage, S.FINISHED)
    await storage.jobs.coll.update_one(
        {"_id": object_id(job_id)}, {"$set": {"has_dependents": True}}
    )
    clock.advance(8 * 86400)
    purged = await admin.purge(status="finished", older_than="7d")
    assert (await admin.get_job(job_id)).status == S.FINISHED  # kept, rightly
    assert purged.count == 0
    assert list(purged.skipped.values()) == [
        "kept: jobs scheduled after them are not yet seen to have counted their end (a "
        "worker's sweep sees it within worker_timeout / 2); purge again after that"
    ]
    entry = (await admin.audit_log(limit=1))[0]
    assert entry.detail["kept_uncounted_dependents"] == 1 and entry.detail.get("skipped")


async def test_retry_many_retries_a_killed_bare_insert_without_crashing(env: Any) -> None:
    """A bare insert (no status, no created_at) can be killed; retrying the killed jobs of its
    name by filter retried it, then raised KeyError('created_at') computing the next page
    (the CLI printed a traceback and exited 1: "did nothing")."""
    admin, storage, _ = env
    bare = await storage.jobs.coll.insert_one({"name": "email", "payload": {"n": 1}})
    killed = await admin.kill(str(bare.inserted_id))
    assert killed.changed == [str(bare.inserted_id)]
    result = await admin.retry_many(name="email", status="killed")
    assert result.changed == [str(bare.inserted_id)]
    assert (await admin.get_job(str(bare.inserted_id))).status == S.PENDING


async def test_a_bad_audit_cursor_is_named_as_such(env: Any) -> None:
    """`before` is an audit entry id (the dashboard's /audit?before=...): a malformed one was
    refused as "not a job id", naming no field."""
    admin, _, _ = env
    with pytest.raises(InvalidArgumentError, match="before 'nope' is not an audit entry id"):
        await admin.audit_log(before="nope")


async def test_a_purge_counts_each_job_it_kept_once(env: Any) -> None:
    """A job kept both for its owed hook and for dependents not yet counted was reported
    twice (two skipped lines: "2 kept" when 1 was)."""
    admin, storage, clock = env
    job_id = await ended(storage, S.FINISHED)
    await storage.jobs.coll.update_one(
        {"_id": object_id(job_id)},
        {"$set": {"has_dependents": True, "exit_hook": "owed", "exit_hook_owner": None}},
    )
    clock.advance(8 * 86400)
    purged = await admin.purge(status="finished", older_than="7d")
    assert (await admin.get_job(job_id)).status == S.FINISHED  # kept, rightly
    kept = purged.detail.get("kept_owing_hook", 0) + purged.detail.get(
        "kept_uncounted_dependents", 0
    )
    assert kept == 1, f"1 job kept, reported as {kept}: {purged.skipped}"


async def test_retry_many_retries_every_killed_bare_insert_past_the_first_page(env: Any) -> None:
    """Undated documents (bare inserts) ending a page stopped the loop: those past the first
    page of 500 were silently not retried; and none behind a full page of dated jobs (no
    creation-time position reaches them). They are retried by _id after the dated ones."""
    admin, storage, _ = env
    dated = [D.new_job("email", {"n": i}, now=NOW) | {"status": "killed"} for i in range(500)]
    await storage.jobs.coll.insert_many(dated)
    inserted = await storage.jobs.coll.insert_many(
        [{"name": "email", "payload": {"n": -i}} for i in range(1, 502)]
    )
    ids = [str(x) for x in inserted.inserted_ids]
    assert len((await admin.kill(ids)).changed) == 501
    result = await admin.retry_many(name="email", status="killed")
    left = await storage.jobs.coll.count_documents({"name": "email", "status": "killed"})
    assert len(result.changed) == 1001 and left == 0, (len(result.changed), left)
    capped = await admin.retry_many(name="email", status="killed", limit=10)
    assert capped.changed == []  # nothing left to retry, and the cap holds


async def test_retry_many_retries_null_dated_jobs_behind_a_bare_insert(env: Any) -> None:
    """500 killed jobs another program wrote with created_at: null, then one bare insert (no
    created_at, the newest _id): every one of the 501 is retried, none silently left."""
    admin, storage, _ = env
    nulls = await storage.jobs.coll.insert_many(
        [{"name": "email", "payload": {"n": i}, "created_at": None} for i in range(500)]
    )
    bare = await storage.jobs.coll.insert_one({"name": "email", "payload": {"n": -1}})
    ids = [str(x) for x in nulls.inserted_ids] + [str(bare.inserted_id)]
    assert len((await admin.kill(ids)).changed) == 501
    result = await admin.retry_many(name="email", status="killed")
    left = [d["_id"] async for d in storage.jobs.coll.find({"name": "email", "status": "killed"})]
    assert len(result.changed) == 501 and left == [], (len(result.changed), left, result.skipped)


async def test_retry_many_retries_undated_jobs_of_every_id_type_past_a_page(env: Any) -> None:
    """Undated killed jobs past a full page: another program's non-ObjectId _id was not
    reached (paged by `_id $lt`, which compares one type only)."""
    admin, storage, _ = env
    bare = [{"name": "email", "payload": {"n": i}} for i in range(500)]
    bare.append({"_id": "ext-1", "name": "email", "payload": {"n": -1}})
    inserted = await storage.jobs.coll.insert_many(bare)
    ids = [str(x) for x in inserted.inserted_ids[:500]]
    assert len((await admin.kill(ids)).changed) == 500
    await storage.jobs.coll.update_one({"_id": "ext-1"}, {"$set": {"status": "killed"}})
    result = await admin.retry_many(name="email", status="killed")
    left = [d["_id"] async for d in storage.jobs.coll.find({"name": "email", "status": "killed"})]
    assert left == [], (len(result.changed), left, result.skipped)


async def test_retry_many_retries_a_job_with_a_text_created_at_past_a_full_page(env: Any) -> None:
    """Another program's job whose created_at is text sorts after every dated job: past a full
    page no creation-time position reached it, and the second pass took it for done (left,
    silently, on mongomock; a TypeError comparing text with a date on nx-27017)."""
    admin, storage, _ = env
    dated = [D.new_job("email", {"n": i}, now=NOW) | {"status": "killed"} for i in range(500)]
    await storage.jobs.coll.insert_many(dated)
    other = await storage.jobs.coll.insert_one(
        {"name": "email", "payload": {"n": -1}, "created_at": "2030-01-01T10:00:00Z"}
    )
    assert len((await admin.kill([str(other.inserted_id)])).changed) == 1
    result = await admin.retry_many(name="email", status="killed")
    left = [d["_id"] async for d in storage.jobs.coll.find({"name": "email", "status": "killed"})]
    assert left == [] and len(result.changed) == 501, (len(result.changed), left, result.skipped)


async def test_an_actor_with_a_lone_surrogate_is_audited_with_its_escape(env: Any) -> None:
    """`--actor` from argv, or getpass.getuser() from $USER: a non-UTF-8 byte arrives as a
    lone surrogate. The kill was applied, then bson refused the audit record (a raw
    UnicodeEncodeError, no record of a done action); an actor that is not text is refused
    before anything is done."""
    admin, storage, _ = env
    pending = str((await add(storage))["_id"])
    with pytest.raises(InvalidArgumentError, match="actor must be text"):
        await admin.kill(pending, actor=42)  # type: ignore[arg-type]
    assert (await admin.get_job(pending)).status == S.PENDING
    result = await admin.kill(pending, actor="bob\udcff")
    assert result.changed == [pending]
    entries = await storage.audit.recent()
    assert entries[0]["action"] == "jobs_killed" and entries[0]["actor"] == "bob\\udcff"


@pytest.mark.parametrize("actor", [0, False, b"", []])
async def test_an_actor_that_is_not_text_is_refused_even_when_falsy(env: Any, actor: Any) -> None:
    """`actor or self.actor` let a falsy non-text actor through: the kill was applied and
    audited under the admin's default actor, as if none had been given."""
    admin, storage, _ = env
    pending = str((await add(storage))["_id"])
    with pytest.raises(InvalidArgumentError, match="actor must be text"):
        await admin.kill(pending, actor=actor)
    assert (await admin.get_job(pending)).status == S.PENDING


@pytest.mark.parametrize("actor", [0, False, b"", []])
async def test_an_admins_own_actor_that_is_not_text_is_refused_at_construction(
    any_db: Any, actor: Any
) -> None:
    """`actor or default_actor()` swapped a falsy non-text actor for "user@host": its actions
    were applied and audited under someone else's name."""
    with pytest.raises(InvalidArgumentError, match="actor must be text"):
        Admin(any_db, "t_", FakeClock(NOW), actor=actor)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("worker_timeout", "30"),
        ("worker_timeout", None),
        ("worker_timeout", float("nan")),
        ("worker_timeout", 1e300),
        ("worker_timeout", -5),
        ("worker_timeout", True),
        ("collection_prefix", 5),
        ("collection_prefix", ""),
        ("collection_prefix", "a.b"),
        ("clock", "now"),
    ],
)
async def test_an_admins_options_of_the_wrong_type_or_range_are_refused_at_construction(
    db: Any, option: str, value: Any
) -> None:
    """Admin(db, worker_timeout="30") (or None, NaN, 1e300) was taken: `workers list`, `status`
    and the overview then raised a bare TypeError, ValueError or OverflowError as soon as a
    worker document recorded no timeout of its own (an older version's); -5 showed every such
    worker dead, True gave it one second. A prefix of 5 raised a bare TypeError, "" read the
    collections of no processor (init_job_processor refuses both), "a.b" failed at the first
    read; a clock without now() raised AttributeError at the first action. Each is refused,
    naming the option, before anything is read."""
    now = dt.datetime.now(dt.UTC)
    await db["job_processor_workers"].insert_one(
        {"_id": "old", "hostname": "h", "pid": 1, "started_at": now, "last_seen": now}
    )
    kw: dict[str, Any] = {option: value}
    prefix = kw.pop("collection_prefix", "job_processor_")
    with pytest.raises(InvalidArgumentError, match=rf"^{option} "):
        await Admin.open(db, prefix, **kw)
    with pytest.raises(InvalidArgumentError, match=rf"^{option} "):
        Admin(db, prefix, **kw)
    (worker,) = await Admin(db, worker_timeout=60).list_workers()  # a good one: as before
    assert worker.alive


async def _all_pages(admin: Any, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(200):
        page = await admin.list_jobs(limit=limit, cursor=cursor)
        seen += [j.id for j in page.jobs]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
    raise AssertionError("the pages never end")


async def test_paging_reaches_every_undated_job_of_a_large_backlog(db: Any) -> None:
    """Bare inserts are undated until claimed: a backlog of them (a paused name, no worker
    for it) can be large. Their pages were read from one capped window, and ended silently
    after 10,000; the bound is now on the server."""
    storage = await Storage.open(db, "t_")
    await storage.ensure_indexes()
    await storage.definitions.register(DEFS, "w-setup", NOW)
    admin = await Admin.open(db, "t_", FakeClock(NOW), actor="alice")
    await add(storage)  # a dated one before them
    n = 2_500
    await storage.jobs.coll.insert_many([{"name": "email", "payload": {}} for _ in range(n)])
    seen = await _all_pages(admin, 1000)
    assert len(seen) == len(set(seen)) == n + 1, len(seen)


async def test_paging_undated_jobs_with_mixed_id_types(env: Any) -> None:
    """Another program's `_id`s of several types: every page orders them as MongoDB does
    (ObjectIds, text, numbers), the first page too (nx-27017 sorted them its own way there,
    and a job fell between two pages)."""
    from bson import ObjectId

    admin, storage, _ = env
    await add(storage)
    for oid in [7, 3.5, "abc", "zz", ObjectId(), 12]:
        await storage.jobs.coll.insert_one({"_id": oid, "name": "email", "payload": {}})
    one = await _all_pages(admin, 100)
    assert len(one) == 7
    for size in (1, 2, 3, 4):
        paged = await _all_pages(admin, size)
        assert paged == one, (size, paged)


async def test_paging_goes_past_a_created_at_another_program_wrote_as_text(env: Any) -> None:
    """A text `created_at` (another program's) sorts between the dates and the undated jobs:
    a cursor after it went to the undated jobs below its own `_id` only (bare inserts made
    after it were lost); now the undated jobs follow whole."""
    admin, storage, _ = env
    await add(storage)
    await storage.jobs.coll.insert_one({"name": "email", "payload": {}, "created_at": "2020-01"})
    for _ in range(2):
        await storage.jobs.coll.insert_one({"name": "email", "payload": {}})
    one = await _all_pages(admin, 100)
    assert len(one) == 4
    assert await _all_pages(admin, 2) == one


async def test_paging_lists_an_undated_job_whose_id_is_the_largest_objectid(env: Any) -> None:
    """The ObjectId pass's bound left the largest ObjectId itself out."""
    from bson import ObjectId

    admin, storage, _ = env
    await add(storage)
    top = ObjectId("f" * 24)
    await storage.jobs.coll.insert_one({"_id": top, "name": "email", "payload": {}})
    await storage.jobs.coll.insert_one({"name": "email", "payload": {}})
    seen = await _all_pages(admin, 100)
    assert str(top) in seen and len(seen) == 3, seen
    assert await _all_pages(admin, 1) == seen


def test_a_cursor_keeps_a_decimal128_id() -> None:
    """A Decimal128 `_id` is a number the number pass lists: its cursor made it text, and the
    next page read every number again."""
    from bson import Decimal128

    from job_processor.ops.admin.inputs import encode_cursor

    doc = {"_id": Decimal128("2.5"), "name": "email"}
    assert decode_cursor(encode_cursor(doc)) == (None, Decimal128("2.5"))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda a: a.kill(None), "job_ids"),
        (lambda a: a.retry(7), "job_ids"),
        (lambda a: a.run_now(None), "job_ids"),
        (lambda a: a.delete(123), "job_ids"),
        (lambda a: a.duplicate(None), "job_id"),
        (lambda a: a.get_job(5), "job_id"),
        (lambda a: a.dependents(None), "job_id"),
        (lambda a: a.trigger_cron(None), "name"),
        (lambda a: a.get_jobs("6b16db2641fef3cc665b2d9c"), "get_jobs takes a list"),
        (lambda a: a.get_jobs(None), "get_jobs takes a list"),
    ],
)
async def test_an_id_or_name_of_the_wrong_type_is_refused_naming_the_field(
    db: Any, call: Any, field: str
) -> None:
    """Not a bare TypeError from deep inside (`list(None)`, difflib), nor a str split into its
    characters ("'6' is not a job id")."""
    admin = await Admin.open(db)
    with pytest.raises(InvalidArgumentError) as caught:
        await call(admin)
    assert str(caught.value).startswith(field), str(caught.value)


async def test_get_jobs_of_an_empty_list_is_an_empty_list(db: Any) -> None:
    admin = await Admin.open(db)
    assert await admin.get_jobs([]) == []


@pytest.mark.parametrize(
    ("action", "instead"),
    [("retry", "retry_many"), ("kill", "batches"), ("run_now", "batches"), ("delete", "purge")],
)
async def test_an_action_on_more_ids_than_max_bulk_is_refused_doing_nothing(
    env: Any, action: str, instead: str
) -> None:
    """retry / kill / run_now / delete of a list of ids had no cap (MAX_BULK applied to
    retry_many alone): each id a round trip, the audit entry keeping the first 1,000. More
    than MAX_BULK is refused before anything is done, naming the argument and what to do."""
    admin, storage, _ = env
    later = await add(storage, scheduled_for=NOW + dt.timedelta(hours=3))
    ids = [str(later["_id"])] + [str(ObjectId()) for _ in range(MAX_BULK)]
    with pytest.raises(InvalidArgumentError) as raised:
        await getattr(admin, action)(ids)
    message = str(raised.value)
    assert message.startswith(f"job_ids holds more than {MAX_BULK:,} ids") and instead in message
    assert (await admin.get_job(str(later["_id"]))).status == S.PENDING
    assert await storage.audit.recent() == []
    endless = (str(ObjectId()) for _ in iter(int, 1))  # never ends: read only past the cap
    with pytest.raises(InvalidArgumentError, match="more than"):
        await getattr(admin, action)(endless)
    await getattr(admin, action)(ids[:3])  # fewer: taken


async def test_kill_with_a_seen_attempt_kills_only_that_run(env: Any) -> None:
    """`seen_attempt` (the dashboard's confirmation pins it) is in the kill's own filter: the
    run shown is killed, another is skipped saying so; a job another program inserted (no
    `attempt` stored) is at attempt 0."""
    admin, storage, _ = env
    later = D.epoch_ms(NOW + dt.timedelta(hours=1))
    minimal = {"name": "email", "claim_name": "email", "due_ms": later, "payload": {}}
    foreign = str((await storage.jobs.coll.insert_one(minimal)).inserted_id)
    assert (await admin.kill(foreign, seen_attempt=0)).changed == [foreign]
    assert (await admin.get_job(foreign)).status == S.KILLED
    doc = {"name": "email", "claim_name": "email", "due_ms": later, "payload": {}}
    moved = str((await storage.jobs.coll.insert_one(doc)).inserted_id)
    result = await admin.kill(moved, seen_attempt=1)  # shown running; it is pending again
    assert result.changed == [], result
    assert result.skipped[moved].startswith("it has started another run since"), result.skipped
    job = await admin.get_job(moved)
    assert job.status == S.PENDING and job.kill_requested_at is None
    claimed = await storage.jobs.claim_next(["email"], "w1", NOW + dt.timedelta(hours=2))
    assert claimed is not None and str(claimed["_id"]) == moved
    result = await admin.kill(moved, seen_attempt=1)  # the run shown: requested
    assert result.changed == [moved] and result.detail == {"requested": [moved]}, result
    for bad in (-1, True, "1"):
        with pytest.raises(InvalidArgumentError, match=r"^seen_attempt must be"):
            await admin.kill(moved, seen_attempt=bad)


@pytest.mark.parametrize(
    "fields", ["card", b"card", 7, None, {"card": 1}, ["card", 7], ["card", ""], ["card..number"]]
)
async def test_sensitive_fields_that_are_no_list_of_paths_are_refused(db: Any, fields: Any) -> None:
    """A lone text was read as its characters: Admin(db, sensitive_fields="card") hid fields
    named "c", "a", "r" and "d" and showed the card number to every reader built on it (the
    CLI, the dashboard); other values raised a bare TypeError, or hid nothing."""
    with pytest.raises(InvalidArgumentError, match=r"^sensitive_fields (must be a|entries must)"):
        await Admin.open(db, sensitive_fields=fields)


@pytest.mark.parametrize("name", [[], ["email"], 2**70, {"$ne": "x"}])
async def test_a_purge_by_a_name_that_is_not_text_is_refused_and_purges_nothing(
    env: Any, name: Any
) -> None:
    """An empty list was "no name": every name's jobs were purged; a list raised a bare
    TypeError (unhashable), a huge number an UnknownJobError naming it as a job."""
    admin, storage, clock = env
    kept = [await ended(storage, S.FINISHED), await ended(storage, S.FINISHED, "report")]
    clock.advance(7200)
    audited = len(await admin.audit_log())
    with pytest.raises(InvalidArgumentError, match=r"^name must be text"):
        await admin.purge(status="finished", older_than="1h", name=name)
    assert [j.id for j in await admin.get_jobs(kept)] == kept  # nothing purged
    assert len(await admin.audit_log()) == audited  # nothing recorded


async def written(db: Any, prefix: str = "job_processor_") -> dict[str, int]:
    """How many documents the collections a replay writes hold."""
    names = ("jobs", "events", "audit", "crons")
    return {n: await db[prefix + n].count_documents({}) for n in names}


@pytest.mark.parametrize("attempts", ["x", -1, 0, None, 1.5, True, 2**63])
async def test_a_replay_with_webhook_attempts_that_are_no_attempt_count_is_refused(
    db: Any, attempts: Any
) -> None:
    """Named with the bound, before anything is written: "x" raised a bare ValueError deep in
    the fan-out, -1 or 0 stored a webhook delivery with max_attempts -1 or 0, None, 1.5 and
    True one with no usable max_attempts; 2**63 one BSON cannot store."""
    processor = await init_job_processor(db, jobs={}, **FAST)
    await processor.webhooks.add(url="https://crm.example.com/h", events=["paid"])
    event = await processor.emit("paid", {"n": 1})
    admin = await Admin.open(db)
    before = await written(db)
    since = event.emitted_at - dt.timedelta(minutes=1)
    for replay in (
        lambda: admin.replay_event(event.id, webhook_attempts=attempts),
        lambda: admin.replay_events("paid", since=since, webhook_attempts=attempts),
    ):
        with pytest.raises(InvalidArgumentError, match=r"^webhook_attempts must be an integer"):
            await replay()
    assert await written(db) == before


@pytest.mark.parametrize("event_id", [5, [], True, None, b"abcdefghijkl"])
async def test_a_replay_of_an_event_id_of_the_wrong_type_is_refused_naming_it(
    db: Any, event_id: Any
) -> None:
    """replay_event(5) (or [] or True) raised EventNotFoundError, "5 is not an event id", as
    if it were an id no event has: a wrong argument, named with the type it takes, before
    anything is written (12 bytes were even read as an ObjectId)."""
    processor = await init_job_processor(db, jobs={}, **FAST)
    await processor.emit("paid", {"n": 1})
    admin = await Admin.open(db)
    before = await written(db)
    for replay in (admin.replay_event, processor.replay_event):
        with pytest.raises(InvalidArgumentError, match=r"^event_id must be an event id") as raised:
            await replay(event_id)
        assert "a str of 24 hex characters" in str(raised.value)
    assert await written(db) == before


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda a, job: a.dependents(job, "10"), "limit"),
        (lambda a, job: a.dependents(job, None), "limit"),
        (lambda a, job: a.dependents(job, -1), "limit"),
        (lambda a, job: a.dependents(job, True), "limit"),
        (lambda a, job: a.remove_crons(None), "names"),
        (lambda a, job: a.remove_crons(7), "names"),
        (lambda a, job: a.remove_crons([["nightly"]]), "names"),
        (lambda a, job: a.kill(job, seen_attempt=2**70), "seen_attempt"),
        (lambda a, job: a.kill(job, seen_attempt=2**63), "seen_attempt"),
    ],
)
async def test_a_limit_names_or_attempt_of_the_wrong_type_or_range_is_refused(
    env: Any, call: Any, field: str
) -> None:
    """Named with the fix, before anything is written: not a bare TypeError or OverflowError
    from the driver or BSON ("10", 2**70), a limit of None or -1 taken as no limit, a list of
    lists raising "unhashable", nor a kill of an attempt no job can have recorded as skipped."""
    admin, storage, _ = env
    job = str((await add(storage))["_id"])
    before = await written(storage.db, "t_")
    with pytest.raises(InvalidArgumentError, match=f"^{field} must be"):
        await call(admin, job)
    assert await written(storage.db, "t_") == before
    assert (await admin.get_job(job)).status == S.PENDING


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda a: a.list_jobs(id=[]), "id"),
        (lambda a: a.list_jobs(id=0), "id"),
        (lambda a: a.list_jobs(cursor=[]), "cursor"),
        (lambda a: a.list_jobs(cursor=0), "cursor"),
        (lambda a: a.list_jobs(status=[]), "status"),
        (lambda a: a.list_jobs(status=False), "status"),
        (lambda a: a.audit_log(before=[]), "before"),
        (lambda a: a.audit_log(before=0), "before"),
    ],
)
async def test_a_listing_filter_that_is_empty_but_not_text_is_refused(
    env: Any, call: Any, field: str
) -> None:
    """list_jobs(id=[]) listed every job, as if no id had been given (so did cursor=[], a
    status of [] or False, and audit_log(before=[]) gave the first page): only None and ""
    mean "no filter" (the docstring); any other value is read as the filter, and one of the
    wrong type is refused naming it, as a non-empty one of that type is."""
    admin, storage, _ = env
    await add(storage)
    with pytest.raises(InvalidArgumentError) as raised:
        await call(admin)
    assert field in str(raised.value)


async def test_dependents_past_the_cap_are_capped_as_a_listing_is(db: Any) -> None:
    """A limit above 1000 is read as 1000, as list_jobs reads it (2**70 raised an
    OverflowError from BSON)."""
    admin = await Admin.open(db)
    job = await add(admin.storage)
    waiting = D.new_job("email", {}, now=NOW) | F.waiting_fields([job["_id"]], "skip")
    after = await admin.storage.jobs.insert(waiting)
    assert after is not None
    found = await admin.dependents(str(job["_id"]), 2**70)
    assert [j.id for j in found] == [str(after["_id"])]


async def test_a_replay_to_an_empty_list_of_subscribers_is_refused_naming_subscribers(
    db: Any,
) -> None:
    """subscribers=[] replayed nothing, the result saying "no subscriber is registered for
    its name now" while one is: refused, naming the field, before anything is written."""
    from job_processor import Subscriber

    async def crm(event: Any, signal: Any) -> None:
        return None

    processor = await init_job_processor(
        db, jobs={}, subscribers={"paid": [Subscriber("crm", crm)]}, **FAST
    )
    event = await processor.emit("paid", {"n": 1})
    admin = await Admin.open(db)
    before = await written(db)
    since = event.emitted_at - dt.timedelta(minutes=1)
    with pytest.raises(InvalidArgumentError, match=r"^subscribers is an empty list"):
        await admin.replay_event(event.id, [])
    with pytest.raises(InvalidArgumentError, match=r"^subscribers is an empty list"):
        await admin.replay_events("paid", since=since, subscribers=[])
    assert await written(db) == before


async def test_an_action_cancelled_midway_is_still_in_the_audit_log(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during `jobs kill A B` (the CLI's task cancelled while it kills b): a is killed,
    and the audit log says so, with the interruption (it recorded nothing: only an error, not
    a cancellation, was recorded)."""
    reached = asyncio.Event()

    async def hangs() -> None:
        reached.set()
        await asyncio.Event().wait()  # until cancelled

    p, admin, a, b = await killing_two_stopped_at_the_second(db, monkeypatch, hangs)
    task = asyncio.ensure_future(admin.kill([a, b]))
    await asyncio.wait_for(reached.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    (entry,) = await admin.storage.audit.coll.find({}).to_list()
    assert entry["action"] == "jobs_killed" and entry["ids"] == [a]
    assert "cancelled" in entry["detail"]["interrupted"]
    assert (await p.get_job(b)).status == "pending"


async def test_a_refused_retry_of_a_killed_hookless_job_leaves_its_exit_owed(env: Any) -> None:
    """A job of a name without on_job_exited, killed from the CLI (its exit is owed, no owner):
    a retry refused because another job holds its exclusive key leaves that exit owed, so a
    worker's sweep records it with the name's keep_failed expiry (the retry recorded it as
    settled with no expiry first: the killed job was kept for ever)."""
    admin, storage, _ = env
    killed = str((await add(storage, "report"))["_id"])
    assert (await admin.kill([killed])).done
    holder = await add(storage, "report", at=1, exclusive=True)  # holds the exclusive key now
    refused = await admin.retry([killed])
    assert refused.count == 0 and killed in refused.skipped
    assert str(holder["_id"]) in refused.skipped[killed]
    doc = await storage.jobs.get(object_id(killed))
    assert doc["status"] == S.KILLED.value and doc["exit_hook"] == "owed"
    await storage.jobs.coll.delete_one({"_id": holder["_id"]})  # the holder is gone: retried
    retried = await admin.retry([killed])
    assert retried.count == 1 and (await admin.get_job(killed)).status == S.PENDING


@pytest.mark.parametrize("stop", ["outage", "cancelled"])
async def test_a_retry_of_a_killed_hookless_job_stopped_midway_leaves_its_exit_owed(
    env: Any, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """The retry records the exit of a name without on_job_exited as settled (no expiry), then
    retries: an outage on that second write, or Ctrl-C (the CLI's task cancelled) while it
    waits, left the exit recorded as settled with no expiry and the job killed: kept for ever
    (only a refusal restored the owed exit)."""
    from pymongo.errors import AutoReconnect

    admin, storage, _ = env
    killed = str((await add(storage, "report"))["_id"])
    assert (await admin.kill([killed])).done
    retrying = asyncio.Event()

    async def stopped(*args: Any, **kw: Any) -> Any:
        retrying.set()
        if stop == "outage":
            raise AutoReconnect("connection reset (test)")
        await asyncio.Event().wait()  # until cancelled

    monkeypatch.setattr(admin.storage.jobs, "retry", stopped)
    task = asyncio.ensure_future(admin.retry([killed]))
    await asyncio.wait_for(retrying.wait(), 10)
    task.cancel() if stop == "cancelled" else None
    with pytest.raises(AutoReconnect if stop == "outage" else asyncio.CancelledError):
        await task
    doc = await storage.jobs.get(object_id(killed))
    assert doc["status"] == S.KILLED.value and doc["exit_hook"] == "owed", doc


async def purge_audited_though_stopped(admin: Admin, storage: Any) -> None:
    """A purge of the finished job older than 7 days that an outage stops: the job deleted,
    the error raised, and the audit log says so (count 1, interrupted)."""
    with pytest.raises(AutoReconnect):
        await admin.purge(status="finished", older_than="7d")
    assert await storage.jobs.coll.count_documents({"status": "finished"}) == 0
    (entry,) = await admin.storage.audit.coll.find({}).to_list()
    assert (entry["action"], entry["count"]) == ("jobs_purged", 1)
    assert "AutoReconnect" in entry["detail"]["interrupted"]


async def test_a_purge_stopped_after_its_delete_is_still_in_the_audit_log(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage on the read a purge makes after deleting (the jobs it kept as waited on): the
    jobs were deleted, the purge raised, and the audit log never showed it (only an action
    with changed ids was recorded when interrupted; a purge reports a count)."""
    from pymongo.errors import AutoReconnect

    admin, storage, clock = env
    await ended(storage, S.FINISHED, at=0)
    clock.advance(8 * 86400)

    async def outage(*args: Any, **kw: Any) -> Any:
        raise AutoReconnect("connection reset (test)")

    monkeypatch.setattr(admin.storage.job_admin, "uncounted_dependencies", outage)
    await purge_audited_though_stopped(admin, storage)


async def test_a_purge_stopped_between_its_deletes_is_still_in_the_audit_log(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge deletes in several commands (one per filter part): an outage (or Ctrl-C) on
    a later one, after one had deleted the jobs, raised with no audit entry (the count
    was known only once every delete had returned)."""
    from pymongo.errors import AutoReconnect

    admin, storage, clock = env
    await ended(storage, S.FINISHED, at=0)
    clock.advance(8 * 86400)
    coll = admin.storage.job_admin.coll
    real = coll.delete_many
    deleted: list[int] = []

    async def next_fails(*args: Any, **kw: Any) -> Any:
        if deleted:  # the delete after the one that deleted the job
            raise AutoReconnect("connection reset (test)")
        res = await real(*args, **kw)
        if res.deleted_count:
            deleted.append(res.deleted_count)
        return res

    monkeypatch.setattr(coll, "delete_many", next_fails)
    await purge_audited_though_stopped(admin, storage)
