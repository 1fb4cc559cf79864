"""`JobProcessor.get_status()` agrees with `job-processor status` (Admin.status) and the overview
(an outside review's findings, each failing before its fix).

docs/operations.md ("Definitions registry and warnings"): "`get_status()`, `job-processor
status` and the overview warn about: ... workers whose heartbeat stopped (awaiting recovery),
no live worker at all, ...". Admin.status's docstring: "What `JobProcessor.get_status()`
reports, from the database alone". Health and the dashboard call a worker alive when its last
heartbeat is within *the worker's own* `worker_timeout` (recorded on its document).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor import FakeClock
from job_processor.core import documents as D
from job_processor.ops.admin import Admin
from job_processor.storage import Storage
from tests.helpers import make

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


async def _silent_worker(db: Any, seconds_ago: float, worker_timeout: float) -> dict[str, Any]:
    then = NOW - dt.timedelta(seconds=seconds_ago)
    doc = D.new_worker(then, None, "runner-9", 1, ["ok"], worker_timeout=worker_timeout)
    await Storage(db).workers.register(doc)
    return doc


async def test_get_status_warns_of_a_silent_worker_and_of_no_live_worker(db: Any) -> None:
    clock = FakeClock(NOW)
    processor = await make(db, {}, clock=clock)  # a web app's processor: not started
    silent = await _silent_worker(db, seconds_ago=120, worker_timeout=30)

    from_cli = await Admin(db, clock=clock).status()  # `job-processor status`
    assert any(silent["_id"] in w and "heartbeat" in w for w in from_cli.warnings)
    assert "no live worker: nothing is being run" in from_cli.warnings

    status = await processor.get_status()
    assert [w.alive for w in status.workers] == [False]
    # documented: get_status() warns too (it does not)
    assert any(silent["_id"] in w and "heartbeat" in w for w in status.warnings), status.warnings
    assert any("no live worker" in w for w in status.warnings), status.warnings


async def test_get_status_judges_liveness_by_the_workers_own_timeout(db: Any) -> None:
    """A worker with worker_timeout=60 that beat 40 s ago is alive for health, the dashboard
    and `job-processor status`; get_status() in a process with the default 30 s calls it dead."""
    from job_processor.ops import health

    clock = FakeClock(NOW)
    processor = await make(db, {}, clock=clock, worker_timeout=30.0, heartbeat_interval=5.0)
    await _silent_worker(db, seconds_ago=40, worker_timeout=60)

    checked = await health.check(db, instance_id="runner-9", clock=clock)
    assert checked.ok, checked.reason
    from_cli = await Admin(db, clock=clock).status()
    assert [w.alive for w in from_cli.workers] == [True]

    status = await processor.get_status()
    assert [w.alive for w in status.workers] == [True], "get_status() disagrees with the CLI"


async def test_status_never_advises_a_forget_that_is_refused(db: Any) -> None:
    """status advised `names forget child` for a name whose only job waits for another job,
    and `names forget` refuses a name with waiting (or running) jobs: the advice kills its
    queued jobs first."""
    from job_processor import AbortSignal, Job, JobDef

    async def ok(job: Job, signal: AbortSignal) -> None:
        return None

    processor = await make(db, {"parent": JobDef(handler=ok), "child": JobDef(handler=ok)})
    async with processor:  # a worker that defined both: registered, served just now
        parent = await processor.schedule_job(
            "parent", {}, scheduled_for=processor.clock.now() + dt.timedelta(days=1)
        )
        child = await processor.schedule_job("child", {}, after=[parent.id])
    assert (await processor.get_job(child.id)).status == "waiting"
    admin = await Admin.open(db)
    [advice] = [w for w in (await admin.status()).warnings if w.startswith("job 'child'")]
    # a forget only once its queued jobs are killed (it is refused before: the advice says so)
    assert "kill its queued jobs" in advice, advice
    assert advice.index("kill its queued jobs") < advice.index("names forget"), advice
    assert "1 job of it waiting for other jobs" in advice, advice
    forgotten = await admin.forget("child")
    assert forgotten.changed == [], forgotten  # refused while its job waits
    assert (await processor.kill_job(child.id)).status == "killed"
    assert (await admin.forget("child")).changed == ["child"]  # then taken, as advised


async def test_status_from_the_cli_warns_of_an_exclusive_cron_stuck_behind_a_job(db: Any) -> None:
    """crons.md: get_status() warns once an exclusive cron's last three slots were skipped
    behind the same job; the CLI's `status` and the dashboard (Admin.status, the overview)
    never did."""
    from tests.engine.test_crons import T0, exclusive_cron_nobody_serves, three_skips
    from tests.engine.test_crons import make as make_crons

    clock = FakeClock(T0)
    crons = exclusive_cron_nobody_serves()
    processor = await make_crons(db, crons, clock=clock, worker_tags=["secondary"])
    async with processor:
        status = await three_skips(processor, clock, "pending")
        from_cli = await Admin(db, clock=clock).status()
    stuck = [w for w in status.warnings if "skipped behind" in w]
    assert stuck  # get_status() says it
    assert [w for w in from_cli.warnings if "skipped behind" in w] == stuck, from_cli.warnings


async def test_crons_list_counts_no_worker_that_cannot_run_the_cron(db: Any) -> None:
    """`crons list` (WORKERS) and the dashboard's crons page ("N live", else "none": "No live
    worker runs it") count every live worker whose document lists the cron in `crons`, even
    one that cannot run it: a worker whose claim loop and cron scheduler crashed (health: "it
    claims nothing"; status: no longer serving its names), and a worker whose worker_tags
    exclude the cron's tag (it fires the slots, never claims them). `names list` and `status`
    say no live worker serves it."""
    storage = Storage(db)
    await storage.crons.coll.insert_one(
        {"_id": "nightly", "cron_string": "0 3 * * *", "timezone": "UTC", "next_slot": NOW}
    )
    crashed = D.new_worker(NOW, None, "runner-1", 1, ["nightly"], 30, crons=["nightly"])
    crashed["crashed"] = "RuntimeError: boom"
    await storage.workers.register(crashed)
    admin = Admin(db, clock=FakeClock(NOW))
    names = {v.name: v for v in await admin.list_definitions()}
    crons = {c.name: c for c in await admin.list_crons()}
    assert "nightly" in (await admin.status()).unserved_names
    assert names["nightly"].served_by == []
    assert crons["nightly"].served_by == [], "crons list: a crashed worker serves it"
    overview = await admin.overview(minutes=1)  # the dashboard's "workers alive"
    assert (overview.workers_alive, overview.workers_crashed) == (0, 1)


async def test_crons_list_counts_no_worker_without_the_crons_tag(db: Any) -> None:
    from job_processor import AbortSignal, Job

    async def tick(job: Job, signal: AbortSignal) -> None:
        return None

    crons = {"nightly": {"cron_string": "0 3 * * *", "handler": tick, "tag": "main"}}
    processor = await make(db, {}, crons=crons, worker_tags=["secondary"])
    admin = Admin(db)
    async with processor:
        names = {v.name: v for v in await admin.list_definitions()}
        listed = {c.name: c for c in await admin.list_crons()}
        status = await admin.status()
    assert "nightly" in status.unserved_names  # "no live worker can run it"
    assert names["nightly"].served_by == []
    assert listed["nightly"].served_by == [], "crons list: a worker that never claims it"


async def test_status_never_advises_forgetting_a_name_a_live_worker_defines(db: Any) -> None:
    """A name a live worker defines but cannot run (its worker_tags leave it out, or its
    claim loop crashed) is refused by `names forget` and `crons remove`; status advised
    both, "if it is gone from the code", though the live worker's code has it."""
    from job_processor import AbortSignal, Job, JobDef

    async def ok(job: Job, signal: AbortSignal) -> None:
        return None

    crons = {"nightly": {"cron_string": "0 3 * * *", "handler": ok, "tag": "main"}}
    jobs = {"report": JobDef(handler=ok, tag="main")}
    processor = await make(db, jobs, crons=crons, worker_tags=["secondary"])
    admin = Admin(db)
    async with processor:
        status = await admin.status()
        from_processor = await processor.get_status()
        forgotten = await admin.forget("report")
        removed = await admin.remove_crons(["nightly"])
    assert forgotten.changed == [] and removed.changed == []  # both refused
    for warnings in (status.warnings, from_processor.warnings):
        said = [w for w in warnings if w.startswith(("job 'report'", "cron 'nightly'"))]
        assert len(said) == 2, warnings
        assert not any("forget" in w or "crons remove" in w for w in said), said
        assert all("with worker_tags that include 'main'" in w for w in said), said

    # a crashed worker that defines a name: restart it, never forget the name
    storage = Storage(db)
    crashed = D.new_worker(NOW, None, "runner-1", 1, ["solo"], 30, definitions={"solo": "x"})
    crashed["crashed"] = "RuntimeError: boom"
    await storage.workers.register(crashed)
    await storage.definitions.coll.insert_one({"_id": "solo", "kind": "job", "last_seen": NOW})
    warnings = (await Admin(db, clock=FakeClock(NOW)).status()).warnings
    [said] = [w for w in warnings if w.startswith("job 'solo'")]
    assert "forget" not in said, said
    assert any("claim loop crashed" in w for w in warnings), warnings
