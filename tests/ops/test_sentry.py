"""Sentry for jobs: a transaction per run, failed runs and crash recoveries captured with the
job's tags, through a capturing transport; nothing at all without an initialised client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from job_processor import AbortSignal, Job, JobDef
from job_processor.core import documents as D
from job_processor.engine import sentry
from tests.helpers import make, wait_status


async def ok(job: Job, signal: AbortSignal) -> str:
    return "ok"


async def boom(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError("smtp down")


async def slow(job: Job, signal: AbortSignal) -> None:
    await signal.wait()
    signal.raise_if_aborted()


JOBS: dict[str, Any] = {
    "ok": JobDef(handler=ok, tag="main"),
    "boom": JobDef(handler=boom, max_attempts=2, backoff={"kind": "fixed", "base_seconds": 0.1}),
    "slow": JobDef(handler=slow, max_runtime_in_minutes=0.002),
    "crashy": JobDef(handler=ok),
}


@pytest.fixture
def envelopes() -> Iterator[list[Any]]:
    import sentry_sdk
    from sentry_sdk.transport import Transport

    captured: list[Any] = []

    class Capture(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            captured.append(envelope)

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Capture, traces_sample_rate=1.0)
    try:
        yield captured
    finally:
        sentry_sdk.init(dsn=None)


def items(envelopes: list[Any], kind: str) -> list[dict[str, Any]]:
    return [i.payload.json for e in envelopes for i in e.items if i.type == kind]


async def test_runs_failures_and_recoveries_reach_sentry(db: Any, envelopes: list[Any]) -> None:
    import sentry_sdk

    processor = await make(db, JOBS, worker_tags=["main"])
    long_ago = processor.clock.now() - dt.timedelta(minutes=5)
    orphan = D.as_running(D.new_job("crashy", {}, now=long_ago), "dead-worker", long_ago)
    await processor.storage.jobs.insert(orphan)
    async with processor:
        good = await processor.schedule_job("ok", {})
        bad = await processor.schedule_job("boom", {})
        late = await processor.schedule_job("slow", {})
        await wait_status(processor, good.id, "finished")  # type: ignore[arg-type]
        await wait_status(processor, bad.id, "errored")  # type: ignore[arg-type]
        await wait_status(processor, late.id, "errored")  # type: ignore[arg-type]
    sentry_sdk.flush()
    events = items(envelopes, "event")
    by_job: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_job.setdefault(e["tags"]["job.id"], []).append(e)
    # both attempts of "boom" captured with the handler's exception and the job's tags
    attempts = sorted(by_job[bad.id], key=lambda e: e["tags"]["job.attempt"])
    assert [e["tags"]["job.attempt"] for e in attempts] == ["1", "2"]
    assert [e["tags"]["job.will_retry"] for e in attempts] == ["true", "false"]
    exc = attempts[0]["exception"]["values"][-1]
    assert (exc["type"], exc["value"]) == ("RuntimeError", "smtp down")
    assert attempts[0]["tags"]["job.name"] == "boom"
    assert attempts[0]["tags"]["job.worker_id"] == processor.worker_id
    assert attempts[0]["tags"]["job.tag"] == "None"
    [timeout] = by_job[late.id]
    assert timeout["message"] == "job 'slow' failed: max runtime exceeded"
    [crash] = by_job[str(orphan["_id"])]
    assert crash["tags"]["job.recovered_by"] == processor.worker_id
    assert crash["tags"]["job.worker_id"] == "dead-worker"
    assert "worker stopped heartbeating" in crash["message"]
    assert good.id not in by_job  # a finished run is not an error
    transactions = items(envelopes, "transaction")
    ok_tx = [t for t in transactions if t["tags"].get("job.id") == good.id]
    assert [(t["transaction"], t["contexts"]["trace"]["status"]) for t in ok_tx] == [("ok", "ok")]
    assert ok_tx[0]["tags"]["job.tag"] == "main"
    statuses = {
        t["contexts"]["trace"]["status"] for t in transactions if t["tags"]["job.id"] == late.id
    }
    assert statuses == {"deadline_exceeded"}


def test_nothing_without_an_initialised_client() -> None:
    doc = D.new_job("ok", {}, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert sentry.start_run(doc, "w1") is None
    sentry.run_ended(None, doc, RuntimeError("x"))  # no-ops
    sentry.finish_run(None)


async def test_a_sentry_sdk_it_cannot_report_with_is_said_at_init(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sentry-sdk 3.0 removed start_transaction: with it no run reached Sentry, silently
    (start_run's error is swallowed so that monitoring never breaks a job)."""
    import logging

    import sentry_sdk

    assert sentry.unsupported_version() is None  # the 2.x the tests install
    monkeypatch.setattr(sentry_sdk, "VERSION", "3.0.0")
    assert sentry.unsupported_version() == "3.0.0"
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("test-sentry-version")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    await make(db, JOBS, logger=logger)
    assert any("sentry_sdk_unsupported" in r.getMessage() for r in seen)
