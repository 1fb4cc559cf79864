"""A scrape from the metrics server's thread while the processor's event loop is blocked (a
plain blocking call inside `async def`): it waits budget + 1 s, then served the previous
scrape's values with `job_processor_scrape_timeout 0`, stale gauges presented as fresh. They
are served marked now (`job_processor_scrape_timeout 1`)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from typing import Any

from job_processor import AbortSignal, Job, JobDef
from job_processor.ops import metrics
from tests.helpers import make
from tests.ops.test_metrics import samples


async def ok(job: Job, signal: AbortSignal) -> str:
    return "ok"


async def test_a_scrape_that_could_not_read_the_database_says_so(db: Any) -> None:
    p = await make(db, {"ok": JobDef(handler=ok)})
    m = metrics.enable(p, budget=0.5)
    server = metrics.serve(m, port=0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        first = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
        assert ("job_processor_jobs", (("name", "ok"), ("status", "pending"))) not in samples(first)
        await p.schedule_job("ok", {})  # the database now holds one pending job
        box: list[str] = []
        thread = threading.Thread(  # Prometheus scrapes 0.2 s into a 2.5 s block of the loop
            target=lambda: (
                time.sleep(0.2),
                box.append(urllib.request.urlopen(url).read().decode()),
            )
        )
        thread.start()
        time.sleep(2.5)  # noqa: ASYNC251 - the scenario: the loop blocked (a plain blocking call)
        await asyncio.to_thread(thread.join)
        got = samples(box[0])
    finally:
        server.close()
    pending = got.get(("job_processor_jobs", (("name", "ok"), ("status", "pending"))))
    timed_out = got[("job_processor_scrape_timeout", ())]
    assert pending is None and timed_out == 1, (pending, timed_out)


async def test_a_scrape_serves_the_gauges_it_read_not_a_concurrent_scrapes(db: Any) -> None:
    """Two scrapes at once from the metrics server's threads (two Prometheus replicas): each
    read the gauges on the loop, then served `self.snapshot`, whichever refresh landed last,
    e.g. the other one's, cut short by its budget (`job_processor_scrape_timeout 1`, partial
    values) while its own read was whole."""
    p = await make(db, {"ok": JobDef(handler=ok)})
    await p.schedule_job("ok", {})
    m = metrics.enable(p, budget=5)
    assert m.database is not None
    collector = m.database
    read = collector.refresh

    async def then_another_lands() -> metrics.Snapshot:
        snap = await read()
        collector.snapshot = metrics.Snapshot(timed_out=True)  # the other scrape's, partial
        return snap

    collector.refresh = then_another_lands  # type: ignore[method-assign]
    server = metrics.serve(m, port=0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        got = samples(await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode()))
    finally:
        server.close()
    assert got[("job_processor_scrape_timeout", ())] == 0
    assert got[("job_processor_jobs", (("name", "ok"), ("status", "pending")))] == 1
