"""Bad input: clear errors naming the job, the field and the fix; nothing half-written."""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from typing import Any

import pytest
from pydantic import BaseModel
from pymongo import AsyncMongoClient, MongoClient

from job_processor import (
    AbortSignal,
    DatabaseUnreachableError,
    InvalidArgumentError,
    InvalidDatabaseError,
    InvalidDefinitionError,
    InvalidPayloadError,
    Job,
    JobDef,
    JobNotFoundError,
    JobSpec,
    JobStatus,
    UnknownJobError,
    init_job_processor,
)
from tests.helpers import make


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


JOBS = {"send-email": JobDef(handler=noop)}


async def test_sync_database_is_refused_with_the_fix(mongo_url: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        with pytest.raises(InvalidDatabaseError, match="AsyncMongoClient"):
            await init_job_processor(client["x"], jobs=JOBS)
    finally:
        client.close()


async def test_client_instead_of_database_is_refused(mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        with pytest.raises(InvalidDatabaseError, match=r"client\['mydb'\]"):
            await init_job_processor(client, jobs=JOBS)
    finally:
        await client.close()


async def test_a_collection_instead_of_its_database_is_refused_naming_both(mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        with pytest.raises(
            InvalidDatabaseError,
            match=re.escape(
                "db is a collection ('app.jobs'), not a database: pass the database, client['app']"
            ),
        ):
            await init_job_processor(client["app"]["jobs"], jobs=JOBS)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"worker_tags": []}, "worker_tags=[]"),
        ({"worker_tags": "main"}, "list of strings"),
        ({"concurrency": 0}, "concurrency"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"poll_interval": float("nan")}, "poll_interval must be a number of seconds above 0"),
        ({"worker_timeout": float("inf")}, "worker_timeout must be a number of seconds"),
        ({"shutdown_grace": 1e300}, "at most 31536000 (a year), got 1e+300"),
        ({"connect_timeout": float("inf")}, "connect_timeout must be a number of seconds"),
        ({"heartbeat_interval": 10, "worker_timeout": 5}, "twice heartbeat_interval"),
        ({"collection_prefix": "a.b"}, "collection_prefix"),
        ({"jobs": {"x": {"handler": noop, "resumable": "maybe"}}}, "job 'x': field 'resumable'"),
    ],
)
async def test_invalid_options(db: Any, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidDefinitionError) as err:
        await init_job_processor(db, **({"jobs": JOBS} | kwargs))
    assert needle in str(err.value)


async def test_bad_job_calls_name_the_job(db: Any) -> None:
    processor = await make(db, JOBS)
    with pytest.raises(UnknownJobError, match=r"unknown job .send-mail.*known jobs: send-email"):
        await processor.schedule_job("send-mail", {})
    with pytest.raises(InvalidPayloadError, match=r"job .send-email.: payload must be a dict"):
        await processor.schedule_job("send-email", ["a"])  # type: ignore[arg-type]
    with pytest.raises(InvalidPayloadError, match=r"job .send-email.: payload field 'obj' cannot"):
        await processor.schedule_job("send-email", {"obj": object()})
    with pytest.raises(UnknownJobError):
        await processor.run_job("nope")
    with pytest.raises(JobNotFoundError, match="not a job id"):
        await processor.get_job("123")
    with pytest.raises(JobNotFoundError, match="no job with id"):
        await processor.kill_job("0123456789ab0123456789ab")
    assert await processor.list_jobs() == []  # nothing half-written


async def test_a_mistyped_keyword_names_the_verb_called_and_the_closest_keyword(db: Any) -> None:
    """Python's own message named the internal class defining the verb (`JobsAPI.schedule_job`)
    and no fix."""
    processor = await make(db, JOBS)
    calls: list[tuple[Any, dict[str, Any], str]] = [
        (processor.schedule_job, {"prio": 3}, "schedule_job() .* 'prio' .did you mean 'priority'"),
        (
            processor.list_jobs,
            {"state": "pending"},
            "list_jobs() .* 'state' .did you mean 'status'",
        ),
        (processor.wait_for, {"timeout_s": 1}, "wait_for() .* 'timeout_s' .did you mean 'timeout'"),
        (processor.result, {"time_out": 1}, "result() .* 'time_out' .did you mean 'timeout'"),
        (processor.emit, {"keys": "k"}, "emit() .* 'keys' .did you mean 'key'"),
    ]
    for verb, kwargs, message in calls:
        with pytest.raises(TypeError, match=message.replace("()", r"\(\)")) as caught:
            await verb("send-email", **kwargs)
        assert "JobsAPI" not in str(caught.value) and "it takes: " in str(caught.value)
    with pytest.raises(TypeError, match=r"init_job_processor\(\) .* 'heartbeat' .did you mean"):
        await init_job_processor(db, jobs=JOBS, heartbeat=3)
    assert await processor.list_jobs() == []  # nothing written


async def test_get_status_shows_workers_jobs_and_queue(db: Any) -> None:
    import asyncio

    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        await release.wait()

    processor = await make(db, {"hold": JobDef(handler=hold), "later": JobDef(handler=noop)})
    async with processor:
        running = await processor.schedule_job("hold")
        future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        await processor.schedule_job("later", scheduled_for=future)
        for _ in range(100):
            if (await processor.get_job(running.id)).status == JobStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
        status = await processor.get_status()
        release.set()
    (me,) = status.workers
    assert me.id == processor.worker_id
    assert me.alive
    assert [j["id"] for j in me.running_jobs] == [running.id]
    assert status.queue == {"pending": 1, "due": 0, "paused": 0, "running": 1, "waiting": 0}
    assert status.jobs["hold"] == {"running": 1}
    assert status.jobs["later"] == {"pending": 1}


@pytest.mark.parametrize(("logger", "fix"), [("myapp", "'myapp'"), (print, "'myapp'")])
async def test_what_is_not_a_logger_is_refused_with_the_fix(db: Any, logger: Any, fix: str) -> None:
    with pytest.raises(
        InvalidDefinitionError,
        match=re.escape(
            f"logger must be a logging.Logger or a structlog logger, got {type(logger).__name__} "
        )
        + ".*"
        + re.escape(f"pass logging.getLogger({fix})"),
    ):
        await init_job_processor(db, logger=logger, jobs=JOBS)


async def test_definitions_given_by_position_are_said_to_go_in_jobs(db: Any) -> None:
    """`init_job_processor(db, {"send-email": JobDef(...)})` (the definitions second, as in
    other queues) was told to pass logging.getLogger('myapp'): the second parameter is
    `logger`. The error says to name them, jobs={...}, and nothing is written."""
    with pytest.raises(InvalidDefinitionError, match=re.escape("jobs={...}")) as err:
        await init_job_processor(db, JOBS)
    assert "getLogger" not in str(err.value), err.value
    assert await db.list_collection_names() == []


async def test_stdlib_logger_gets_structured_events(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("myservice.jobs")
    processor = await init_job_processor(db, logger=logger, jobs=JOBS)
    with caplog.at_level(logging.INFO, logger="myservice.jobs"):
        done = await processor.run_job("send-email")
    events = [r.__dict__.get("event") for r in caplog.records]
    assert "job_started" in events
    assert "job_finished" in events
    finished = next(r for r in caplog.records if r.__dict__.get("event") == "job_finished")
    assert finished.__dict__["fields"]["job_id"] == done.id
    assert finished.__dict__["fields"]["job_name"] == "send-email"


async def test_scheduled_for_must_be_an_aware_datetime(db: Any) -> None:
    processor = await make(db, JOBS)
    naive = dt.datetime.now() + dt.timedelta(hours=1)
    with pytest.raises(
        InvalidArgumentError, match=r"job 'send-email': scheduled_for .* no timezone"
    ):
        await processor.schedule_job("send-email", {}, scheduled_for=naive)
    with pytest.raises(InvalidArgumentError, match=r"must be a timezone-aware datetime, got str"):
        await processor.schedule_job("send-email", {}, scheduled_for="2030-01-01")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"got int 60; for a delay, pass delay=60$"):
        await processor.schedule_job("send-email", {}, 60)  # type: ignore[arg-type]
    assert await processor.list_jobs() == []


async def test_naive_datetimes_are_refused_anywhere_in_a_payload(db: Any) -> None:
    """One rule for every datetime a job or event carries: a naive one is refused, naming its
    path (it would be read back as UTC), as scheduled_for is."""
    processor = await make(db, JOBS)
    naive = dt.datetime(2030, 1, 1, 9, 0)
    aware = naive.replace(tzinfo=dt.UTC)
    payload = {"to": "ada", "window": {"slots": [aware, naive]}}
    with pytest.raises(
        InvalidPayloadError, match=r"payload field 'window.slots\[1\]' is a datetime"
    ):
        await processor.schedule_job("send-email", payload)
    with pytest.raises(InvalidPayloadError, match=r"event 'signed_up': payload field 'at'"):
        await processor.emit("signed_up", {"at": naive})
    assert await processor.list_jobs() == [] and await processor.list_events() == []
    ok = await processor.schedule_job("send-email", {"at": aware})  # aware: stored as is
    assert (await processor.get_job(ok.id)).payload["at"] == aware


async def test_naive_datetimes_in_a_checkpoint_or_a_result_are_refused(db: Any) -> None:
    """The same rule inside a run: checkpoint() raises, naming the field; a result holding one
    ends the run errored with why (the result is not stored, never as a wrong UTC time)."""
    naive = dt.datetime(2030, 1, 1, 9, 0)
    refused: list[str] = []

    async def saves(job: Job, signal: AbortSignal) -> Any:
        try:
            await job.checkpoint({"step": 1, "at": naive})
        except InvalidPayloadError as exc:
            refused.append(str(exc))
        return {"done_at": naive}

    processor = await make(db, {"saves": JobDef(handler=saves)})
    done = await processor.run_job("saves")
    assert refused and "checkpoint state field 'at' is a datetime without a time zone" in refused[0]
    assert done.status == "errored" and done.state is None and done.result is None
    assert "result field 'done_at' is a datetime without a time zone" in (done.error or "")


async def test_payloads_bson_cannot_hold_or_too_big_name_the_job(db: Any) -> None:
    import uuid

    processor = await make(db, JOBS)
    with pytest.raises(InvalidPayloadError) as err:
        await processor.schedule_job("send-email", {"to": {"id": uuid.uuid4()}})
    assert str(err.value) == (
        "job 'send-email': payload field 'to.id' cannot be stored in MongoDB (type UUID): "
        "store str(value)"
    )
    too_big = r"job 'send-email': payload is 16\.\d MiB \(17000\d\d\d bytes\), over the 15 MiB"
    with pytest.raises(InvalidPayloadError, match=too_big):
        await processor.schedule_job("send-email", {"blob": "x" * 17_000_000})
    assert await processor.list_jobs() == []


async def test_bson_only_values_serialize_to_json(db: Any) -> None:
    from bson import ObjectId

    async def echo(job: Job, signal: AbortSignal) -> Any:
        return {"ref": job.payload["ref"], "raw": job.payload["raw"]}

    processor = await make(db, {"echo": JobDef(handler=echo)})
    ref = ObjectId()
    done = await processor.run_job("echo", {"ref": ref, "raw": b"\x00\x01"})
    dumped = done.model_dump(mode="json")  # what a web service returns
    assert dumped["payload"] == {"ref": str(ref), "raw": "AAE="}
    assert dumped["output"]["result"] == {"ref": str(ref), "raw": "AAE="}
    assert done.payload["ref"] == ref  # the Python values stay what was stored


async def test_list_jobs_refuses_an_unknown_status(db: Any) -> None:
    processor = await make(db, JOBS)
    with pytest.raises(InvalidArgumentError, match=r"unknown status 'done': use one of pending"):
        await processor.list_jobs(status="done")


async def test_dedup_keys_do_not_collide_across_job_names(db: Any) -> None:
    processor = await make(db, {"a": JobDef(handler=noop), "b": JobDef(handler=noop)})
    a = await processor.schedule_job("a", {}, key="order-1")
    b = await processor.schedule_job("b", {}, key="order-1")
    assert a.id != b.id
    assert (await processor.schedule_job("a", {}, key="order-1")).id == a.id


async def test_an_unreachable_server_fails_fast_with_its_address() -> None:
    import asyncio

    from job_processor.storage.local_server import free_port

    port = free_port()  # nothing listens there
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(f"mongodb://127.0.0.1:{port}/")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        with pytest.raises(DatabaseUnreachableError) as err:
            await init_job_processor(client["x"], jobs=JOBS, connect_timeout=1)
    finally:
        await client.close()
    assert loop.time() - t0 < 3
    assert f"cannot reach MongoDB at 127.0.0.1:{port} within 1s" in str(err.value)
    assert "(connection refused: nothing listens on that port)" in str(err.value)
    assert "MONGODB_URL" in str(err.value)


async def test_an_unexpanded_instance_id_is_warned_about(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("myservice.jobs")
    with caplog.at_level(logging.WARNING, logger="myservice.jobs"):
        await init_job_processor(db, logger=logger, jobs=JOBS, instance_id="runner-{{.Task.Slot}}")
    (record,) = [r for r in caplog.records if r.__dict__.get("event") == "instance_id_not_expanded"]
    assert "only swarm" in record.__dict__["fields"]["hint"]


async def test_more_job_names_than_a_claim_can_sort_is_warned_about(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    logger = logging.getLogger("myservice.jobs")
    many = {f"job-{i}": JobDef(handler=noop) for i in range(201)}
    with caplog.at_level(logging.WARNING, logger="myservice.jobs"):
        await init_job_processor(db, logger=logger, jobs=many)
    (record,) = [r for r in caplog.records if r.__dict__.get("event") == "too_many_job_names"]
    assert "split the names between workers with tags" in record.__dict__["fields"]["hint"]


class Email(BaseModel):
    to: str
    cc: list[str] = []


async def test_typed_payloads_are_validated_and_handed_to_the_handler(db: Any) -> None:
    seen: list[Email] = []

    async def send(job: Job[Email], signal: AbortSignal) -> str:
        seen.append(job.payload)
        return job.payload.to

    processor = await make(db, {"send": JobDef(handler=send, payload_model=Email)})
    with pytest.raises(InvalidPayloadError, match=r"job 'send': payload does not match Email: "):
        await processor.schedule_job("send", {"cc": ["x"]})
    with pytest.raises(InvalidPayloadError, match=r"field 'to': Field required"):
        await processor.schedule_job("send", {})
    done = await processor.run_job("send", Email(to="ada@example.com"))
    also = await processor.run_job("send", {"to": "bob@example.com"})
    assert [done.result, also.result] == ["ada@example.com", "bob@example.com"]
    assert seen == [Email(to="ada@example.com"), Email(to="bob@example.com")]
    assert (await processor.get_job(done.id)).payload == {"to": "ada@example.com", "cc": []}


async def test_init_warns_with_the_reading_of_a_six_field_cron(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from job_processor import init_job_processor

    logger = logging.getLogger("test.crons.six")
    crons = {"every5": {"cron_string": "*/5 * * * * 1", "handler": lambda job, signal: None}}
    with caplog.at_level(logging.WARNING, logger="test.crons.six"):
        await init_job_processor(db, logger, crons=crons)
    [warned] = [r for r in caplog.records if r.__dict__.get("event") == "cron_string_has_seconds"]
    assert "second=*/5" in warned.__dict__["fields"]["reading"]
    assert "weekday=1" in warned.__dict__["fields"]["reading"]


async def test_init_warns_of_a_cron_step_larger_than_its_field(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from job_processor import init_job_processor

    logger = logging.getLogger("test.crons.step")
    crons = {
        "often": {"cron_string": "*/90 * * * *", "handler": lambda job, signal: None},
        "fine": {"cron_string": "*/15 * * * *", "handler": lambda job, signal: None},
    }
    with caplog.at_level(logging.WARNING, logger="test.crons.step"):
        await init_job_processor(db, logger, crons=crons)
    warned = [r for r in caplog.records if r.__dict__.get("event") == "cron_step_too_large"]
    assert [r.__dict__["fields"]["job_name"] for r in warned] == ["often"]
    assert "minute field '*/90'" in warned[0].__dict__["fields"]["reading"]


async def test_datetimes_read_back_are_aware_everywhere_without_tz_aware(mongo_url: str) -> None:
    """guide.md: "Datetimes read back are always aware UTC, even from a client created without
    tz_aware=True": inside a payload, a checkpoint and a result too, not only the processor's
    own fields (the handler got a naive datetime and comparing it to an aware one raised)."""
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    seen: dict[str, Any] = {}

    async def handler(job: Job, signal: AbortSignal) -> Any:
        seen["payload"] = job.payload["when"]
        await job.checkpoint({"at": when})
        return {"done_at": when}

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)  # no tz_aware
    db = client[f"jp_test_{uuid.uuid4().hex[:12]}"]
    try:
        p = await make(db, {"a": JobDef(handler=handler)})
        scheduled = await p.schedule_job("a", {"when": when})
        async with p:
            job = await p.wait_for(scheduled.id, timeout=15)
        assert job.status == JobStatus.FINISHED, job.error
        read = await p.get_job(job.id)
        values = {
            "handler's job.payload": seen["payload"],
            "get_job().payload": read.payload["when"],
            "get_job().state": (read.state or {}).get("at"),
            "get_job().result": (read.result or {}).get("done_at"),
            "created_at": read.created_at,
        }
        assert values == dict.fromkeys(values, when) | {"created_at": read.created_at}
        assert all(v is not None and v.tzinfo is not None for v in values.values()), values
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_an_empty_instance_id_is_none_as_in_run(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`INSTANCE_ID=` (set but empty: compose's `${INSTANCE_ID:-}`) is no instance id, as
    `job-processor run` reads it (ctx.instance_id None), not an empty one on the worker."""
    from job_processor.admin import Admin

    monkeypatch.setenv("INSTANCE_ID", "")
    async with await init_job_processor(db, jobs=JOBS):
        [worker] = await Admin(db).list_workers()
    assert worker.instance_id is None


class _FlakyLogger(logging.Logger):
    """A stdlib logger that starts raising once `sick` is set (its backend went down)."""

    sick = False

    def isEnabledFor(self, level: int) -> bool:
        if self.sick:
            raise RuntimeError("logging backend down")
        return super().isEnabledFor(level)


@pytest.mark.drops_log_lines
async def test_a_logger_that_raises_does_not_fail_schedule_job(db: Any) -> None:
    """guide.md, Logging: a line the logger cannot write is dropped (the job was inserted:
    the caller got an error for a job that exists, and a retry added a second)."""
    logger = _FlakyLogger("test.api_errors.flaky1")
    logger.setLevel(logging.INFO)
    processor = await make(db, JOBS, logger=logger)
    logger.sick = True
    try:
        await processor.schedule_job("send-email")
    finally:
        logger.sick = False
    assert len(await processor.list_jobs()) == 1


@pytest.mark.drops_log_lines
async def test_a_logger_that_raises_does_not_strand_a_running_job(db: Any) -> None:
    """guide.md, Logging: 'logging never stops a worker's loops' (the job that succeeded was
    errored: 'its worker lost track of the run')."""
    from tests.helpers import wait_status

    logger = _FlakyLogger("test.api_errors.flaky2")
    logger.setLevel(logging.INFO)
    worker = await make(db, JOBS, logger=logger)
    producer = await make(db, JOBS)
    async with worker:
        logger.sick = True
        try:
            job = await producer.schedule_job("send-email")
            done = await wait_status(producer, job.id, JobStatus.FINISHED, timeout=10)
        finally:
            logger.sick = False
    assert done.status == JobStatus.FINISHED


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"change_streams": "false"}, "change_streams must be True or False"),
        ({"strict_events": "no"}, "strict_events must be True or False"),
        ({"worker_tags": [""]}, "worker_tags entries must be non-empty strings"),
        ({"worker_tags": [None]}, "worker_tags entries must be non-empty strings"),
        ({"worker_tags": ["main", 3]}, "worker_tags entries must be non-empty strings"),
        ({"clock": "not-a-clock"}, "clock must have now"),
        ({"instance_id": 42}, "instance_id must be a string or None"),
        ({"collection_prefix": "jp\x00"}, "collection_prefix"),
    ],
)
async def test_more_invalid_options_are_refused_before_any_write(
    db: Any, kwargs: dict[str, Any], needle: str
) -> None:
    """Each named, with the fix, before anything is written (they were taken as true, turned
    into the tag "None", or raised a raw AttributeError/TypeError/InvalidName after the
    collections and indexes were made)."""
    with pytest.raises(InvalidDefinitionError, match=needle):
        await init_job_processor(db, **({"jobs": JOBS} | kwargs))
    assert await db.list_collection_names() == []  # nothing half-written


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"worker_tags": ["main "]}, "worker_tags entries"),
        ({"worker_tags": [" main"]}, "worker_tags entries"),
        ({"worker_tags": ["main,reports"]}, "worker_tags entries"),
        ({"jobs": {"x": {"handler": noop, "tag": "main "}}}, "job 'x': field 'tag'"),
        ({"jobs": {"x": {"handler": noop, "tag": "main,reports"}}}, "job 'x': field 'tag'"),
        (
            {"crons": {"c": {"handler": noop, "cron_string": "0 3 * * *", "tag": " main"}}},
            "field 'tag'",
        ),
    ],
)
async def test_a_tag_no_run_tags_can_match_is_refused_before_any_write(
    db: Any, kwargs: dict[str, Any], needle: str
) -> None:
    """`job-processor run --tags main` (and JOB_PROCESSOR_WORKER_TAGS) strips each tag and
    splits them at commas: a JobDef(tag="main ") or tag="main,reports" was taken and its jobs
    waited for ever behind workers started with --tags main; worker_tags=["main "] claimed no
    job tagged "main". Such a tag is refused, saying how to write it."""
    with pytest.raises(InvalidDefinitionError, match=needle) as err:
        await init_job_processor(db, **({"jobs": JOBS} | kwargs))
    assert "space" in str(err.value) or "comma" in str(err.value)
    assert await db.list_collection_names() == []  # nothing half-written


async def test_the_refusal_of_a_client_suggests_a_call_that_works_without_a_database_in_the_url(
    mongo_url: str,
) -> None:
    """README: a URL without a database name means the database `job_processor`. The refusal
    sent such a user to client.get_default_database(), which raises ConfigurationError."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        with pytest.raises(InvalidDatabaseError) as err:
            await init_job_processor(client, jobs=JOBS)
        assert "get_default_database('job_processor')" in str(err.value)
        assert client.get_default_database("job_processor").name
    finally:
        await client.close()


async def test_a_database_name_the_server_refuses_is_said_so_not_unreachable(
    mongo_url: str,
) -> None:
    """A database name too long for MongoDB (one that fits in a URL) was "cannot reach MongoDB
    at host within 10s (Invalid database name: ...)": the server answered, and no wait helps."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    name = "jobs_of_the_billing_service_in_the_europe_west_region_production_blue"
    try:
        with pytest.raises(InvalidDatabaseError) as err:
            await init_job_processor(client[name], jobs=JOBS, connect_timeout=5)
    finally:
        await client.close()
    said = str(err.value)
    assert f"database name {name!r}" in said and "shorter" in said, said
    assert "cannot reach" not in said, said


async def _counts(db: Any) -> dict[str, int]:
    names = ("jobs", "events")
    return {n: await db[f"job_processor_{n}"].count_documents({}) for n in names}


@pytest.mark.parametrize("subscribers", [7, True, float("nan"), b"paid", {"x": 1}, [None]])
async def test_a_replay_for_subscribers_that_are_no_list_of_names_is_refused(
    db: Any, subscribers: Any
) -> None:
    """Named with the fix, before anything is written: a number raised a bare TypeError
    (not iterable), a bytes or a mapping was read as its numbers or keys ("no subscriber
    named 112"), a None among them as a name."""
    processor = await make(db, JOBS)
    await processor.webhooks.add(url="https://crm.example.com/h", events=["paid"])
    event = await processor.emit("paid", {"n": 1})
    before = await _counts(db)
    since = event.emitted_at - dt.timedelta(minutes=1)
    for replay in (
        lambda: processor.replay_event(event.id, subscribers),
        lambda: processor.replay_events("paid", since=since, subscribers=subscribers),
    ):
        with pytest.raises(InvalidArgumentError, match=r"^subscribers (must be|entries must)"):
            await replay()
    assert await _counts(db) == before


async def test_list_jobs_refuses_a_limit_past_64_bits(db: Any) -> None:
    """Named, not an OverflowError from BSON."""
    processor = await make(db, JOBS)
    with pytest.raises(InvalidArgumentError, match=r"^limit must be a positive integer"):
        await processor.list_jobs(limit=2**70)
    assert await processor.list_jobs(limit=2**63 - 1) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.schedule_job(None),
        lambda p: p.schedule_job(7, {}),
        lambda p: p.schedule_job(""),
        lambda p: p.schedule_job(["send-email"]),
        lambda p: p.run_job(7),
        lambda p: p.run_job(None),
        lambda p: p.schedule_jobs([JobSpec(None)]),  # type: ignore[arg-type]
        lambda p: p.schedule_jobs([("send-email", {}), (7, {})]),
    ],
)
async def test_a_job_name_that_is_not_a_non_empty_string_is_refused_as_such(
    db: Any, call: Any
) -> None:
    """Said as what it is, before anything is written: it was "unknown job 'None': add it to
    init_job_processor(jobs={...})" (a list raised a bare TypeError, unhashable), as a
    JobClient without jobs= already says."""
    processor = await make(db, JOBS)
    with pytest.raises(InvalidArgumentError, match=r"(^|: )a job name is a non-empty string"):
        await call(processor)
    assert await db["job_processor_jobs"].count_documents({}) == 0


async def test_a_bare_naive_datetime_result_is_named_as_the_result(db: Any) -> None:
    """A handler returning a naive datetime itself: the run errored with "result field
    '(payload)' is a datetime ...", naming a payload field that does not exist."""
    import datetime as dt

    from job_processor import JobDef

    async def stamps(job: Job, signal: AbortSignal) -> Any:
        return dt.datetime(2030, 1, 1, 9, 0)

    processor = await make(db, {"stamps": JobDef(handler=stamps)})
    done = await processor.run_job("stamps")
    assert done.status == "errored"
    assert "payload" not in (done.error or ""), done.error
    assert "the result is a datetime without a time zone" in (done.error or ""), done.error


async def test_a_job_deleted_while_waited_for_is_said_deleted_not_unknown(db: Any) -> None:
    """`crons remove` (or any delete) of a pending job a wait was on: the wait said "no job with
    id", as for an id that never was one."""

    async def send(job: Job, signal: Any) -> None:
        return None

    processor = await make(db, {"send-email": JobDef(handler=send)})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    job = await processor.schedule_job("send-email", {}, scheduled_for=later)
    store = processor.storage.jobs
    real_get_light, reads = store.get_light, [0]

    async def get_light(oid: Any) -> Any:
        reads[0] += 1
        if reads[0] == 2:  # after the wait's first read: deleted
            await db["job_processor_jobs"].delete_one({"_id": oid})
        return await real_get_light(oid)

    store.get_light = get_light  # type: ignore[method-assign]
    with pytest.raises(JobNotFoundError, match=f"job '{job.id}' was deleted while waited for"):
        await processor.wait_for(job.id, timeout=30)
    with pytest.raises(JobNotFoundError, match="no job with id"):  # never a job: as before
        await processor.wait_for("0123456789ab0123456789ab", timeout=1)
