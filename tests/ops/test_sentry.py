"""Sentry for jobs: a transaction per run, failed runs and crash recoveries captured with the
job's tags, through a capturing transport; nothing at all without an initialised client."""

from __future__ import annotations

import datetime as dt
import os
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


def sdk_major() -> int:
    """The sentry-sdk major these tests run with: the dev install's 2.x, or the 3.x that
    test_sentry_versions.py puts first on the path (and says so in this variable)."""
    import sentry_sdk

    major = int(sentry_sdk.VERSION.split(".")[0])
    expected = os.environ.get("JOB_PROCESSOR_TEST_SENTRY_MAJOR")
    assert expected is None or major == int(expected), (sentry_sdk.VERSION, expected)
    return major


def run_roots(envelopes: list[Any]) -> list[dict[str, Any]]:
    """Each run's root as Sentry received it: a transaction from sentry-sdk 2.x, a streamed
    segment span from 3.x (attributes instead of tags, and only "ok" or "error")."""
    roots = [
        {
            "job.id": t["tags"].get("job.id"),
            "name": t["transaction"],
            "op": t["contexts"]["trace"].get("op"),
            "status": t["contexts"]["trace"].get("status"),
            "trace_id": t["contexts"]["trace"]["trace_id"],
        }
        | {key: t["tags"].get(key) for key in ("job.tag", "job.status", "job.attempt")}
        for t in items(envelopes, "transaction")
    ]
    for batch in items(envelopes, "span"):
        for span in batch["items"]:
            if span["is_segment"]:
                found = {key: value["value"] for key, value in span["attributes"].items()}
                roots.append(
                    {
                        "job.id": found.get("job.id"),
                        "name": span["name"],
                        "op": found.get("sentry.op"),
                        "status": span["status"],
                        "trace_id": span["trace_id"],
                    }
                    | {key: found.get(key) for key in ("job.tag", "job.status", "job.attempt")}
                )
    return roots


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
    roots = run_roots(envelopes)
    shown = ("name", "op", "status", "job.tag", "job.status")
    assert [tuple(r[k] for k in shown) for r in roots if r["job.id"] == good.id] == [
        ("ok", "queue.process", "ok", "main", "finished")
    ]
    late_runs = [(r["status"], r["job.status"]) for r in roots if r["job.id"] == late.id]
    # 3.x spans say only "ok" or "error": the job's status and the captured message say why
    assert late_runs == [("deadline_exceeded" if sdk_major() == 2 else "error", "errored")]
    # each run is a trace of its own, and its captured error is in that trace
    assert len({r["trace_id"] for r in roots}) == len(roots) >= 4
    boom_runs = {r["job.attempt"]: r["trace_id"] for r in roots if r["job.id"] == bad.id}
    assert {e["tags"]["job.attempt"]: e["contexts"]["trace"]["trace_id"] for e in attempts} == (
        boom_runs
    )


def test_the_sentry_sdk_under_test_is_the_one_expected() -> None:
    assert sdk_major() in sentry.SUPPORTED_MAJORS


def test_nothing_without_an_initialised_client() -> None:
    doc = D.new_job("ok", {}, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert sentry.start_run(doc, "w1") is None
    sentry.run_ended(None, doc, RuntimeError("x"))  # no-ops
    sentry.finish_run(None)


async def test_a_sentry_sdk_it_cannot_report_with_is_said_at_init(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sentry-sdk 3.0 removed start_transaction: before 3.x was supported no run reached
    Sentry with it, silently (start_run's error is swallowed so that monitoring never breaks a
    job). A major this code has not been written for is said at init."""
    import logging

    import sentry_sdk

    assert sentry.unsupported_version() is None  # the 2.x or 3.x the tests run with
    monkeypatch.setattr(sentry_sdk, "VERSION", "3.0.0")
    assert sentry.unsupported_version() is None
    monkeypatch.setattr(sentry_sdk, "VERSION", "4.0.0")
    assert sentry.unsupported_version() == "4.0.0"
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("test-sentry-version")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    await make(db, JOBS, logger=logger)
    assert any("sentry_sdk_unsupported" in r.getMessage() for r in seen)


#: Sentry's tracing modes: transactions, tracing off, streamed spans (2.x's opt-in, 3.x's only).
THREE_MODES = pytest.mark.parametrize(
    "options",
    [{"traces_sample_rate": 1.0}, {}, {"traces_sample_rate": 1.0, "trace_lifecycle": "stream"}],
    ids=["tracing", "tracing-off", "streamed"],
)


async def post_to_starlette(path: str, handler: Any) -> str:
    """POST `path` to a real Starlette app (Sentry's Starlette/ASGI integration wraps it) whose
    route is `handler`; the response's text."""
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route(path, handler, methods=["POST"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.example") as c:
        return (await c.post(path)).text


def capturing_init(**options: Any) -> list[Any]:
    """sentry_sdk.init with a transport that keeps what it would send (see `envelopes`)."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    captured: list[Any] = []

    class Capture(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            captured.append(envelope)

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Capture, **options)
    return captured


async def one_job_sent(
    db: Any,
    jobs: dict[str, Any],
    name: str,
    status: str,
    payload: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[list[Any], Any]:
    """Sentry initialised with `options` and a capturing transport, one job of `name` run by a
    started processor until `status`: (what Sentry was sent, the job)."""
    import sentry_sdk

    captured = capturing_init(**options)
    try:
        processor = await make(db, jobs, worker_tags=["main"])
        async with processor:
            job = await processor.schedule_job(name, payload or {})
            await wait_status(processor, job.id, status)  # type: ignore[arg-type]
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    return captured, job


async def test_runs_reach_sentry_with_span_streaming_on(db: Any) -> None:
    """sentry-sdk 2.x's span streaming (`trace_lifecycle="stream"`, 3.x's only mode) has no
    transactions: its start_transaction warns and returns a no-op span."""
    captured, good = await one_job_sent(
        db, JOBS, "ok", "finished", traces_sample_rate=1.0, trace_lifecycle="stream"
    )
    shown = ("name", "op", "status", "job.status", "job.tag")
    assert [tuple(r[k] for k in shown) for r in run_roots(captured) if r["job.id"] == good.id] == [
        ("ok", "queue.process", "ok", "finished", "main")
    ]


async def test_a_job_errored_as_invalid_for_its_name_is_captured(
    db: Any, envelopes: list[Any]
) -> None:
    """operations.md: "Each failed run is captured: ..., an invalid job" (a job another
    program wrote whose name and claim_name differ was errored without a word to Sentry, and
    with 3.x its run's span said "ok")."""
    import time

    import sentry_sdk

    processor = await make(db, JOBS, worker_tags=["main"])
    now_ms = int(time.time() * 1000)
    raw = {"name": "ok", "claim_name": "crashy", "due_ms": now_ms, "payload": {}}
    bad = str((await db["job_processor_jobs"].insert_one(raw)).inserted_id)
    async with processor:
        failed = await wait_status(processor, bad, "errored")  # type: ignore[arg-type]
    sentry_sdk.flush()
    assert failed.error is not None and failed.error.startswith("invalid job document")
    assert [e["tags"]["job.id"] for e in items(envelopes, "event")] == [bad]
    [root] = [r for r in run_roots(envelopes) if r["job.id"] == bad]
    assert root["job.status"] == "errored"
    assert root["status"] == ("internal_error" if sdk_major() == 2 else "error")


async def test_a_recovery_is_not_captured_in_the_trace_the_processor_was_started_in(
    db: Any, envelopes: list[Any]
) -> None:
    """An app that starts the processor inside a span (a request, a startup transaction):
    a crashed run recovered later is not an error of that request."""
    import sentry_sdk

    processor = await make(db, JOBS)
    long_ago = processor.clock.now() - dt.timedelta(minutes=5)
    orphan = D.as_running(D.new_job("crashy", {}, now=long_ago), "dead-worker", long_ago)
    await processor.storage.jobs.insert(orphan)
    with sentry_sdk.isolation_scope():  # the app's request: its span left in it, not the tests'
        if sdk_major() == 2:
            outer = sentry_sdk.start_transaction(op="http.server", name="POST /start")
        else:
            outer = sentry_sdk.start_span(name="POST /start")
        with outer:
            await processor.start()
        try:
            await wait_status(processor, str(orphan["_id"]), "errored")  # type: ignore[arg-type]
        finally:
            await processor.stop()
    sentry_sdk.flush()
    [crash] = [e for e in items(envelopes, "event") if e["tags"]["job.id"] == str(orphan["_id"])]
    assert crash["contexts"]["trace"]["trace_id"] != outer.trace_id
    assert crash.get("transaction") != "POST /start"


async def test_each_runs_errors_are_in_a_trace_of_their_own_without_tracing(db: Any) -> None:
    """No traces_sample_rate (tracing off, Sentry's default): the runs' errors still do not
    share one trace (that of the context the processor was started in)."""
    captured, bad = await one_job_sent(db, JOBS, "boom", "errored")
    attempts = [e for e in items(captured, "event") if e["tags"]["job.id"] == bad.id]
    assert len(attempts) == 2
    assert len({e["contexts"]["trace"]["trace_id"] for e in attempts}) == 2


async def test_a_failing_span_end_does_not_break_run_job_or_the_worker(db: Any) -> None:
    """finish_run "never raises": a before_send_span that breaks (here: returns attributes
    that are not a dict) raises out of the root span's end (sentry-sdk 3.0)."""
    import sentry_sdk

    def bad_hook(span: dict[str, Any], hint: Any) -> dict[str, Any]:
        return {"name": span["name"], "attributes": list(span["attributes"])}

    capturing_init(traces_sample_rate=1.0, trace_lifecycle="stream", before_send_span=bad_hook)
    try:
        processor = await make(db, JOBS)
        async with processor:
            job = await processor.run_job("ok", {})
            assert job.status == "finished"
            assert processor.worker.runs == {}
    finally:
        sentry_sdk.init(dsn=None)


def spans_in_trace(envelopes: list[Any], trace_id: str) -> list[str]:
    """The names of the child spans Sentry received in one trace (2.x: a transaction's
    spans; streamed: the span items)."""
    names = [
        str(s.get("description"))
        for t in items(envelopes, "transaction")
        for s in t.get("spans", [])
        if s["trace_id"] == trace_id
    ]
    names += [
        s["name"]
        for batch in items(envelopes, "span")
        for s in batch["items"]
        if s["trace_id"] == trace_id and not s["is_segment"]
    ]
    return names


def app_request() -> Any:
    """An application's request span (the processor is started in it)."""
    import sentry_sdk

    if sdk_major() == 2:
        return sentry_sdk.start_transaction(op="http.server", name="POST /start")
    return sentry_sdk.traces.start_span(name="POST /start")


async def test_the_worker_loops_are_not_in_the_span_the_processor_was_started_in(
    db: Any, mongo_url: str, envelopes: list[Any]
) -> None:
    """operations.md: "Each run is a trace of its own, even when the processor was started
    inside a request's or a startup's span". The loops start() leaves running (claims,
    heartbeats) shared the application's Sentry scope: their MongoDB commands were spans of
    the request."""
    import sentry_sdk
    from pymongo import AsyncMongoClient

    # as an application does: sentry_sdk.init first, then its client (traced by Sentry's
    # PyMongo integration, enabled by default)
    client: Any = AsyncMongoClient(mongo_url)
    try:
        processor = await make(client[db.name], JOBS)
        with sentry_sdk.isolation_scope(), app_request() as outer:  # the app's request
            await processor.start()
            try:  # the worker's claim loop claims and runs it (the request only inserts it)
                job = await processor.schedule_job("crashy", {})
                await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
            finally:
                await processor.stop()
    finally:
        await client.close()
    sentry_sdk.flush()
    names = spans_in_trace(envelopes, outer.trace_id)
    assert any(n.startswith('{"insert": "job_processor_jobs"') for n in names)  # the app's
    loops = [n[:60] for n in names if n.startswith('{"findAndModify": "job_processor_')]
    assert loops == []


async def test_the_applications_spans_after_start_are_children_of_its_span(
    db: Any, mongo_url: str, envelopes: list[Any]
) -> None:
    """An application's own spans after processor.start(), in the span it was started in,
    are that span's children (the loops' MongoDB command spans, entered and exited on the
    application's scope, left a finished span of the worker as their parent)."""
    import asyncio

    import sentry_sdk
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(mongo_url)  # after sentry_sdk.init, as in an application
    loop = asyncio.get_running_loop()
    parents: set[str | None] = set()
    try:
        processor = await make(client[db.name], JOBS)
        with sentry_sdk.isolation_scope(), app_request() as outer:
            await processor.start()
            try:
                deadline = loop.time() + 1.0
                while loop.time() < deadline:  # the worker's loops run meanwhile
                    if sdk_major() == 2:
                        with sentry_sdk.start_span(op="app", name="app work") as mine:
                            parents.add(mine.parent_span_id)
                    else:
                        with sentry_sdk.traces.start_span(name="app work") as mine:
                            parents.add(mine._parent_span_id)
                    await asyncio.sleep(0.005)  # paces the loop (bounded by the deadline)
            finally:
                await processor.stop()
    finally:
        await client.close()
    assert parents == {outer.span_id}


async def run_job_in_a_request(
    db: Any, jobs: dict[str, Any], name: str, payload: dict[str, Any], options: dict[str, Any]
) -> tuple[list[Any], str]:
    """Sentry initialised with `options`; a Starlette request handler calls run_job(name,
    payload): (what Sentry was sent, the job's id)."""
    import sentry_sdk
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    captured = capturing_init(**options)
    ran: dict[str, str] = {}
    try:
        processor = await make(db, jobs)

        async def checkout(request: Request) -> PlainTextResponse:
            job = await processor.run_job(name, payload)
            ran["id"] = job.id
            return PlainTextResponse("done")

        assert await post_to_starlette("/checkout", checkout) == "done"
        await processor.stop()
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    return captured, ran["id"]


async def boom_then_stop(processor: Any) -> str:
    """A failing job (two attempts) run by the started processor, which is then stopped, and
    Sentry flushed: the job's id."""
    import sentry_sdk

    try:
        bad = await processor.schedule_job("boom", {})
        await wait_status(processor, bad.id, "errored")  # type: ignore[arg-type]
    finally:
        await processor.stop()
    sentry_sdk.flush()
    return str(bad.id)


def assert_nothing_of_the_request(envelopes: list[Any], job_id: str) -> None:
    """Both attempts' events of the job carry nothing of the request the processor was
    started in (tag http.request_id, user, request data, breadcrumb), and the job's name."""
    events = [e for e in items(envelopes, "event") if e["tags"].get("job.id") == job_id]
    assert len(events) == 2  # both attempts captured
    for event in events:
        crumbs = [b.get("message") for b in (event.get("breadcrumbs") or {}).get("values", [])]
        leaked = {
            "tag": event["tags"].get("http.request_id"),
            "user": event.get("user"),
            "request": event.get("request"),
            "breadcrumb": "POST /start by alice" in crumbs,
            "transaction": event.get("transaction"),
        }
        nothing = {"tag": None, "user": None, "request": None, "breadcrumb": False}
        assert leaked == nothing | {"transaction": "boom"}


async def test_a_runs_errors_carry_nothing_of_the_request_the_processor_was_started_in(
    db: Any, envelopes: list[Any]
) -> None:
    """operations.md: "the errors of one run are never linked to another run's, nor to that
    request". The loops' scopes were forks of the caller's (tags, user, breadcrumbs, event
    processors), and each run's scope a fork of those."""
    import sentry_sdk

    processor = await make(db, JOBS)
    with sentry_sdk.isolation_scope() as request:  # the app's request, as a web integration sets it
        request.set_tag("http.request_id", "req-42")
        request.set_user({"id": "user-7", "email": "alice@example.com"})
        sentry_sdk.add_breadcrumb(message="POST /start by alice")

        def add_request(event: Any, hint: Any) -> Any:
            event["request"] = {"url": "https://app.example/start", "method": "POST"}
            return event

        request.add_event_processor(add_request)
        with app_request():
            await processor.start()
    bad = await boom_then_stop(processor)
    assert_nothing_of_the_request(envelopes, bad)


async def test_a_processor_started_before_sentry_init_does_not_share_the_callers_scope(
    db: Any,
) -> None:
    import sentry_sdk

    sentry_sdk.init(dsn=None)
    processor = await make(db, JOBS)
    try:
        with sentry_sdk.isolation_scope() as request:
            await processor.start()
            captured = capturing_init()  # Sentry set up after the processor started
            request.set_tag("http.request_id", "req-43")  # the app's, after start()
            bad = await processor.schedule_job("boom", {})
            await wait_status(processor, bad.id, "errored")  # type: ignore[arg-type]
        await processor.stop()
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    events = [e for e in items(captured, "event") if e["tags"].get("job.id") == bad.id]
    assert len(events) == 2
    assert [e["tags"].get("http.request_id") for e in events] == [None, None]


async def test_a_runs_errors_keep_the_tags_the_app_set_at_module_level(
    db: Any, mongo_url: str, envelopes: list[Any]
) -> None:
    """The usual set-up, `sentry_sdk.init(...)` then `sentry_sdk.set_tag("service", ...)` at
    module level (Sentry puts it on the process's isolation scope, which every task of the
    app inherits), then `await processor.start()` in the same context (no request): every
    event of the app carries the tag, a failed run's must too (new, empty scopes for the loops
    dropped it)."""
    import asyncio

    import sentry_sdk
    from pymongo import AsyncMongoClient

    base = sentry_sdk.get_isolation_scope()  # what a module-level set_tag writes to
    sentry_sdk.set_tag("service", "billing")  # as an app does right after sentry_sdk.init
    sentry_sdk.set_user({"id": "svc-billing"})
    client: Any = AsyncMongoClient(mongo_url)  # after sentry_sdk.init: traced by Sentry
    scope_span = sentry_sdk.get_current_scope().span
    try:
        app_db = client[db.name]
        # the app's queries at startup, overlapping: sentry-sdk 2.x's PyMongo integration then
        # leaves a finished command span on the scope, which read as "inside a request"
        await asyncio.gather(*[app_db.things.find_one({}) for _ in range(5)])
        processor = await make(app_db, JOBS)
        async with processor:
            bad = await processor.schedule_job("boom", {})
            await wait_status(processor, bad.id, "errored")  # type: ignore[arg-type]
        sentry_sdk.capture_message("the app's own event")  # for comparison
        sentry_sdk.flush()
    finally:
        base.remove_tag("service")
        base.set_user(None)
        sentry_sdk.get_current_scope().span = scope_span
        await client.close()
    events = items(envelopes, "event")
    [app_event] = [e for e in events if e.get("message") == "the app's own event"]
    assert app_event["tags"].get("service") == "billing"  # the app's events have it
    runs = [e for e in events if e["tags"].get("job.id") == bad.id]
    assert len(runs) == 2
    assert [e["tags"].get("service") for e in runs] == ["billing", "billing"]
    assert [(e.get("user") or {}).get("id") for e in runs] == ["svc-billing", "svc-billing"]
    # and each run still a trace of its own, not the process's
    assert len({e["contexts"]["trace"]["trace_id"] for e in runs}) == 2


@pytest.mark.parametrize(
    "options",
    [
        {"traces_sample_rate": 1.0},
        {},
        {"traces_sample_rate": 1.0, "trace_lifecycle": "stream"},
        {"trace_lifecycle": "stream"},
    ],
    ids=["tracing", "tracing-off", "streamed", "streamed-tracing-off"],
)
async def test_a_processor_started_in_a_starlette_request_carries_nothing_of_it(
    db: Any, options: dict[str, Any]
) -> None:
    """operations.md "Sentry": started inside a span (a request), the loops "start empty, so
    that nothing of that request (its tags, user, breadcrumbs, request data) is on a job's
    event". A real Starlette app (Sentry's Starlette/ASGI integration) whose handler starts
    the processor, with each of Sentry's tracing modes (2.x's streamed span is not the
    scope's `span`: it was taken for no request)."""
    import sentry_sdk
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    captured = capturing_init(**options)
    try:
        processor = await make(db, JOBS)

        async def start(request: Request) -> PlainTextResponse:
            sentry_sdk.set_tag("http.request_id", "req-42")
            sentry_sdk.set_user({"id": "user-7"})
            sentry_sdk.add_breadcrumb(message="POST /start by alice")
            await processor.start()
            return PlainTextResponse("started")

        assert await post_to_starlette("/start", start) == "started"
        bad = await boom_then_stop(processor)
    finally:
        sentry_sdk.init(dsn=None)
    assert_nothing_of_the_request(captured, bad)


@THREE_MODES
async def test_a_run_job_in_a_starlette_request_is_named_after_the_job(
    db: Any, options: dict[str, Any]
) -> None:
    """operations.md "Sentry": "each run is a transaction (op `queue.process`, named after
    the job)". run_job called in a request handler of a real Starlette app: the ASGI
    integration's event processor renamed the run and its errors after the route."""
    captured, job_id = await run_job_in_a_request(db, JOBS, "boom", {}, options)  # it fails
    [event] = [e for e in items(captured, "event") if e["tags"].get("job.id") == job_id]
    roots = [r["name"] for r in run_roots(captured) if r["job.id"] == job_id]
    assert (event.get("transaction"), roots) == ("boom", [] if not options else ["boom"])


async def sync_tenant(job: Job, signal: AbortSignal) -> str:
    """A handler naming its run after the tenant, with Sentry's own API (source "custom")."""
    import sentry_sdk

    tenant = job.payload["tenant"]
    sentry_sdk.get_current_scope().set_transaction_name(f"sync {tenant}", source="custom")
    sentry_sdk.capture_message(f"synced {tenant}")
    return "ok"


async def export_parts(job: Job, signal: AbortSignal) -> str:
    """A handler with a transaction of its own (sentry-sdk 2.x; with 3.x a root span of its
    own), one per part it exports."""
    import sentry_sdk

    if hasattr(sentry_sdk, "start_transaction"):
        with sentry_sdk.start_transaction(op="task", name="export part 1"):
            pass
    else:
        with sentry_sdk.traces.start_span(name="export part 1", parent_span=None):
            pass
    return "ok"


@THREE_MODES
async def test_a_handler_that_names_its_run_keeps_that_name(
    db: Any, options: dict[str, Any]
) -> None:
    """The event processor naming a run's events after the job (against a web framework's
    renaming when run_job is called in a request) undid a handler's own
    `set_transaction_name(..., source="custom")` on its events (and, with 2.x transactions, on
    the run's transaction)."""
    jobs = {"sync": JobDef(handler=sync_tenant)}
    captured, job = await one_job_sent(db, jobs, "sync", "finished", {"tenant": "acme"}, **options)
    [event] = [e for e in items(captured, "event") if e["tags"].get("job.id") == job.id]
    roots = [r["name"] for r in run_roots(captured) if r["job.id"] == job.id]
    assert (event["message"], event.get("transaction"), roots) == (
        "synced acme",
        "sync acme",
        ["sync acme"] if options else [],
    )


async def test_a_handlers_own_transaction_keeps_its_name(db: Any) -> None:
    """A transaction the handler starts itself is its own, not the run's: it was sent renamed
    after the job (two "export" transactions, one of op "task"). With 3.x, a root span the
    handler starts keeps its name too."""
    jobs = {"export": JobDef(handler=export_parts)}
    captured, job = await one_job_sent(db, jobs, "export", "finished", traces_sample_rate=1.0)
    if sdk_major() == 2:
        sent = sorted(
            (t["transaction"], t["contexts"]["trace"]["op"]) for t in items(captured, "transaction")
        )
        assert sent == [("export", "queue.process"), ("export part 1", "task")]
    else:  # 3.x: both are root spans, the handler's with the run's job.* attributes too
        names = sorted(r["name"] for r in run_roots(captured) if r["job.id"] == job.id)
        assert names == ["export", "export part 1"]


async def test_a_sentry_sdk_1x_loaded_breaks_no_job(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sentry-sdk 1.x (no `sentry_sdk.get_client`) imported by the application: every run's
    start raised out of the worker's execute, and each job stayed running for good (its run
    never left worker.runs, so no recovery took it). Monitoring never breaks a job."""
    import sys
    import types

    legacy = types.ModuleType("sentry_sdk")
    legacy.VERSION = "1.45.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentry_sdk", legacy)
    monkeypatch.setattr(sentry, "_sdk", None)
    assert sentry.unsupported_version() == "1.45.1"  # said at init
    processor = await make(db, {"ok": JobDef(handler=ok)})
    async with processor:
        job = await processor.schedule_job("ok", {})
        done = await wait_status(processor, job.id, "finished", "errored", timeout=10)  # type: ignore[arg-type]
    assert done.status == "finished"
    assert processor.worker.runs == {}


async def sync_plain(job: Job, signal: AbortSignal) -> str:
    """A handler naming its run with Sentry's API as its docs show it (no source)."""
    import sentry_sdk

    sentry_sdk.set_transaction_name(f"sync {job.payload['tenant']}")
    sentry_sdk.capture_message("synced")
    return "ok"


@THREE_MODES
async def test_a_handlers_set_transaction_name_is_kept(db: Any, options: dict[str, Any]) -> None:
    """set_transaction_name(name) without a source keeps the run's "task" source: the events
    and the run were renamed back after the job."""
    jobs = {"sync": JobDef(handler=sync_plain)}
    captured, job = await one_job_sent(db, jobs, "sync", "finished", {"tenant": "acme"}, **options)
    [event] = [e for e in items(captured, "event") if e["tags"].get("job.id") == job.id]
    roots = [r["name"] for r in run_roots(captured) if r["job.id"] == job.id]
    assert (event.get("transaction"), roots) == ("sync acme", ["sync acme"] if options else [])


async def export_task_source(job: Job, signal: AbortSignal) -> str:
    """A handler with a transaction (2.x; a root span with 3.x) of its own, of source "task",
    as Sentry's own task integrations make them."""
    import sentry_sdk

    if hasattr(sentry_sdk, "start_transaction"):
        with sentry_sdk.start_transaction(op="task", name="export part 1", source="task"):
            pass
    else:
        task = {"sentry.segment.name.source": "task"}
        with sentry_sdk.traces.start_span(name="export part 1", attributes=task, parent_span=None):
            pass
    return "ok"


async def test_a_handlers_own_task_transaction_keeps_its_name(db: Any) -> None:
    jobs = {"export": JobDef(handler=export_task_source)}
    captured, job = await one_job_sent(db, jobs, "export", "finished", traces_sample_rate=1.0)
    if sdk_major() == 2:
        sent = sorted(
            (t["transaction"], t["contexts"]["trace"]["op"]) for t in items(captured, "transaction")
        )
        assert sent == [("export", "queue.process"), ("export part 1", "task")]
    else:
        names = sorted(r["name"] for r in run_roots(captured) if r["job.id"] == job.id)
        assert names == ["export", "export part 1"]


@THREE_MODES
async def test_a_handlers_set_transaction_name_is_kept_under_run_job_in_a_request(
    db: Any, options: dict[str, Any]
) -> None:
    """run_job called in a request names the run's events after the job, and a name the
    handler gives itself is kept: without a source it keeps the run's "task" source, which
    the ASGI integration renamed after the route, and then the job's name replaced it."""
    jobs = {"sync": JobDef(handler=sync_plain)}
    captured, job_id = await run_job_in_a_request(db, jobs, "sync", {"tenant": "acme"}, options)
    [event] = [e for e in items(captured, "event") if e["tags"].get("job.id") == job_id]
    roots = [r["name"] for r in run_roots(captured) if r["job.id"] == job_id]
    assert (event.get("transaction"), roots) == ("sync acme", ["sync acme"] if options else [])


async def sync_new_scope(job: Job, signal: AbortSignal) -> str:
    import sentry_sdk

    with sentry_sdk.new_scope():
        sentry_sdk.set_transaction_name("sync part")
        sentry_sdk.capture_message("part synced")
    return "ok"


async def sync_isolation_scope(job: Job, signal: AbortSignal) -> str:
    import sentry_sdk

    with sentry_sdk.isolation_scope():
        sentry_sdk.set_transaction_name("sync part")
        sentry_sdk.capture_message("part synced")
    return "ok"


def sync_in_thread(job: Job, signal: Any) -> str:
    import sentry_sdk

    sentry_sdk.set_transaction_name(f"sync {job.payload['tenant']}")
    sentry_sdk.capture_message("synced")
    return "ok"


async def sync_gathered(job: Job, signal: AbortSignal) -> str:
    import asyncio

    import sentry_sdk

    async def part(i: int) -> None:
        with sentry_sdk.new_scope():
            sentry_sdk.set_transaction_name(f"sync part {i}")
            await asyncio.sleep(0)
            sentry_sdk.capture_message(f"part {i} synced")

    await asyncio.gather(part(1), part(2))
    return "ok"


SCOPED_NAMES = {
    "sync_new_scope": [("part synced", "sync part")],
    "sync_isolation_scope": [("part synced", "sync part")],
    "sync_gathered": [("part 1 synced", "sync part 1"), ("part 2 synced", "sync part 2")],
    "sync_in_thread": [("synced", "sync acme")],
}


@THREE_MODES
@pytest.mark.parametrize(
    "handler", [sync_new_scope, sync_isolation_scope, sync_gathered, sync_in_thread]
)
async def test_a_name_set_in_a_handlers_own_scope_is_kept_under_run_job_in_a_request(
    db: Any, options: dict[str, Any], handler: Any
) -> None:
    """A name the handler set in a scope of its own (new_scope, isolation_scope, gathered
    sub-tasks) was replaced by the job's under run_job in a request: the name was read from
    the run's scope, not the one the event was captured in."""
    jobs = {"sync": JobDef(handler=handler)}
    captured, job_id = await run_job_in_a_request(db, jobs, "sync", {"tenant": "acme"}, options)
    got = sorted(
        (e.get("message") or "", e.get("transaction"))
        for e in items(captured, "event")
        if e["tags"].get("job.id") == job_id
    )
    assert got == SCOPED_NAMES[handler.__name__]
