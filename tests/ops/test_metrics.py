"""Prometheus metrics: what a scrape shows after real runs, the scrape budget, the HTTP server,
and nothing of prometheus_client on the hot path when metrics are off."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from job_processor import AbortSignal, Job, JobDef, JobStatus
from job_processor.core import documents as D
from job_processor.core.definitions import Limit
from job_processor.ops import metrics
from job_processor.storage.local_server import free_port
from tests.helpers import make, wait_for, wait_status


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def ok(job: Job, signal: AbortSignal) -> str:
    return "ok"


async def flaky(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError("flaky")


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


JOBS: dict[str, Any] = {
    "ok": JobDef(handler=ok),
    "flaky": JobDef(handler=flaky, max_attempts=2, backoff={"kind": "fixed", "base_seconds": 0.1}),
    "crashy": JobDef(handler=ok),
}
CRONS: dict[str, Any] = {"every-second": {"cron_string": "* * * * * *", "handler": tick}}


async def test_a_scrape_after_real_runs(db: Any) -> None:
    processor = await make(db, JOBS)
    processor2 = await make(db, {}, crons=CRONS)  # a replica running the cron scheduler
    m = metrics.enable(processor)
    m2 = metrics.enable(processor2)
    # a run left behind by a dead worker, recovered when the processor starts
    long_ago = processor.clock.now() - dt.timedelta(minutes=5)
    orphan = D.as_running(D.new_job("crashy", {}, now=long_ago), "dead-worker", long_ago)
    await processor.storage.jobs.insert(orphan)
    later = await processor.schedule_job(
        "ok", {}, scheduled_for=processor.clock.now() + dt.timedelta(days=1)
    )
    async with processor, processor2:
        done = await processor.schedule_job("ok", {})
        failed = await processor.schedule_job("flaky", {})
        await wait_status(processor, done.id, "finished")  # type: ignore[arg-type]
        await wait_status(processor, failed.id, "errored")  # type: ignore[arg-type]
        await wait_for(lambda: m2.cron_slots.labels("every-second", "run")._value.get() >= 1)
        got = samples((await metrics.render(m)).decode())
        cron = samples((await metrics.render(m2)).decode())
    ended = "job_processor_jobs_ended_total"
    assert got[(ended, (("name", "ok"), ("status", "finished")))] == 1
    assert got[(ended, (("name", "flaky"), ("status", "errored")))] == 1
    assert got[(ended, (("name", "crashy"), ("status", "errored")))] == 1  # by the recovery
    assert got[("job_processor_job_retries_total", (("name", "flaky"),))] == 1
    assert (
        got[("job_processor_job_recoveries_total", (("name", "crashy"), ("status", "errored")))]
        == 1
    )
    assert got[("job_processor_job_run_duration_seconds_count", (("name", "flaky"),))] == 2
    assert got[("job_processor_job_start_delay_seconds_count", (("name", "ok"),))] == 1
    # database gauges: every status of every name, the queue, the workers
    assert got[("job_processor_jobs", (("name", "ok"), ("status", "finished")))] == 1
    assert got[("job_processor_jobs", (("name", "ok"), ("status", "pending")))] == 1
    assert ("job_processor_jobs_due", (("name", "ok"),)) not in got  # `later` is not due
    assert got[("job_processor_workers", (("state", "alive"),))] == 2
    assert got[("job_processor_scrape_timeout", ())] == 0
    assert (
        cron[("job_processor_cron_slots_total", (("name", "every-second"), ("outcome", "run")))]
        >= 1
    )
    assert later.status == "pending"


async def test_a_scrape_over_budget_serves_what_it_has(db: Any) -> None:
    processor = await make(db, JOBS)
    await processor.schedule_job("ok", {})
    m = metrics.enable(processor, budget=0.000001)
    got = samples((await metrics.render(m)).decode())
    assert got[("job_processor_scrape_timeout", ())] == 1
    full = await metrics.for_database(db, budget=5)
    got = samples((await metrics.render(full)).decode())
    assert got[("job_processor_scrape_timeout", ())] == 0
    assert got[("job_processor_jobs_due", (("name", "ok"),))] == 1
    assert got[("job_processor_oldest_due_age_seconds", (("name", "ok"),))] >= 0


async def test_a_due_minimal_foreign_insert_counts_among_the_due_jobs(db: Any) -> None:
    """docs/scale.md's minimal document has no status until its first claim: it counted in no
    status, and the due gauges were read only for names with a job counted pending or paused,
    so a due one (its name's only job) had no job_processor_jobs_due series."""
    processor = await make(db, {"ok": JobDef(handler=ok)})
    m = metrics.enable(processor)
    due_ms = int(time.time() * 1000) - 60_000
    for name in ("ok", "not-defined"):  # a name no worker defines is counted too
        await db["job_processor_jobs"].insert_one(
            {"name": name, "claim_name": name, "due_ms": due_ms, "payload": {}}
        )
    assert await processor.storage.jobs.count_due(["ok"], processor.clock.now()) == 1  # due
    dashboard = await metrics.for_database(db, budget=5)  # no processor: the database alone
    for scraped in (m, dashboard):  # no worker started: nothing claims them
        got = samples((await metrics.render(scraped)).decode())
        for name in ("ok", "not-defined"):
            assert got.get(("job_processor_jobs_due", (("name", name),))) == 1, got
            age = got.get(("job_processor_oldest_due_age_seconds", (("name", name),)))
            assert age is not None and age >= 59, got
        assert not [k for k in got if k[0] == "job_processor_jobs" and k[1][0][1] == "ok"]


async def test_served_over_http(db: Any) -> None:
    processor = await make(db, JOBS)
    await processor.schedule_job("ok", {})
    port = free_port()
    server = metrics.serve(metrics.enable(processor), port, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())

        body = await asyncio.to_thread(fetch)
    finally:
        server.close()
    got = samples(body.decode())
    assert got[("job_processor_jobs", (("name", "ok"), ("status", "pending")))] == 1


def test_metrics_off_import_nothing_from_prometheus() -> None:
    code = (
        "import sys, job_processor, job_processor.admin, job_processor.cli;"
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_limit_gauges_show_slots_in_use_capacity_and_starts_in_the_window(db: Any) -> None:
    release = asyncio.Event()

    async def held(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    jobs: dict[str, Any] = {
        "send": JobDef(
            handler=held, limit=Limit(key="mail", concurrency=2, rate=10, per_seconds=60)
        ),
        "report": JobDef(handler=ok, limit=Limit(key="reports", rate=5, per_seconds=60)),
        "export": JobDef(handler=ok, limit=Limit(key="exports", concurrency=3)),
    }
    processor = await make(db, jobs, concurrency=4)
    m = metrics.enable(processor)
    async with processor:
        sending = await processor.schedule_job("send", {})
        for name in ("report", "export"):
            job = await processor.schedule_job(name, {})
            await wait_status(processor, job.id, JobStatus.FINISHED)
        await wait_status(processor, sending.id, JobStatus.RUNNING)
        got = samples((await metrics.render(m)).decode())
        release.set()
        await wait_status(processor, sending.id, JobStatus.FINISHED)
        after = samples((await metrics.render(m)).decode())

    def series(name: str, values: dict[Any, float]) -> dict[str, float]:
        return {dict(labels)["key"]: v for (n, labels), v in values.items() if n == name}

    assert series("job_processor_limit_running", got) == {"mail": 1, "reports": 0, "exports": 0}
    assert series("job_processor_limit_capacity", got) == {"mail": 2, "exports": 3}  # no rate-only
    assert series("job_processor_limit_started_in_window", got) == {"mail": 1, "reports": 1}
    assert series("job_processor_limit_rate", got) == {"mail": 10, "reports": 5}
    assert series("job_processor_limit_running", after)["mail"] == 0
    assert series("job_processor_limit_started_in_window", after)["mail"] == 1  # still in window


async def test_a_paused_name_is_a_gauge(db: Any) -> None:
    from job_processor.ops.admin import Admin

    processor = await make(db, JOBS)
    m = metrics.enable(processor)
    async with processor:  # registers its definitions
        await Admin(db).pause("ok")
        got = samples((await metrics.render(m)).decode())
    assert got[("job_processor_name_paused", (("name", "ok"),))] == 1
    assert ("job_processor_name_paused", (("name", "flaky"),)) not in got


async def test_a_crashed_worker_is_not_counted_alive(db: Any) -> None:
    """A worker whose claim loop crashed keeps its heartbeat and claims nothing (health exits
    1): counted `crashed`, so the "no worker" alert on `alive` fires when it is the last."""
    processor = await make(db, JOBS)
    m = metrics.enable(processor)
    crashed = D.new_worker(processor.clock.now(), None, "runner-1", 1, ["ok"], 30)
    crashed["crashed"] = "RuntimeError: boom"
    await processor.storage.workers.register(crashed)
    got = samples((await metrics.render(m)).decode())
    assert got[("job_processor_workers", (("state", "crashed"),))] == 1
    assert got[("job_processor_workers", (("state", "alive"),))] == 0
    assert got[("job_processor_workers", (("state", "dead"),))] == 0


async def test_a_slot_no_worker_started_within_its_margin_counts_as_missed(db: Any) -> None:
    """The documented alert (`cron_slots_total{outcome="missed"}`) fires when the queue is
    blocked: the scheduler's refresh records the task missed, and counts it."""
    from job_processor import FakeClock

    now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    clock = FakeClock(now)
    crons = {"hourly": {"cron_string": "0 * * * *", "handler": tick, "checkin_margin": 5}}
    processor = await make(db, {}, crons=crons, clock=clock)
    m = metrics.enable(processor)
    clock.set(now + dt.timedelta(hours=1))  # due: its task is created, no worker runs it
    await processor.scheduler.tick()
    clock.set(now + dt.timedelta(hours=1, minutes=6))  # past the margin, still pending
    await processor.scheduler.tick()
    [task] = await processor.list_jobs("hourly")
    assert (task.status, task.skip_reason) == ("skipped", "missed")
    assert m.cron_slots.labels("hourly", "run")._value.get() == 1
    assert m.cron_slots.labels("hourly", "missed")._value.get() == 1


async def test_the_counters_start_at_zero_for_each_name_before_any_event(db: Any) -> None:
    """operations.md: the ended, retries, recoveries (with the statuses a crashed run is
    recovered to) and cron slots counters are exported at 0 for each name the process defines,
    before their first event, so `increase()` sees the first one."""
    processor = await make(db, JOBS, crons=CRONS)
    m = metrics.enable(processor)
    got = samples((await metrics.render(m)).decode())
    zero = {(series, labels) for (series, labels), value in got.items() if value == 0}
    for series, labels in (
        ("job_processor_job_retries_total", (("name", "ok"),)),
        ("job_processor_jobs_ended_total", (("name", "ok"), ("status", "errored"))),
        ("job_processor_cron_slots_total", (("name", "every-second"), ("outcome", "missed"))),
        *(
            ("job_processor_job_recoveries_total", (("name", "ok"), ("status", status)))
            for status in ("pending", "paused", "errored", "killed")
        ),
    ):
        assert (series, labels) in zero, f"{series}{dict(labels)} not exported at 0"


async def test_the_missed_slots_of_a_long_downtime_are_counted_as_recorded(db: Any) -> None:
    """`job_processor_cron_slots_total{outcome="missed"}` counts the slots the scheduler records
    missed one by one: at most 50 a catch-up (operations.md; crons.md: the rest are jumped
    over with a `cron_slots_missed_not_listed` warning). Two hours with no worker, a minutely
    cron: 6 slots run late (within its 5-minute margin), 114 are missed, 50 recorded."""
    from job_processor import FakeClock

    now = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    clock = FakeClock(now)
    crons = {"minutely": {"cron_string": "* * * * *", "handler": tick, "checkin_margin": 5}}
    processor = await make(db, {}, crons=crons, clock=clock)
    m = metrics.enable(processor)
    await processor.scheduler.tick()
    clock.set(now + dt.timedelta(hours=2))  # every worker down for two hours
    await processor.scheduler.tick()
    run = m.cron_slots.labels("minutely", "run")._value.get()
    missed = m.cron_slots.labels("minutely", "missed")._value.get()
    recorded = await db["job_processor_jobs"].count_documents(
        {"name": "minutely", "skip_reason": "missed"}
    )
    assert (run, missed, recorded) == (6, 50, 50)


def test_merged_masked_limit_keys_do_not_depend_on_order_nor_mix_windows() -> None:
    """Keys masked alike meet in one row: its capacity was the first row's when the other had
    none (order-dependent), and rates over different windows (1 per 60 s, 100 per 1 s) were
    added under one window (101). Two templates (`pay:{iban}`, `pay:{card}`) stay two series
    (their `template` labels differ); two keys of one template, each of its own deploy, meet."""
    from job_processor.core.limits import mask_limit_keys
    from job_processor.ops.metrics import _merged

    a = {
        "key": "pay:DE89370400440532013000",
        "template": "pay:{iban}",
        "running": 3,
        "concurrency": None,
        "started_in_window": 1,
        "rate": 1,
        "per_seconds": 60,
    }
    b = {
        "key": "pay:4111111111111111",
        "template": "pay:{card}",
        "running": 1,
        "concurrency": 2,
        "started_in_window": 5,
        "rate": 100,
        "per_seconds": 1,
    }
    masked = mask_limit_keys([a, b], lambda f: f in {"iban", "card"}, "••••••")
    assert {r["key"] for r in masked} == {"pay:••••••"}
    assert sorted(r["template"] for r in _merged([dict(r) for r in masked])) == [
        "pay:{card}",
        "pay:{iban}",
    ]
    b["template"] = "pay:{iban}"  # the same template under another deploy's settings
    masked = mask_limit_keys([a, b], lambda f: f == "iban", "••••••")
    for rows in (masked, masked[::-1]):  # whatever order the database listed them in
        (row,) = _merged([dict(r) for r in rows])
        assert (row["running"], row["concurrency"], row["rate"], row["keys"]) == (4, None, None, 2)


def _limit_samples(rows: list[dict[str, Any]]) -> dict[Any, float]:
    """The job_processor_limit_* samples of these rows, as a scrape shows them."""
    from prometheus_client import CollectorRegistry, generate_latest

    from job_processor.ops.metrics import _limit_families

    class Rows:
        def collect(self) -> Any:
            return _limit_families(rows)

    registry = CollectorRegistry()
    registry.register(Rows())  # type: ignore[arg-type]
    return samples(generate_latest(registry).decode())


def test_a_folded_row_of_keys_of_two_deploys_exports_their_sums_and_no_mixed_rate() -> None:
    """A folded row's capacity was its first key's concurrency times the count (8 for keys
    of 4 and 2), and its rate 20 per 60 s for keys of 10 per 60 s and 100 per 1 s."""
    from job_processor.core.limits import created, top_usage

    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    old = Limit(key="tenant:{t}", concurrency=4, rate=10, per_seconds=60)
    new = Limit(key="tenant:{t}", concurrency=2, rate=100, per_seconds=1)
    docs = [
        created(new.key_for({"t": f"busy{i:02d}"}), new, ["r1", "r2"], "w", now, new.key)
        for i in range(20)
    ]
    docs += [created(old.key_for({"t": "a-old"}), old, ["r"], "w", now, old.key)]
    docs += [created(new.key_for({"t": "b-new"}), new, ["r"], "w", now, new.key)]
    got = _limit_samples(top_usage(docs, now))
    folded = (("key", "tenant:{t} (other keys)"), ("template", "tenant:{t}"))
    assert got[("job_processor_limit_capacity", folded)] == 6
    assert got[("job_processor_limit_running", folded)] == 2
    assert got[("job_processor_limit_keys", folded)] == 2
    assert ("job_processor_limit_rate", folded) not in got
    assert ("job_processor_limit_started_in_window", folded) not in got


async def test_limit_series_carry_their_template_for_a_stable_sum(db: Any) -> None:
    """scale.md advises graphing the sum by template, but the series had only a `key`
    label. Each has `template` now: the per-value limit's key, "" for a static one (every
    sample of a family with the same label names)."""
    release = asyncio.Event()

    async def held(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    jobs: dict[str, Any] = {
        "send": JobDef(handler=held, limit=Limit(key="mail", concurrency=2)),
        "sync": JobDef(handler=held, limit=Limit(key="tenant:{t}", concurrency=1)),
    }
    processor = await make(db, jobs, concurrency=4)
    m = metrics.enable(processor)
    async with processor:
        running = [
            await processor.schedule_job("send", {}),
            *[await processor.schedule_job("sync", {"t": t}) for t in ("acme", "globex")],
        ]
        for job in running:
            await wait_status(processor, job.id, JobStatus.RUNNING)
        text = (await metrics.render(m)).decode()
        release.set()
        await wait_for(lambda: not processor.worker.runs)
    families = [
        f for f in text_string_to_metric_families(text) if f.name.startswith("job_processor_limit_")
    ]
    assert {f.name for f in families} >= {
        "job_processor_limit_running",
        "job_processor_limit_capacity",
    }
    for family in families:
        assert all(set(s.labels) == {"key", "template"} for s in family.samples), family
    got = samples(text)
    running_series = {
        labels: v for (n, labels), v in got.items() if n == "job_processor_limit_running"
    }
    assert running_series == {
        (("key", "mail"), ("template", "")): 1,
        (("key", "tenant:acme"), ("template", "tenant:{t}")): 1,
        (("key", "tenant:globex"), ("template", "tenant:{t}")): 1,
    }


async def test_a_scrape_does_not_read_every_name_of_every_worker(db: Any, mongo_url: str) -> None:
    """Of each worker document a scrape needs its heartbeat, worker_timeout and `crashed`; it
    read whole documents, with the names the worker claims and each definition's digest:
    ~175 KB a worker a scrape at 2,000 names, times the workers, times the processes scraped;
    and every definition for the limit keys."""
    from pymongo import AsyncMongoClient

    from tests.helpers import ReplyBytes

    names = {f"billing.invoice-reminder-{i:05d}": JobDef(handler=ok) for i in range(2000)}
    processor = await make(db, names)
    workers, definitions = (
        ReplyBytes("job_processor_workers"),
        ReplyBytes("job_processor_definitions"),
    )
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[workers, definitions]
    )
    try:
        async with processor:
            await wait_for(lambda: processor.worker.worker_id is not None)
            m = await metrics.for_database(client[db.name], budget=30)
            workers.bytes = definitions.bytes = 0
            await metrics.render(m)
    finally:
        await client.close()
    assert workers.bytes < 20_000, f"a scrape read {workers.bytes} B of worker documents"
    assert definitions.bytes < 20_000, f"a scrape read {definitions.bytes} B of definitions"


async def test_render_makes_the_text_off_the_event_loop_from_the_gauges_it_read(db: Any) -> None:
    """At thousands of names the text is megabytes, seconds of CPU: made on the event loop
    (a dashboard's, an app's), it blocked every other request meanwhile. It is made in a
    thread, with the gauges render() read (once: not again from that thread)."""
    processor = await make(db, JOBS)
    await processor.schedule_job("ok", {})
    m = metrics.enable(processor, budget=5)
    assert m.database is not None
    loop = asyncio.get_running_loop()
    reads = 0
    read = m.database.refresh

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        return await read()

    m.database.refresh = counted  # type: ignore[method-assign]
    seen: list[bool] = []

    class LoopStaysFree(Collector):
        def collect(self) -> Any:
            # the loop answers while the text is being made: it is not the one making it
            answered = threading.Event()
            loop.call_soon_threadsafe(answered.set)
            seen.append(answered.wait(timeout=5))
            return iter(())

    m.registry.register(LoopStaysFree())
    got = samples((await metrics.render(m)).decode())
    assert seen == [True]
    assert reads == 1
    assert got[("job_processor_jobs_due", (("name", "ok"),))] == 1
    assert got[("job_processor_scrape_timeout", ())] == 0


def documented_series() -> set[str]:
    """The series names of docs/operations.md's table (its first column)."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    table = text.split("| series | type | labels | what |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `(job_processor_[a-z_]+)` \|", table, re.MULTILINE))


async def test_every_series_served_is_documented_and_none_is_a_created_timestamp(db: Any) -> None:
    """prometheus_client adds a `<name>_created` gauge (the time each labelled child was
    made) beside every counter and histogram: 6 families, one series per name and label
    set, doubling the counters' cardinality, that operations.md's table does not list.
    What is served, by render() and by the HTTP server as Prometheus asks for it, is the
    table."""
    processor = await make(db, JOBS)
    m = metrics.enable(processor)
    served = metrics.serve(m, port=0)
    try:
        async with processor:
            done = await processor.schedule_job("ok", {})
            await wait_status(processor, done.id, "finished")  # type: ignore[arg-type]
            text = (await metrics.render(m)).decode()

            def fetch(accept: str) -> str:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{served.port}/metrics", headers={"Accept": accept}
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    return bytes(response.read()).decode()

            plain = await asyncio.to_thread(fetch, "text/plain;version=0.0.4")
            openmetrics = await asyncio.to_thread(
                fetch, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )
    finally:
        served.close()
    documented = documented_series()
    for body in (text, plain):
        families = set(re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE))
        assert families - documented == set(), body[:300]
        assert "job_processor_jobs_ended_total" in families
    created = [line for line in openmetrics.splitlines() if "_created{" in line]
    assert created == [], created[:3]
    assert 'job_processor_jobs_ended_total{name="ok",status="finished"} 1.0' in openmetrics


async def test_render_s_content_type_names_the_format_of_its_text(db: Any) -> None:
    """render() makes the 0.0.4 text (prometheus_client's generate_latest, names escaped to
    underscores), but CONTENT_TYPE was prometheus_client's CONTENT_TYPE_LATEST, which became
    `version=1.0.0` (the UTF-8 names format, whose escaping it did not say) in 0.26: the
    dashboard's /metrics announced a format other than the one it served, and other than
    `serve()` (prometheus_client's own server) announces for the same text."""
    processor = await make(db, JOBS)
    m = metrics.enable(processor)
    served = metrics.serve(m, port=0)
    try:

        def fetch() -> str:
            request = urllib.request.Request(
                f"http://127.0.0.1:{served.port}/metrics",
                headers={"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.headers["Content-Type"])

        theirs = await asyncio.to_thread(fetch)
    finally:
        served.close()
    assert theirs == "text/plain; version=0.0.4; charset=utf-8"
    assert theirs == metrics.CONTENT_TYPE
