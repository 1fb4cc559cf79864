"""Progress and log lines on a server: seen from another process while the job runs, coalesced
to at most one write per second, carried by checkpoints and the final write, kept (the last
200) across runs, and masked where shown."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from job_processor import AbortSignal, Job, JobDef, JobStatus, init_job_processor
from job_processor.core.masking import MASK
from job_processor.dashboard import create_dashboard
from tests.helpers import FAST, make, wait_status

S = JobStatus


class Updates(monitoring.CommandListener):
    """update commands on the jobs collection, with their update documents."""

    def __init__(self) -> None:
        self.updates: list[tuple[float, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update" and str(event.command.get("update")).endswith("jobs"):
            for u in event.command["updates"]:
                self.updates.append((asyncio.get_event_loop().time(), dict(u["u"])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_progress_and_lines_are_seen_from_another_process_while_it_runs(
    mongo_url: str, db: Any
) -> None:
    seen = asyncio.Event()
    release = asyncio.Event()

    took: list[float] = []

    async def reindex(job: Job, signal: AbortSignal) -> int:
        began = time.monotonic()
        for batch in range(1, 301):  # 300 reports and 300 lines in about 1.5 s
            await job.report_progress(batch, 300, f"batch {batch}")
            job.log("indexed", batch=batch)
            await asyncio.sleep(0.005)
        took.append(time.monotonic() - began)  # longer on a loaded machine
        await release.wait()
        job.log("last line")  # pending at the end: the final write carries it
        return 300

    updates = Updates()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[updates]
    )
    try:
        worker = await init_job_processor(
            client[db.name], jobs={"reindex": JobDef(handler=reindex)}, **FAST
        )
        watcher = await make(db, {})  # another process: reads the database only
        async with worker:
            job = await worker.schedule_job("reindex")

            async def visible() -> bool:
                current = await watcher.get_job(job.id)
                if current.progress and current.progress["done"] == 300 and current.logs:
                    seen.set()
                return seen.is_set()

            deadline = asyncio.get_running_loop().time() + 60  # 1.5 s alone; slower under load
            while not await visible() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert seen.is_set(), "progress never reached 300 from the other process"
            running = await watcher.get_job(job.id)
            assert running.status == S.RUNNING and running.progress["fraction"] == 1.0
            assert running.progress["message"] == "batch 300"
            release.set()
            done = await wait_status(watcher, job.id, S.FINISHED)
    finally:
        await client.close()
    notes = [(t, u) for t, u in updates.updates if "$push" in u or "progress" in u.get("$set", {})]
    ends = [u for _, u in notes if u.get("$set", {}).get("status") == "finished"]
    alone = [t for t, u in notes if "status" not in u.get("$set", {})]
    assert len(ends) == 1  # the final write carried what was pending
    assert len(alone) <= took[0] + 3  # about one write a second (4 in 1.5 s alone), not 600
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(alone))
    assert len(done.logs) == 200  # the last 200 of 301
    assert [line["fields"]["batch"] for line in done.logs[:-1]] == list(range(102, 301))
    assert done.logs[-1]["message"] == "last line"
    assert {line["run"] for line in done.logs} == {1}
    assert done.progress is not None and done.progress["done"] == 300


async def test_a_checkpoint_carries_the_notes_and_a_resumed_run_sees_the_progress(
    db: Any,
) -> None:
    seen_on_resume: list[Any] = []
    go = asyncio.Event()

    async def index(job: Job, signal: AbortSignal) -> str:
        if job.attempt == 1:
            await job.report_progress(4, 10, "half")
            job.logger.warning("slow disk", disk="sda")
            await job.checkpoint({"step": 4})
            go.set()
            await signal.wait()  # stopped: paused, resumed by the next start
            signal.raise_if_aborted()
        seen_on_resume.append(job.progress)
        job.log("resumed", step=job.state["step"])
        return "ok"

    p = await make(db, {"index": JobDef(handler=index, resumable=True)})
    async with p:
        job = await p.schedule_job("index")
        await asyncio.wait_for(go.wait(), 10)
        checkpointed = await p.get_job(job.id)
    assert checkpointed.progress["done"] == 4 and checkpointed.logs[0]["message"] == "slow disk"
    assert (await p.get_job(job.id)).status == S.PAUSED
    async with p:
        done = await wait_status(p, job.id, S.FINISHED)
    assert seen_on_resume[0]["done"] == 4 and seen_on_resume[0]["message"] == "half"
    assert [(x["run"], x["message"]) for x in done.logs] == [(1, "slow disk"), (2, "resumed")]


async def test_lines_are_masked_where_they_are_shown(db: Any) -> None:
    import httpx2 as httpx

    async def login(job: Job, signal: AbortSignal) -> None:
        job.log(f"logging in as ada with password={job.payload['password']}")
        job.logger.info("token refreshed", token="tok-abcdef-123")
        await job.report_progress(1, 2, f"using {job.payload['password']}")

    p = await make(db, {"login": JobDef(handler=login)})
    done = await p.run_job("login", {"password": "hunter2-very-secret"})
    assert "hunter2-very-secret" in done.logs[0]["message"]  # stored as logged
    app = create_dashboard(p, auth=None)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as c:
        for url in (f"/jobs/{done.id}", f"/api/jobs/{done.id}"):
            page = (await c.get(url)).text
            assert "logging in as ada" in page, url
            assert "hunter2-very-secret" not in page and "tok-abcdef-123" not in page, url


async def test_the_jobs_list_shows_a_running_jobs_progress(db: Any) -> None:
    import httpx2 as httpx

    started = asyncio.Event()

    async def slow(job: Job, signal: AbortSignal) -> None:
        await job.report_progress(3, 4, "almost")
        started.set()
        await signal.wait()

    p = await make(db, {"slow": JobDef(handler=slow)})
    async with p:
        job = await p.schedule_job("slow")
        await asyncio.wait_for(started.wait(), 10)
        for _ in range(100):
            if (await p.get_job(job.id)).progress:
                break
            await asyncio.sleep(0.05)
        app = create_dashboard(p, auth=None)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as c:
            listing = (await c.get("/jobs")).text
            page = (await c.get(f"/jobs/{job.id}")).text
        await p.kill_job(job.id)
    assert 'role="progressbar"' in listing and 'aria-valuenow="75"' in listing
    assert 'aria-valuenow="75"' in page and "almost" in page


async def test_lines_echoed_to_the_workers_log_are_masked(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    async def login(job: Job, signal: AbortSignal) -> None:
        job.log(f"password={job.payload['password']}", api_key="key-0123456789", user="ada")
        job.log("signed in", event="login", level=2, message="m", job_id="j", level_=3)

    logger = logging.getLogger("test.notes")
    p = await make(db, {"login": JobDef(handler=login)}, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.notes"):
        done = await p.run_job("login", {"password": "hunter2-very-secret"})
    kept = {"event": "login", "level": 2, "message": "m", "job_id": "j", "level_": 3}
    assert done.status == S.FINISHED and done.logs[-1]["fields"] == kept  # the job keeps them
    logged, named = [r for r in caplog.records if r.__dict__.get("event") == "job_logged"]
    echoed = named.__dict__["fields"]
    assert (echoed["event_"], echoed["level_"], echoed["message_"], echoed["job_id_"]) == (
        "login",
        2,
        "m",
        "j",
    )
    assert echoed["message"] == "signed in" and echoed["job_id"] == done.id
    assert echoed["level__"] == 3  # both kept
    text = str(logged.__dict__["fields"])
    assert "ada" in text
    assert "hunter2-very-secret" not in text and "key-0123456789" not in text


async def test_an_error_in_the_workers_log_hides_the_secrets_the_job_holds(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`job_errored` and `job_retry_scheduled` carry the error's first line masked as the
    dashboard shows it: values in fields of the default sensitive names, values at the
    definition's `sensitive_fields`, `key=value` pairs; the job keeps the error as raised."""
    import logging

    async def verify(job: Job, signal: AbortSignal) -> None:
        job.log("checking", card=job.payload["card"]["number"])
        raise ValueError(
            f"bad {job.payload['card']['number']} for {job.payload['password']} token=abc123xyz"
        )

    payload = {"card": {"number": "4111-1111-1111"}, "password": "correct horse", "user": "ada"}
    logger = logging.getLogger("test.notes.errors")
    defs = {
        "verify": JobDef(handler=verify, sensitive_fields=("card.number",)),
        "again": JobDef(handler=verify, sensitive_fields=("card.number",), max_attempts=2),
    }
    p = await make(db, defs, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.notes.errors"):
        done = await p.run_job("verify", payload)
        async with p:
            retried = await p.schedule_job("again", payload)
            await wait_status(p, retried.id, S.ERRORED)
    assert done.status == S.ERRORED
    shown = {r.__dict__.get("event"): r.__dict__["fields"] for r in caplog.records}
    for event in ("job_errored", "job_retry_scheduled", "job_logged"):
        text = str(shown[event])
        assert "4111-1111-1111" not in text and "correct horse" not in text, event
    assert "abc123xyz" not in str(shown["job_errored"])
    assert shown["job_errored"]["error"] == f"ValueError: bad {MASK} for {MASK} token={MASK}"
    assert done.error is not None and "4111-1111-1111" in done.error  # as raised (readers mask)


async def test_nan_and_infinity_never_cost_a_line_a_progress_or_a_result(db: Any) -> None:
    """JSON has no NaN or infinity (and the embedded server refuses them): log fields and results
    keep them as text, checkpoints and payloads refuse them naming the field."""
    from job_processor import InvalidPayloadError

    refused: list[str] = []

    async def measure(job: Job, signal: AbortSignal) -> dict[str, Any]:
        await job.report_progress(1, 2, "half")
        job.log("measured", ratio=float("nan"), peak=float("inf"))
        try:
            await job.checkpoint({"best": {"score": float("-inf")}})
        except InvalidPayloadError as exc:
            refused.append(str(exc))
        return {"ratio": float("nan"), "values": [1.5, float("inf")]}

    processor = await make(db, {"measure": JobDef(handler=measure)})
    with pytest.raises(InvalidPayloadError, match=r"payload field 'limits\[0\]' is inf"):
        await processor.schedule_job("measure", {"limits": [float("inf")]})
    async with processor:
        job = await processor.schedule_job("measure")
        done = await wait_status(processor, job.id, S.FINISHED)
    assert done.result == {"ratio": "nan", "values": [1.5, "inf"]}
    assert [(x["message"], x["fields"]) for x in done.logs] == [
        ("measured", {"ratio": "nan", "peak": "inf"})
    ]
    assert done.progress is not None and done.progress["done"] == 1
    assert refused == [
        "checkpoint state field 'best.score' is -inf: NaN and infinity are not stored (JSON has "
        "no such number): store None, or a str such as 'nan'"
    ]


async def test_a_plain_def_handler_logs_from_its_thread(db: Any) -> None:
    """A plain handler runs on a thread: its lines reach the job, in order, before its result."""

    def export(job: Job, signal: AbortSignal) -> int:
        for row in range(1, 51):
            job.log("exported", row=row)
        job.logger.warning("done", rows=50)
        return 50

    processor = await make(db, {"export": JobDef(handler=export)})
    done = await processor.run_job("export")
    assert done.status == S.FINISHED and done.result == 50
    assert [x["fields"].get("row") for x in done.logs] == [*range(1, 51), None]
    assert (done.logs[-1]["level"], done.logs[-1]["message"]) == ("warning", "done")


async def test_a_checkpoint_or_progress_without_await_is_said_in_the_jobs_log(db: Any) -> None:
    """`job.checkpoint(...)` without `await` saves nothing: the worker says so, in its log and
    in the job's own, instead of ending the run as if the state were saved."""
    import warnings

    async def forgets(job: Job, signal: AbortSignal) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "never awaited", by design here
            job.checkpoint({"step": 1})  # type: ignore[unused-coroutine]
            job.report_progress(1, 2)  # type: ignore[unused-coroutine]
            job.checkpoint({"step": 2})  # type: ignore[unused-coroutine]
        await job.checkpoint({"step": 3})  # this one is saved
        return "done"

    p = await make(db, {"forgets": JobDef(handler=forgets)})
    async with p:
        job = await p.schedule_job("forgets")
        done = await wait_status(p, job.id, S.FINISHED)
    assert done.state == {"step": 3}
    assert [(line["level"], line["message"]) for line in done.logs] == [
        (
            "warning",
            "job.checkpoint(), job.report_progress() called without `await`: nothing was saved "
            "(3 call(s)); in an async def handler, `await` them; from a plain def handler, "
            "call job.checkpoint_sync(), "
            "job.report_progress_sync()",
        )
    ]


async def test_a_plain_def_handler_checkpoints_and_reports_progress_with_the_sync_forms(
    db: Any,
) -> None:
    """A plain def handler runs in a thread: job.checkpoint_sync / report_progress_sync save
    from there (blocking it until saved); a resumed run sees the state."""
    runs: list[Any] = []

    def export(job: Job, signal: AbortSignal) -> int:
        runs.append(job.state)
        start = (job.state or {}).get("page", 0)
        for page in range(start + 1, 4):
            job.checkpoint_sync({"page": page})
            job.report_progress_sync(page, 3, f"page {page}")
            if page == 2 and len(runs) == 1:
                raise RuntimeError("the export server went away")
        return len(runs)

    p = await make(db, {"export": JobDef(handler=export, resumable=True, max_attempts=2)})
    async with p:
        job = await p.schedule_job("export")
        done = await wait_status(p, job.id, S.FINISHED)
    assert runs == [None, {"page": 2}]  # the retry resumed from the saved page
    assert done.state == {"page": 3} and done.result == 2
    assert done.progress is not None and done.progress["message"] == "page 3"
    assert done.logs == []  # nothing said about a forgotten await


async def test_the_sync_forms_say_where_they_belong(db: Any) -> None:
    async def wrong(job: Job, signal: AbortSignal) -> None:
        job.checkpoint_sync({"n": 1})

    p = await make(db, {"wrong": JobDef(handler=wrong)})
    done = await p.run_job("wrong")
    assert done.status == S.ERRORED and done.error is not None
    assert "checkpoint_sync() blocks its thread: from an async def handler, use" in done.error
    with pytest.raises(RuntimeError, match="only available inside a running handler"):
        await asyncio.to_thread(done.report_progress_sync, 1)  # a job read, not running


def test_the_sync_forms_from_a_thread_that_outlived_its_loop_raise_job_lost() -> None:
    """A plain def handler's thread goes on after its worker stopped: its next checkpoint_sync
    raises JobLostError at once (no hang, nothing saved), on a stopped or a closed loop."""
    import threading

    from bson import ObjectId

    from job_processor import JobLostError

    job = Job.read({"_id": ObjectId(), "name": "export", "status": "running"})
    loop = asyncio.new_event_loop()

    async def save(state: dict[str, Any]) -> None: ...

    job._checkpointer = save
    job._loop = loop  # never running: as after the worker's loop stopped
    errors: list[BaseException] = []

    def handler_thread() -> None:
        try:
            job.checkpoint_sync({"page": 1})
        except BaseException as exc:
            errors.append(exc)

    for _ in range(2):
        thread = threading.Thread(target=handler_thread)
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
        loop.close()
    assert [type(e) for e in errors] == [JobLostError, JobLostError]
    assert "the worker's event loop has stopped" in str(errors[0])
    assert job.not_awaited() == [] and job.state is None


async def test_a_log_call_whose_message_key_or_exception_cannot_be_shown_never_fails_the_run(
    db: Any,
) -> None:
    """guide.md: "a log call never fails a run". A message, a field's key or value, or the
    exception of `logger.exception` whose str() raises is kept as `<Type>`."""

    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("no text for you")

    class Odd(Exception):
        def __str__(self) -> str:
            raise ValueError("no text for you")

    async def report(job: Job, signal: AbortSignal) -> int:
        job.log(Unprintable(), field=Unprintable())
        job.log("nested", data={Unprintable(): 1})
        try:
            raise Odd()
        except Odd:
            job.logger.exception("failed once")
        return 7

    processor = await make(db, {"report": JobDef(handler=report)})
    done = await processor.run_job("report")
    assert (done.status, done.error, done.result) == (S.FINISHED, None, 7)
    first, nested, last = done.logs
    assert (first["message"], first["fields"]) == ("<Unprintable>", {"field": "<Unprintable>"})
    assert nested["fields"] == {"data": {"<Unprintable>": 1}}
    assert last["fields"] == {"exception": "Odd: <Odd>"}


@pytest.mark.parametrize(
    ("password", "part", "body"),
    [
        ("pässwort-geheim-42", "sswort-geheim-42", 10),  # not ASCII: p\u00e4... in the text
        ('pa"ss\\word-x1-long', "word-x1-long", 10),  # a quote, a backslash: escaped there
        ("hunter2-very-secret", "hunter2-ve", 480),  # the 512-character cut falls inside it
    ],
)
async def test_a_secret_in_log_fields_over_1_kb_is_masked_where_shown(
    db: Any, password: str, part: str, body: int
) -> None:
    """Fields over about 1 KB are folded into one cut JSON text; readers looked for the
    secret's literal text there, which JSON escapes (non-ASCII, quotes, backslashes) or cuts:
    the password showed on the dashboard, its API and `jobs show --logs`."""

    async def login(job: Job, signal: AbortSignal) -> None:
        job.log("request", body="x" * body, note=job.payload["password"], pad="z" * 1500)

    p = await make(db, {"login": JobDef(handler=login)})
    done = await p.run_job("login", {"password": password})
    assert done.status == JobStatus.FINISHED and list(done.logs[0]["fields"]) == ["fields"]
    api, page, _ = await shown_on_the_dashboard(p, done.id)
    assert part not in api["logs"][0]["fields"]["fields"]
    assert part not in page


async def test_a_critical_line_is_echoed_to_the_workers_log_at_critical(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each `job.log()` line is echoed as `job_logged` "at its own level": a critical (or
    `fatal`) line at CRITICAL, as the job keeps it, not downgraded to ERROR."""
    import logging

    async def disk(job: Job, signal: AbortSignal) -> None:
        job.logger.critical("disk full", free=0)
        job.logger.log("fatal", "giving up")

    logger = logging.getLogger("test.notes.critical")
    p = await make(db, {"disk": JobDef(handler=disk)}, logger=logger)
    with caplog.at_level(logging.DEBUG, logger="test.notes.critical"):
        done = await p.run_job("disk")
    assert [line["level"] for line in done.logs] == ["critical", "critical"]  # as kept
    echoed = [r for r in caplog.records if r.__dict__.get("event") == "job_logged"]
    assert [r.levelno for r in echoed] == [logging.CRITICAL, logging.CRITICAL]


async def test_a_long_non_ascii_log_message_keeps_its_text_on_the_job(db: Any) -> None:
    """A handler's long message in Russian is cut to fit the line, not emptied to '…'."""
    message = "Ошибка соединения с базой данных, повтор через 5 секунд. " * 20  # noqa: RUF001

    async def sync_accounts(job: Job, signal: AbortSignal) -> None:
        job.logger.error(message, attempt=1)

    processor = await make(db, {"sync-accounts": JobDef(handler=sync_accounts)})
    done = await processor.run_job("sync-accounts")
    assert done.status == S.FINISHED
    stored = (await processor.get_job(done.id)).logs[-1]
    assert stored["level"] == "error" and stored["fields"] == {"attempt": 1}
    assert message.startswith(stored["message"].rstrip("…"))
    assert len(stored["message"]) > 200, f"the message was cut to {stored['message']!r}"


async def test_a_sensitive_field_value_cut_by_a_lines_end_is_hidden_where_shown(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A value at a definition's `sensitive_fields` path that a log line quotes where the line
    is cut (its message at 2 KB, its fields folded at 512 characters) is hidden where the line
    is shown, as the worker's own log hides it, not shown up to the cut (the readers' scrub
    matched whole values only)."""
    import datetime as dt
    import logging

    from job_processor.core.notes import log_line

    iban = "DE89370400440532013000"
    head = iban[:14]  # what is left of it before the cut
    probe = log_line(1, "info", "a" * 5000, {}, dt.datetime.now(dt.UTC))["message"]
    message = "a" * (len(probe) - 1 - len(head)) + iban + " rejected by the bank"

    async def pay(job: Job, signal: AbortSignal) -> None:
        job.log(message)
        job.log("request", body="b" * (510 - len('{"body": "') - len(head)) + iban, pad="z" * 1500)

    logger = logging.getLogger("test.notes.cut")
    p = await make(
        db, {"pay": JobDef(handler=pay, sensitive_fields=("account.iban",))}, logger=logger
    )
    with caplog.at_level(logging.INFO, logger="test.notes.cut"):
        done = await p.run_job("pay", {"account": {"iban": iban}})
    assert done.status == S.FINISHED
    assert done.logs[0].get("cut") and head in done.logs[0]["message"]  # stored as logged
    assert head in done.logs[1]["fields"]["fields"]
    echoed = [
        r.__dict__["fields"] for r in caplog.records if r.__dict__.get("event") == "job_logged"
    ]
    assert head not in str(echoed)  # the worker's own log hides it
    api, page, _ = await shown_on_the_dashboard(p, done.id)
    assert head not in api["logs"][0]["message"], api["logs"][0]["message"][-40:]
    assert head not in api["logs"][1]["fields"]["fields"], api["logs"][1]["fields"]["fields"][-40:]
    assert head not in page


async def test_a_secret_cut_by_the_progress_messages_500_characters_is_hidden_where_shown(
    db: Any,
) -> None:
    """A progress message is cut to 500 characters (now ending in '…', `cut`); a password it
    quotes across the cut is hidden where it is shown (the dashboard, its API, `jobs show`),
    as a cut log line's is, not shown up to the cut."""

    from job_processor.cli.common import MASKER
    from job_processor.core.masking import mask_job

    password = "hunter2-very-secret"
    head = password[:8]

    async def login(job: Job, signal: AbortSignal) -> None:
        await job.report_progress(1, 2, "x" * 490 + job.payload["password"])

    p = await make(db, {"login": JobDef(handler=login)})
    done = await p.run_job("login", {"password": password})
    assert done.status == S.FINISHED and head in done.progress["message"]  # stored as cut
    assert done.progress["cut"] is True and len(done.progress["message"]) == 500
    api, page, listing = await shown_on_the_dashboard(p, done.id, "/jobs?name=login")
    assert head not in api["progress"]["message"], api["progress"]["message"][-30:]
    assert head not in page and head not in listing
    shown = mask_job(MASKER, await p.get_job(done.id))  # what `jobs show` prints
    assert head not in shown["progress"]["message"]


@pytest.mark.parametrize("logger_kind", ["stdlib", "structlog"])
@pytest.mark.parametrize("call", ["job.log", "logger.info", "logger.log", "logger.bind"])
async def test_a_log_field_named_self_is_a_field_and_never_fails_the_run(
    db: Any, logger_kind: str, call: str
) -> None:
    """ "Any field name is a field" and "a log call never fails a run": a field named `self`
    met EventLog.info's `self` (the echo to the worker's log) or JobLogger.bind's, and the
    handler's TypeError errored the job."""
    import logging

    import structlog

    async def handler(job: Job, signal: AbortSignal) -> str:
        if call == "job.log":
            job.log("fetched", self="row-7")
        elif call == "logger.info":
            job.logger.info("fetched", self="row-7")
        elif call == "logger.log":
            job.logger.log("info", "fetched", self="row-7")
        else:
            job.logger.bind(self="row-7").info("fetched")
        return "ok"

    logger = (
        logging.getLogger("notes.self") if logger_kind == "stdlib" else structlog.get_logger("n")
    )
    processor = await make(db, {"h": JobDef(handler=handler)}, logger=logger)
    done = await processor.run_job("h")
    assert done.status == S.FINISHED, done.error
    assert [(line["message"], line["fields"]) for line in done.logs] == [
        ("fetched", {"self": "row-7"})
    ]


async def shown_on_the_dashboard(
    p: Any, job_id: str, also: str = "/jobs"
) -> tuple[dict[str, Any], str, str]:
    """The job as the dashboard shows it: its JSON API's answer, its page's HTML, and the HTML
    of the page at `also` (a listing)."""
    import httpx2 as httpx

    app = create_dashboard(p, auth=None)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as c:
        api = (await c.get(f"/api/jobs/{job_id}")).json()
        page = (await c.get(f"/jobs/{job_id}")).text
        other = (await c.get(also)).text
    return api, page, other


async def test_a_progress_count_too_large_for_a_float_is_an_invalid_argument(db: Any) -> None:
    """guide.md: `done` and `total` are finite real numbers; anything else raises
    InvalidArgumentError in the handler. A Fraction no float can hold raised OverflowError."""
    from fractions import Fraction

    from job_processor import InvalidArgumentError

    seen: list[BaseException] = []

    async def work(job: Job, signal: AbortSignal) -> str:
        for done, total in ((Fraction(10**400), None), (1, Fraction(10**400))):
            try:
                await job.report_progress(done, total)
            except Exception as exc:
                seen.append(exc)
        return "ran"

    p = await make(db, {"p": JobDef(handler=work)})
    async with p:
        job = await p.schedule_job("p")
        done = await wait_status(p, job.id, S.FINISHED, S.ERRORED)
    assert done.status == S.FINISHED, done.error
    assert [type(e) for e in seen] == [InvalidArgumentError, InvalidArgumentError], seen


@pytest.mark.parametrize("reports", [1, 2])
async def test_progress_a_checkpoint_and_dependencies_awaited_on_the_handlers_own_loop(
    db: Any, reports: int
) -> None:
    """A plain def handler that runs its own async code (`asyncio.run(...)` on its thread) and
    awaits `job.report_progress` there: the write ran on that loop, which cannot use the
    worker's client: one report was lost silently, two made the handler's success an
    "internal error: RuntimeError: Event loop is closed". They now run on the worker's loop."""

    def handler(job: Job, signal: AbortSignal) -> str:
        async def main() -> None:
            await job.report_progress(1, 2, "first")
            if reports == 2:
                await asyncio.sleep(0)  # the coalesced write starts
                await job.report_progress(2, 2, "second")
            await job.checkpoint({"page": reports})
            assert await job.dependencies() == []

        asyncio.run(main())
        return "ok"

    p = await make(db, {"h": JobDef(handler=handler)})
    done = await p.run_job("h")
    assert (done.status, done.error, done.result) == (S.FINISHED, None, "ok")
    assert done.progress is not None and done.progress["done"] == reports, done.progress
    assert done.state == {"page": reports}


@pytest.mark.parametrize("then_close", [False, True])
def test_an_await_on_the_handlers_own_loop_pending_when_the_worker_loop_stops_raises_job_lost(
    then_close: bool,
) -> None:
    """guide.md: from a thread that outlived its run, once the worker's loop has stopped, the
    calls raise JobLostError (checkpoint_sync polls the loop each second). A plain def
    handler's `asyncio.run(...)` awaiting `job.checkpoint()` while its write was in flight on
    the worker's loop, and that loop stopped: the thread waited forever."""
    import threading

    from bson import ObjectId

    from job_processor import JobLostError

    job = Job.read({"_id": ObjectId(), "name": "export", "status": "running"})
    worker_loop = asyncio.new_event_loop()
    in_flight = threading.Event()

    async def save(state: dict[str, Any]) -> None:  # a write the server has not answered
        in_flight.set()
        await asyncio.Event().wait()

    job._checkpointer = save
    job._loop = worker_loop
    worker = threading.Thread(target=worker_loop.run_forever, daemon=True)
    worker.start()
    errors: list[BaseException] = []

    def handler_thread() -> None:
        async def main() -> None:
            await job.checkpoint({"page": 1})

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=handler_thread, daemon=True)
    thread.start()
    assert in_flight.wait(10)
    worker_loop.call_soon_threadsafe(worker_loop.stop)  # the worker's process stops its loop
    worker.join(10)
    if then_close:
        worker_loop.close()
    thread.join(10)
    if not then_close:
        worker_loop.close()
    assert not thread.is_alive(), "the handler's await never returned"
    assert [type(e) for e in errors] == [JobLostError], errors
