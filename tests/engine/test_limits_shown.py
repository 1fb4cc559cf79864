"""After a deploy that removes a limit or lowers its concurrency, `get_status().limits` (and so
`job-processor status`, the dashboard's overview and the job_processor_limit_* metrics) showed
the old limit's key and capacity (an outside review's findings, each failing before its
fix)."""

from __future__ import annotations

import asyncio
from typing import Any

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.core.definitions import Limit
from job_processor.ops import metrics
from job_processor.ops.admin import Admin
from tests.helpers import make, wait_for, wait_status
from tests.ops.test_metrics import samples

S = JobStatus


async def quick(job: Job, signal: AbortSignal) -> str:
    return "ok"


async def test_a_removed_limit_is_no_longer_shown_as_in_use(db: Any) -> None:
    old = await make(db, {"send": JobDef(handler=quick, limit=Limit(key="api", concurrency=3))})
    async with old:
        await wait_status(old, (await old.schedule_job("send")).id, S.FINISHED)
    new = await make(db, {"send": JobDef(handler=quick)})  # the next deploy: no limit
    async with new:
        await wait_status(new, (await new.schedule_job("send")).id, S.FINISHED)
        shown = [u["key"] for u in (await new.get_status()).limits]
    assert "api" not in shown, (await new.get_status()).limits


async def test_a_lowered_concurrency_is_shown_as_the_capacity(db: Any) -> None:
    old = await make(db, {"send": JobDef(handler=quick, limit=Limit(key="api", concurrency=3))})
    async with old:
        await wait_status(old, (await old.schedule_job("send")).id, S.FINISHED)
    new = await make(db, {"send": JobDef(handler=quick, limit=Limit(key="api", concurrency=1))})
    async with new:  # nothing of "send" queued after the deploy
        [usage] = (await new.get_status()).limits
    assert usage["concurrency"] == 1, usage


async def test_a_static_limit_is_shown_before_its_first_use(db: Any) -> None:
    """scale.md: status and the metrics show every static limit; one no job had used yet had
    no document, so it was shown nowhere."""
    mail = Limit(key="mail-provider", concurrency=5, rate=100, per_seconds=60)
    processor = await make(db, {"send": JobDef(handler=quick, limit=mail)})
    async with processor:
        shown = (await processor.get_status()).limits
    assert [u["key"] for u in shown] == ["mail-provider"], shown
    assert shown[0]["concurrency"] == 5 and shown[0]["running"] == 0, shown


async def test_a_static_limit_sharing_a_per_tenant_key_is_still_shown(db: Any) -> None:
    """scale.md: every static limit is shown. `api:acme` beside `api:{tenant}` is one
    document; once a template job took a slot there it carried the template, and was folded
    into "api:{tenant} (other keys)" behind 20 busier tenants: gone from status and metrics."""
    release = asyncio.Event()

    async def held(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    jobs: dict[str, Any] = {
        "send": JobDef(handler=held, limit=Limit(key="api:{tenant}", concurrency=2)),
        "send-acme": JobDef(handler=quick, limit=Limit(key="api:acme", concurrency=2)),
    }
    processor = await make(db, jobs, concurrency=41)
    m = metrics.enable(processor)
    async with processor:
        acme = await processor.schedule_job("send", {"tenant": "acme"})
        await wait_status(processor, acme.id, S.RUNNING)  # api:acme now holds its template
        busy = [
            await processor.schedule_job("send", {"tenant": f"busy{i:02d}"})
            for i in range(20)
            for _ in range(2)
        ]
        for job in busy:
            await wait_status(processor, job.id, S.RUNNING)
        shown = {u["key"]: u for u in (await processor.get_status()).limits}
        got = samples((await metrics.render(m)).decode())
        overview = [u["key"] for u in (await Admin(db).overview()).limits]  # CLI, dashboard
        release.set()
        await wait_for(lambda: not processor.worker.runs)
    assert "api:acme" in shown, shown
    assert (shown["api:acme"]["running"], shown["api:acme"]["concurrency"]) == (1, 2)
    assert "api:{tenant} (other keys)" not in shown, shown  # 20 tenants: none folded
    assert "api:acme" in overview, overview
    assert got[("job_processor_limit_capacity", (("key", "api:acme"), ("template", "")))] == 2


async def test_a_lowered_concurrency_is_shown_once_the_rolling_deploy_is_over(db: Any) -> None:
    """A rolling deploy lowers the limit from 3 to 1: the new replica starts (writing its
    capacity on the limit's document), an old replica still running takes a slot (its
    compare-and-set writes its own capacity back), then stops. Status showed the gone
    release's 3 until someone next took a slot; the new replica's sweep that sees the old one
    gone writes its capacity again (scale.md: "a deploy that changed one shows it at once")."""
    S = JobStatus
    old = await make(db, {"send": JobDef(handler=quick, limit=Limit(key="api", concurrency=3))})
    new = await make(db, {"send": JobDef(handler=quick, limit=Limit(key="api", concurrency=1))})
    async with new:
        async with old:
            assert (await old.run_job("send")).status == S.FINISHED  # while the new one is live
            # a sweep of the new replica has seen the old one live (a deploy takes longer)
            await wait_for(
                lambda: old.worker.worker_id in {w["_id"] for w in new.recovery.live or []}
            )
        shown: list[Any] = []

        async def lowered() -> bool:
            shown[:] = (await new.get_status()).limits
            return bool(shown) and shown[0]["concurrency"] == 1

        deadline = asyncio.get_running_loop().time() + 10  # the new replica's next sweeps
        while not await lowered() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
    assert shown and shown[0]["concurrency"] == 1, shown


async def test_a_limit_document_another_program_damaged_reads_as_missing_fields(
    db: Any,
) -> None:
    """A limit document with fields of the wrong type (text, a bool, a list, a document) took
    down the dashboard's overview, /api/overview, get_status and the metrics scrape
    (`int("x")`): its fields read as missing; the other limits are shown as before."""
    p = await make(db, {"send": JobDef(handler=quick, limit=Limit(key="api", concurrency=2))})
    await p.heartbeat.register()  # its limit described, as at a start
    limits = db["job_processor_limits"]
    await limits.insert_one(
        {
            "_id": "damaged",
            "running": "x",
            "concurrency": {"n": 1},
            "rate": True,
            "per_seconds": "60",
            "starts": ["not", "a", "document"],
            "template": {"not": "text"},
        }
    )
    await limits.insert_one(
        {"_id": "odd-starts", "running": [1], "per_seconds": 60, "starts": {"a": "x"}}
    )
    admin = Admin(db)
    for shown in ((await p.get_status()).limits, (await admin.overview()).limits):
        rows = {u["key"]: u for u in shown}
        assert rows["api"]["concurrency"] == 2
        assert "damaged" not in rows  # nothing running nor started: as a removed limit is
    m = await metrics.for_database(db, budget=5)
    got = samples((await metrics.render(m)).decode())
    assert got[("job_processor_scrape_timeout", ())] == 0
    assert got[("job_processor_limit_capacity", (("key", "api"), ("template", "")))] == 2
