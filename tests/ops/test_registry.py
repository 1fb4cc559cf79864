"""The definitions registry and paused names, with real processors on the test server."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from pydantic import BaseModel

from job_processor import AbortSignal, Job, JobDef
from job_processor.core import documents as D
from job_processor.core.errors import InvalidArgumentError, InvalidPayloadError, UnknownJobError
from job_processor.ops.admin import Admin
from tests.helpers import make, wait_for, wait_status


async def quick(job: Job, signal: AbortSignal) -> str:
    return job.name


JOBS: dict[str, Any] = {
    "main-report": JobDef(handler=quick, tag="main", max_attempts=2),
    "anywhere": JobDef(handler=quick, resumable=True),
    "other": JobDef(handler=quick),
}


async def test_workers_register_definitions_and_status_flags_what_nobody_runs(db: Any) -> None:
    processor = await make(db, JOBS, worker_tags=["secondary"])
    admin = await Admin.open(db)
    waiting = await processor.schedule_job("main-report", {})
    await processor.storage.jobs.insert(D.new_job("retired", {}, now=processor.clock.now()))
    async with processor:
        views = {d.name: d for d in await admin.list_definitions()}
        # every processor can deliver webhooks: its built-in "webhook-delivery" job is registered
        assert set(views) == {"main-report", "anywhere", "other", "webhook-delivery"}
        assert views["main-report"].tag == "main"
        assert views["main-report"].max_attempts == 2
        assert views["anywhere"].resumable
        assert views["anywhere"].served_by == [processor.worker_id]
        assert views["main-report"].served_by == []
        status = await processor.get_status()
        assert status.unserved_names == ["main-report"]
        assert any(
            "job 'main-report' (tag 'main'): no live worker can run it (1 queued)" in w
            for w in status.warnings
        ), status.warnings
        assert any("unknown name 'retired'" in w for w in status.warnings), status.warnings
        ov = await admin.overview()
        assert ov.unserved_names == ["main-report"]
        assert ov.unknown_names == {"retired": 1}
        assert (await processor.get_job(waiting.id)).status == "pending"
        # a "main" worker comes up: the name is served, the job runs, the warning goes
        main = await make(db, JOBS, worker_tags=["main"])
        async with main:
            await wait_status(main, waiting.id, "finished")  # type: ignore[arg-type]
            assert (await processor.get_status()).unserved_names == []


async def test_a_resume_wakes_the_claim_loop_at_the_heartbeat(db: Any) -> None:
    """An idle worker learns of a resume at its next heartbeat, and claims then: not at its
    next idle poll (15 s where change streams block)."""
    processor = await make(db, JOBS)
    admin = await Admin.open(db, actor="ops")
    await processor.heartbeat.register()
    await admin.pause("anywhere")
    await processor.heartbeat.tick()
    assert "anywhere" in processor.worker.paused
    processor.worker.wake.clear()
    await processor.heartbeat.tick()
    assert not processor.worker.wake.is_set()  # nothing changed: no wake-up
    await admin.resume("anywhere")
    await processor.heartbeat.tick()
    assert processor.worker.paused == frozenset() and processor.worker.wake.is_set()


async def test_a_paused_name_s_warning_counts_due_jobs_inserted_without_a_status(
    db: Any,
) -> None:
    """docs/scale.md's minimal insert has no status until its first claim: a pause holds it
    like any due job, and the warning counts it (no count by status holds it)."""
    processor = await make(db, JOBS)
    admin = await Admin.open(db, actor="ops")
    await processor.heartbeat.register()  # its names registered; no claim loop
    assert (await admin.pause("anywhere")).done
    due_ms = D.epoch_ms(processor.clock.now()) - 60_000
    for _ in range(2):
        await db["job_processor_jobs"].insert_one(
            {"name": "anywhere", "claim_name": "anywhere", "due_ms": due_ms, "payload": {}}
        )
    expected = (
        "'anywhere' is paused: 2 due jobs wait until it is resumed (job-processor names resume "
        "anywhere)"
    )
    assert expected in (await processor.get_status()).warnings
    assert expected in (await admin.overview()).warnings


async def test_a_paused_name_is_not_claimed_until_resumed(db: Any) -> None:
    processor = await make(db, JOBS)
    admin = await Admin.open(db, actor="ops")
    async with processor:
        assert (await admin.pause("anywhere")).done
        await wait_for(lambda: "anywhere" in processor.worker.paused)  # next heartbeat
        held = await processor.schedule_job("anywhere", {})
        after = await processor.schedule_job("other", {})  # would be claimed second
        await wait_status(processor, after.id, "finished")  # type: ignore[arg-type]
        assert (await processor.get_job(held.id)).status == "pending"
        status = await processor.get_status()
        assert status.paused_names == ["anywhere"]
        assert (
            "'anywhere' is paused: 1 due job waits until it is resumed (job-processor names "
            "resume anywhere)" in status.warnings
        )
        # a job scheduled for later is not held by the pause (yet): counted apart
        await processor.schedule_job("anywhere", {}, delay=3600)
        status = await processor.get_status()
        assert any(
            w.startswith(
                "'anywhere' is paused: 1 due job waits until it is resumed; 1 more scheduled later"
            )
            for w in status.warnings
        )
        overview = await admin.overview()
        assert any("1 due job waits until it is resumed; 1 more" in w for w in overview.warnings)
        assert (await admin.resume("anywhere")).done
        await wait_status(processor, held.id, "finished")  # type: ignore[arg-type]
        assert processor.worker.paused == frozenset()


async def test_a_name_no_worker_defines_any_more_can_be_forgotten(db: Any) -> None:
    """A job removed from the code (or a worker variant run once) stays registered, and status
    warns about it for 24 hours: `forget` removes it, unless something still needs it."""
    gone = await make(db, {"plain": JobDef(handler=quick), "other": JobDef(handler=quick)})
    async with gone:  # registers both, then stops: no live worker serves them
        pass
    admin = await Admin.open(db, actor="ops")
    status = await gone.get_status()
    assert any(w.startswith("job 'plain': no live worker can run it") for w in status.warnings)
    forgotten = await admin.forget("plain")
    assert forgotten.changed == ["plain"]
    assert "plain" not in {d.name for d in await admin.list_definitions()}
    assert not any("'plain'" in w for w in (await gone.get_status()).warnings)
    with pytest.raises(UnknownJobError, match="'plain' is not a registered job name"):
        await admin.forget("plain")
    queued = await gone.schedule_job("other")
    refused = await admin.forget("other")
    assert refused.skipped == {
        "other": "1 active job(s) of it: kill them or let them end first "
        "(job-processor jobs list --name other)"
    }
    await admin.kill([queued.id])
    serving = await make(db, {"other": JobDef(handler=quick)})
    async with serving:
        refused = await admin.forget("other")
        assert refused.skipped["other"].startswith("served or defined by 1 live worker(s)")
    assert (await admin.forget("other")).changed == ["other"]


def repairs(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The `paused_names_repaired` lines logged, their fields."""
    return [
        r.__dict__["fields"]
        for r in caplog.records
        if r.__dict__.get("event") == "paused_names_repaired"
    ]


async def test_a_pause_that_reached_no_worker_document_is_applied_by_the_safety_net(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator's process stored the pause, then lost MongoDB before updating the worker
    documents: every few minutes (with the registry's refresh) a worker reads the paused names
    itself and applies the difference to its document, logging `paused_names_repaired`; a
    resume the same way."""
    processor = await make(db, JOBS, logger=logging.getLogger("test.repair"))
    storage = processor.storage
    caplog.set_level(logging.INFO, logger="test.repair")
    await processor.start()
    try:
        worker = {"worker_id": processor.worker.worker_id}
        await processor.heartbeat.check_paused()  # nothing to repair: nothing said
        assert repairs(caplog) == []
        worker_id = processor.worker.worker_id
        await storage.paused.pause("anywhere", "ops", processor.clock.now())  # no worker told
        later = processor.clock.now() + dt.timedelta(minutes=10)
        await processor.heartbeat.after_sweep(later)  # with the registry's refresh
        assert processor.worker.paused == frozenset({"anywhere"})
        assert repairs(caplog) == [worker | {"paused": ["anywhere"], "resumed": []}]
        doc = await storage.workers.coll.find_one({"_id": worker_id})
        assert doc["paused"] == ["anywhere"]  # the heartbeats now return it
        await storage.paused.resume("anywhere")
        await processor.heartbeat.check_paused()
        assert processor.worker.paused == frozenset()
        assert repairs(caplog)[1:] == [worker | {"paused": [], "resumed": ["anywhere"]}]
        doc = await storage.workers.coll.find_one({"_id": worker_id})
        assert doc["paused"] == []
        # a pause stored, then resumed everywhere by an operator between its two reads: the
        # second read keeps the repair from pausing the name again
        await storage.paused.pause("other", "ops", processor.clock.now())
        registry = processor.heartbeat.registry
        assert registry is not None
        read = registry.paused_names
        reads = 0

        async def operator_resumes_meanwhile() -> set[str]:
            nonlocal reads
            reads += 1
            names = await read()
            if reads == 1:
                await storage.paused.resume("other")
                await storage.workers.resume_everywhere("other")
            return names

        registry.paused_names = operator_resumes_meanwhile  # type: ignore[method-assign]
        await processor.heartbeat.check_paused()
        assert processor.worker.paused == frozenset()
        doc = await storage.workers.coll.find_one({"_id": worker_id})
        assert doc["paused"] == []
    finally:
        await processor.stop()


async def test_a_pause_made_by_an_older_version_is_obeyed_while_one_of_its_workers_is_live(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling deploy: a worker of the version before the paused names on worker documents
    is live, and its version's CLI, dashboard or API pauses and resumes by writing
    `<prefix>paused` alone. This worker reads that at each heartbeat while such a worker is
    live (it ran 8 of 8 jobs of a name paused that way, for up to the safety net's 5 minutes),
    and no longer once it has gone."""
    processor = await make(db, JOBS, worker_timeout=60, logger=logging.getLogger("test.older"))
    storage = processor.storage
    caplog.set_level(logging.INFO, logger="test.older")
    await processor.start()
    try:
        now = processor.clock.now()
        older = {  # what the previous version registers: no `paused`, no `definitions`
            "_id": "old-host-1-6b14d0c198252a132de12cc2",
            "hostname": "old-host",
            "pid": 1,
            "instance_id": None,
            "tags": None,
            "concurrency": 1,
            "names": sorted(JOBS),
            "started_at": now,
            "last_seen": now,
            "worker_timeout": 60.0,
        }
        await storage.workers.coll.insert_one(older)
        await processor.recovery.sweep(now)
        await processor.heartbeat.after_sweep(now)
        assert processor.heartbeat.registry is not None
        assert processor.heartbeat.registry.older == {older["_id"]}
        await storage.paused.pause("anywhere", "ops", now)  # the older version's pause
        await processor.heartbeat.tick()
        assert processor.worker.paused == frozenset({"anywhere"})
        await storage.paused.resume("anywhere")  # and its resume
        await processor.heartbeat.tick()
        assert processor.worker.paused == frozenset()
        worker = {"worker_id": processor.worker.worker_id}  # both logged as repairs
        assert repairs(caplog) == [
            worker | {"paused": ["anywhere"], "resumed": []},
            worker | {"paused": [], "resumed": ["anywhere"]},
        ]
        await storage.workers.coll.delete_one({"_id": older["_id"]})  # the deploy is over
        await processor.recovery.sweep(now)
        await processor.heartbeat.after_sweep(now)
        assert processor.heartbeat.registry.older == frozenset()
        await storage.paused.pause("anywhere", "ops", now)  # no worker document told
        await processor.heartbeat.tick()
        assert processor.worker.paused == frozenset()  # left to the safety net
    finally:
        await processor.stop()


async def test_live_workers_that_define_a_name_differently_are_warned_about(db: Any) -> None:
    """Two apps (or two versions during a deploy) define "other" differently: each runs the
    jobs it claims with its own definition, so status and the admin report say so; once one
    stops, the warning goes."""

    async def another(job: Job, signal: AbortSignal) -> str:
        return "another"

    first = await make(db, JOBS, instance_id="app-1")
    second = await make(
        db, {"other": JobDef(handler=another, concurrency="exclusive")}, instance_id="app-2"
    )
    same = await make(db, JOBS, instance_id="app-3")  # the same definitions as app-1
    admin = await Admin.open(db)
    async with first, same:
        async with second:
            said = [w for w in (await first.get_status()).warnings if "defined differently" in w]
            assert said == [
                "'other' is defined differently by live workers (2 versions, one per group: "
                "app-1, app-3; app-2): its tag, options or handler differ, and each runs the "
                "jobs it claims with its own; a deploy under way, or two apps using one name "
                "(rename one)"
            ]
            assert said[0] in (await admin.status()).warnings
        assert not [w for w in (await first.get_status()).warnings if "differently" in w]


def test_definition_digests_ignore_the_handlers_module_and_event_deliveries() -> None:
    """The same code run as `python app.py` (module `__main__`) or `job-processor run app:make`
    is one definition; the built-in webhook-delivery, whose options follow each process's
    webhook options, is not compared."""
    from job_processor.core.event_documents import WEBHOOK_JOB
    from job_processor.storage.definitions import fingerprints

    async def handler(job: Job, signal: AbortSignal) -> None:
        return None

    here = JobDef(handler=handler, max_attempts=2)
    handler.__module__ = "__main__"
    as_script = JobDef(handler=handler, max_attempts=2)
    assert fingerprints({"a": here}) == fingerprints({"a": as_script})
    assert fingerprints({"a": here}) != fingerprints({"a": JobDef(handler=handler)})
    assert WEBHOOK_JOB not in fingerprints({WEBHOOK_JOB: here})


def test_definition_digests_tell_apart_what_two_versions_may_disagree_on() -> None:
    """A deploy that raises a limit's capacity (each version plans its slots from its own),
    changes a retention, the hook's bound or a cron's check-in margin: live workers of both
    versions are warned about as defining the name differently."""
    from job_processor import CronDef, Limit
    from job_processor.storage.definitions import fingerprints

    def digest(**options: Any) -> str:
        return fingerprints({"a": JobDef(handler=quick, **options)})["a"]

    base = digest(limit=Limit(key="partner", concurrency=1))
    for other in (
        digest(limit=Limit(key="partner", concurrency=5)),
        digest(limit=Limit(key="partner", concurrency=1, rate=10, per_seconds=60)),
        digest(limit=Limit(key="partner", concurrency=1), keep_finished=100),
        digest(limit=Limit(key="partner", concurrency=1), keep_failed=dt.timedelta(days=90)),
        digest(limit=Limit(key="partner", concurrency=1), on_job_exited_timeout=5),
    ):
        assert other != base
    assert base == digest(limit=Limit(key="partner", concurrency=1))

    def cron(margin: float) -> str:
        made = CronDef(handler=quick, cron_string="0 2 * * *", checkin_margin=margin)
        return fingerprints({"c": made})["c"]

    assert cron(60) != cron(300)


class ReportPayload(BaseModel):
    tenant_id: str
    customer: str
    rows: int


class OtherPayload(BaseModel):
    email: str


async def report(job: Job, signal: AbortSignal) -> str:
    return "report"


async def mail(job: Job, signal: AbortSignal) -> str:
    return "mail"


APP_A = {"send_report": JobDef(handler=report, payload_model=ReportPayload, max_attempts=3)}
APP_B = {
    "send_report": JobDef(
        handler=mail, payload_model=OtherPayload, concurrency="exclusive", max_attempts=1
    )
}
REPORT = {"tenant_id": "acme", "customer": "x", "rows": 40}
#: Sweeps (and so registry refreshes) only when the test drives them.
DRIVEN = {"worker_timeout": 600.0}


async def refresh(processor: Any) -> None:
    """One pass of the processor's sweep loop: the sweep, then the registry's refresh."""
    now = processor.clock.now()
    await processor.recovery.sweep(now)
    await processor.heartbeat.after_sweep(now)


async def test_a_definition_written_by_a_stopped_worker_is_written_again_by_a_live_one(
    db: Any,
) -> None:
    """w3 (app B) starts beside w2 (app A), both defining send_report: the registry shows B's
    (the last one started). Once w3 stops, w2's next refresh writes A's definition again, so
    the admin (and the CLI) check a new job's payload against the definition a live worker
    runs, not a dead one's."""
    w2 = await make(db, APP_A, instance_id="w2", **DRIVEN)
    w3 = await make(db, APP_B, instance_id="w3", **DRIVEN)
    admin = await Admin.open(db, actor="ops")
    async with w2:
        await refresh(w2)  # the periodic refresh, nothing to restore
        async with w3:
            row = await db["job_processor_definitions"].find_one({"_id": "send_report"})
            assert (row["registered_by"], row["payload_model"]) == (w3.worker_id, "OtherPayload")
            await refresh(w2)  # w3 is live: its row stands
            (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
            assert view.registered_by == w3.worker_id
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert view.registered_by == w3.worker_id  # until w2's refresh
        with pytest.raises(InvalidPayloadError, match="email"):
            await admin.new_job("send_report", REPORT)
        await refresh(w2)  # the sweep that finds w3 gone
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert (view.registered_by, view.served_by) == (w2.worker_id, [w2.worker_id])
        assert (view.payload_model, view.concurrency, view.max_attempts) == (
            "ReportPayload",
            "concurrent",
            3,
        )
        created = await admin.new_job("send_report", REPORT)
        assert created.changed
        await wait_status(w2, created.changed[0], "finished")  # type: ignore[arg-type]
        with pytest.raises(InvalidPayloadError, match="missing 'tenant_id'"):
            await admin.new_job("send_report", {"email": "a@b.c"})
        rows = db["job_processor_definitions"]
        restored = await rows.find_one({"_id": "send_report"})
        await refresh(w2)  # nothing changed: nothing written again
        again = await rows.find_one({"_id": "send_report"})
        assert again["registered_at"] == restored["registered_at"]


async def test_of_two_live_definitions_the_last_started_worker_s_is_written_again(
    db: Any,
) -> None:
    """A deploy under way: old (app A) and new (app C) workers are live, and a one-off worker
    (app B), started last, wrote the row. When it stops, the row is written again by the live
    worker that defines the name and started last (here the new one), whichever sweeps first."""

    async def newer(job: Job, signal: AbortSignal) -> str:
        return "newer"

    app_c = {"send_report": JobDef(handler=newer, payload_model=ReportPayload, max_attempts=5)}
    old = await make(db, APP_A, instance_id="old", **DRIVEN)
    new = await make(db, app_c, instance_id="new", **DRIVEN)
    one_off = await make(db, APP_B, instance_id="one-off", **DRIVEN)
    admin = await Admin.open(db)
    async with old, new:
        async with one_off:
            await refresh(old)
            await refresh(new)
        await refresh(old)  # not the one to write it: it leaves the row alone
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert view.registered_by == one_off.worker_id
        await refresh(new)
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert (view.registered_by, view.max_attempts) == (new.worker_id, 5)
        await refresh(old)  # written by a live worker: it stands
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert view.registered_by == new.worker_id


async def test_a_row_the_chosen_worker_does_not_write_is_written_at_the_next_refresh(
    db: Any,
) -> None:
    """The live worker that should write a gone writer's row may run a version that does not
    (a rolling upgrade): another live worker that defines the name writes it at its own next
    refresh (the compare-and-set on the gone writer keeps it to one)."""
    old = await make(db, APP_A, instance_id="old", **DRIVEN)
    newer = await make(db, APP_A, instance_id="newer", **DRIVEN)  # never refreshes here
    one_off = await make(db, APP_B, instance_id="one-off", **DRIVEN)
    admin = await Admin.open(db)
    async with old, newer:
        async with one_off:
            await refresh(old)
        await refresh(old)  # newer started last: left to it
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert view.registered_by == one_off.worker_id
        later = old.clock.now() + dt.timedelta(minutes=6)  # the next periodic refresh
        workers = db["job_processor_workers"]
        for live in (old, newer):  # both still beat by then
            await workers.update_one({"_id": live.worker_id}, {"$set": {"last_seen": later}})
        await old.recovery.sweep(later)
        await old.heartbeat.after_sweep(later)
        live_ids = {w["_id"] for w in old.recovery.live or []}
        assert live_ids == {old.worker_id, newer.worker_id}  # newer was not declared dead
        (view,) = [d for d in await admin.list_definitions() if d.name == "send_report"]
        assert (view.registered_by, view.payload_model) == (old.worker_id, "ReportPayload")


async def test_the_periodic_refresh_also_writes_a_dead_worker_s_definition_again(
    db: Any,
) -> None:
    """A row whose writer was gone before this worker's last sweep (no departure seen): the
    refresh every 5 minutes writes it again."""
    gone = await make(db, APP_B, instance_id="gone", **DRIVEN)
    async with gone:
        pass
    w2 = await make(db, APP_A, instance_id="w2", **DRIVEN)
    async with w2:
        await refresh(w2)  # the first refresh
        row = await db["job_processor_definitions"].find_one({"_id": "send_report"})
        assert row["registered_by"] == w2.worker_id  # its own start wrote it
        await db["job_processor_definitions"].update_one(
            {"_id": "send_report"}, {"$set": {"registered_by": gone.worker_id}}
        )
        await refresh(w2)  # within 5 minutes: not yet
        row = await db["job_processor_definitions"].find_one({"_id": "send_report"})
        assert row["registered_by"] == gone.worker_id
        later = w2.clock.now() + dt.timedelta(minutes=6)
        await w2.recovery.sweep(later)
        await w2.heartbeat.after_sweep(later)
        row = await db["job_processor_definitions"].find_one({"_id": "send_report"})
        assert (row["registered_by"], row["payload_model"]) == (w2.worker_id, "ReportPayload")


async def test_a_worker_that_starts_beside_a_different_definition_of_a_name_warns(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """At start, a worker compares the digests on the live workers' documents (read by its
    first sweep) with its own: each name another live worker defines differently is logged
    (`job_defined_differently`), since each runs the jobs it claims with its own definition."""
    logger = logging.getLogger("test.registry")
    w2 = await make(db, APP_A | {"other": JobDef(handler=quick)}, instance_id="w2", logger=logger)
    w3 = await make(db, APP_B | {"other": JobDef(handler=quick)}, instance_id="w3", logger=logger)
    same = await make(db, APP_A, instance_id="w4", logger=logger)
    with caplog.at_level(logging.INFO, logger="test.registry"):
        async with w2:
            async with w3:
                pass
            async with same:  # the same definition as w2's: nothing to say
                pass

    def said(processor: Any) -> list[dict[str, Any]]:
        return [
            r.__dict__["fields"]
            for r in caplog.records
            if r.__dict__.get("event") == "job_defined_differently"
            and r.__dict__["fields"]["worker_id"] == processor.worker_id
        ]

    assert said(w3) == [
        {
            "job_name": "send_report",
            "worker_id": w3.worker_id,
            "other_workers": [w2.worker_id],
            "hint": "rename one, or finish the deploy",
        }
    ]
    assert said(w2) == [] and said(same) == []


async def test_a_refresh_while_every_row_s_writer_is_live_is_one_write(
    mongo_url: str, db: Any
) -> None:
    """The common case costs what it did: one update_many on the registry per refresh (it
    matches only rows a live worker wrote); a departure that leaves no stale row adds none."""
    from pymongo import AsyncMongoClient, monitoring

    class Recorder(monitoring.CommandListener):
        def __init__(self) -> None:
            self.names: list[str] = []

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if str(event.command.get(event.command_name, "")).endswith("definitions"):
                self.names.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    recorder = Recorder()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[recorder]
    )
    try:
        bystander = await make(client[db.name], {"elsewhere": JobDef(handler=quick)}, **DRIVEN)
        w2 = await make(client[db.name], APP_A, **DRIVEN)
        await bystander.start()  # started first: w2 writes the rows they share
        await w2.start()
        try:

            async def refreshed(now: dt.datetime) -> list[str]:
                await w2.recovery.sweep(now)
                recorder.names.clear()
                await w2.heartbeat.after_sweep(now)
                return list(recorder.names)

            now = w2.clock.now()
            assert await refreshed(now) == ["update"]  # the first refresh
            await bystander.stop()  # a worker leaves (w2's rows are its own)
            assert await refreshed(now) == ["update"]  # the refresh its departure triggers
            assert await refreshed(now) == []  # nothing changed
            assert await refreshed(now + dt.timedelta(minutes=6)) == ["update"]  # periodic
        finally:
            await w2.stop()
            await bystander.stop()
    finally:
        await client.close()


@pytest.mark.parametrize("last", ["resume", "pause"])
async def test_a_pause_and_a_resume_made_at_once_leave_the_workers_as_the_registry_says(
    db: Any, monkeypatch: pytest.MonkeyPatch, last: str
) -> None:
    """Bob's action lands between Alice's write of `<prefix>paused` and her update of the
    worker documents: whichever order, the workers end holding what `<prefix>paused` says
    (they used to keep Alice's state for up to 5 minutes, while `names list` showed Bob's)."""

    async def echo(job: Any, signal: Any) -> None:
        return None

    p = await make(db, {"echo": JobDef(handler=echo)})
    await p.start()  # registers "echo"
    await p.stop()
    now = dt.datetime.now(dt.UTC)
    await p.storage.workers.register(
        {"_id": "w-1", "hostname": "h", "pid": 1, "started_at": now, "last_seen": now, "paused": []}
    )  # as a worker registers (documents.worker_doc)
    alice, bob = await Admin.open(db, actor="alice"), await Admin.open(db, actor="bob")
    if last == "pause":  # Alice resumes while Bob pauses
        await alice.pause("echo")
    first, second = (alice.pause, bob.resume) if last == "resume" else (alice.resume, bob.pause)
    workers = alice.storage.workers
    method = "pause_everywhere" if last == "resume" else "resume_everywhere"
    real, interleaved = getattr(workers, method), []

    async def bob_acts_first(name: str) -> None:
        if not interleaved:
            interleaved.append(1)
            await second(name)  # between Alice's two writes
        await real(name)

    monkeypatch.setattr(workers, method, bob_acts_first)
    await first("echo")
    monkeypatch.undo()
    assert interleaved == [1]
    registry = "echo" in await alice.storage.paused.names()
    assert registry == (last == "pause")
    doc = await db["job_processor_workers"].find_one({"_id": "w-1"})
    assert ("echo" in (doc.get("paused") or [])) == registry


async def test_a_cron_that_a_deploy_turned_into_a_job_can_be_removed(db: Any) -> None:
    """v1 had the cron 'cleanup'; v2 defines 'cleanup' as a plain job. No v2 worker fires the
    stored cron nor registers it again (its document lists its crons): `crons remove cleanup`
    clears it, and `crons list` shows no worker serving it; a worker that defines it as a
    cron still holds it."""
    v1 = await make(db, {}, crons={"cleanup": {"cron_string": "0 2 * * *", "handler": quick}})
    admin = await Admin.open(db, actor="ops")
    async with v1:
        held = await admin.remove_crons("cleanup")
        assert held.skipped["cleanup"].startswith("served by 1 live worker(s)")
    v2 = await make(db, {"cleanup": JobDef(handler=quick)})
    async with v2:
        [cron] = await admin.list_crons()
        assert cron.served_by == []
        result = await admin.remove_crons("cleanup")
        assert result.changed == ["cleanup"], result.skipped


async def test_forget_refuses_a_name_a_live_worker_defines_without_claiming_it(db: Any) -> None:
    """operations.md: a worker records every JobDef its process knows, not only the names it
    claims; `names forget` is refused while a live worker serves a name ("it would register
    it again"). A live replica defines 'report' (tag 'batch') but, with worker_tags ['web'],
    claims it not: forget went through, nothing wrote the row back, and the job that replica
    then queued was errored "no worker defines it" once the grace had passed."""
    from job_processor import FakeClock, JobStatus

    clock = FakeClock(dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC))
    jobs = {"web": JobDef(handler=quick), "report": JobDef(handler=quick, tag="batch")}
    web = await make(db, jobs, clock=clock, worker_tags=["web"])
    await web.heartbeat.register()
    other = await make(db, {"web": JobDef(handler=quick)}, clock=clock)
    await other.heartbeat.register()
    admin = await Admin.open(db, actor="ops", clock=clock)
    refused = await admin.forget("report")
    assert refused.changed == [], refused
    assert refused.skipped["report"].startswith("served or defined by 1 live worker(s)")
    job = await web.schedule_job("report")  # the live replica that defines it queues one
    clock.advance(3700)  # past unknown_name_grace
    await other.recovery.error_unknown_names(clock.now())
    got = await web.get_job(job.id)
    assert got.status == JobStatus.PENDING, (got.status, got.error)


async def charge_declined(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError(f"card {job.payload['card']} declined")


async def test_forget_refuses_a_name_whose_ended_jobs_only_its_row_hides(db: Any) -> None:
    """`names forget` dropped the registry row, the only place readers learn a definition's
    sensitive_fields from: the name's ended jobs (which stay) were then shown in clear. It is
    refused while such jobs remain; a name without sensitive fields is forgotten as before."""
    processor = await make(
        db,
        {
            "charge": JobDef(handler=charge_declined, sensitive_fields=("card",)),
            "plain": JobDef(handler=quick),
        },
    )
    async with processor:
        job = await processor.schedule_job("charge", {"card": "4111-1111-1111-1111"})
        await wait_status(processor, job.id, "errored")  # type: ignore[arg-type]
        other = await processor.schedule_job("plain", {})
        await wait_status(processor, other.id, "finished")  # type: ignore[arg-type]
    admin = await Admin.open(db)
    refused = await admin.forget("charge")
    assert refused.changed == [] and "1 ended job(s)" in refused.skipped["charge"], refused
    after = await admin.get_job(job.id)
    assert "4111" not in str(after.payload) + str(after.output), after
    assert (await admin.forget("plain")).changed == ["plain"]


async def test_forget_refuses_a_name_whose_queued_jobs_another_program_inserted(db: Any) -> None:
    """A job another program inserted (docs/scale.md's minimal document) has no status until
    its first claim, yet it is queued: status counts it ("(1 queued)"). `names forget`, refused
    while jobs of a name are active, counted statuses only, and forgot the name: its queued job
    became one of an unknown name, which a worker errors after unknown_name_grace."""
    gone = await make(db, {"imported": JobDef(handler=quick)})
    async with gone:  # registers it, then stops: no live worker serves it
        pass
    due = D.epoch_ms(gone.clock.now() + dt.timedelta(days=1))
    await gone.storage.jobs.coll.insert_one(
        {"name": "imported", "payload": {}, "claim_name": "imported", "due_ms": due}
    )
    admin = await Admin.open(db)
    refused = await admin.forget("imported")
    assert refused.changed == [], refused
    assert refused.skipped["imported"].startswith("1 active job(s) of it"), refused
    assert "imported" in {d.name for d in await admin.list_definitions()}


async def test_the_commands_a_refusal_gives_quote_the_name(db: Any) -> None:
    """Any non-empty text is a job or cron name ("send email"): the commands forget, new_job
    and trigger_cron give when they refuse one left it unquoted, so run as shown they failed
    (two arguments), as the paused name's resume command did (087549b)."""
    cron = {"nightly report": {"cron_string": "0 2 * * *", "handler": quick}}
    gone = await make(db, {"send email": JobDef(handler=quick)}, crons=cron)
    async with gone:  # registers both, then stops: no live worker serves them
        pass
    admin = await Admin.open(db, actor="ops")
    await gone.schedule_job("send email")
    refused = await admin.forget("send email")
    assert refused.skipped["send email"].endswith(
        "(job-processor jobs list --name 'send email')"
    ), refused
    refused = await admin.forget("nightly report")
    assert "job-processor crons remove 'nightly report' (or" in refused.skipped["nightly report"]
    with pytest.raises(InvalidArgumentError, match=r"crons trigger 'nightly report'\)"):
        await admin.new_job("nightly report", {})
    with pytest.raises(InvalidArgumentError, match=r"jobs new 'send email'\)"):
        await admin.trigger_cron("send email")


async def test_forget_refuses_a_name_whose_bare_inserts_wait_to_be_adopted(db: Any) -> None:
    """A bare `{name, payload}` another program inserted (docs/scale.md) reads as pending and
    is adopted by a worker's sweep (never while no worker is up): forget counted statuses and
    the claim index, which hold neither, and forgot the name, turning the job, once adopted,
    into one of an unknown name that a worker errors after unknown_name_grace."""
    gone = await make(db, {"imported": JobDef(handler=quick)})
    async with gone:  # registers it, then stops: no live worker serves it
        pass
    inserted = await gone.storage.jobs.coll.insert_one({"name": "imported", "payload": {}})
    assert (await gone.get_job(str(inserted.inserted_id))).status == "pending"
    admin = await Admin.open(db)
    refused = await admin.forget("imported")
    assert refused.changed == [], refused
    assert refused.skipped["imported"].startswith("1 active job(s) of it"), refused
    assert "imported" in {d.name for d in await admin.list_definitions()}
