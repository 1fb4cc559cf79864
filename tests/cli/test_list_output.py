"""`jobs list`: its table masks what `jobs show` masks; its JSON says no log lines were read."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from typing import Any

import pytest

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from tests.conftest import url_with_db
from tests.forked_cli import Run, run_cli
from tests.helpers import FAST, wait_status


async def cli(url: str, *args: str) -> Run:
    return await run_cli(*args, env={"MONGODB_URL": url})


async def chatty(job: Job, signal: AbortSignal) -> None:
    job.log("step one", rows=3)
    job.log("step two", rows=5)


async def test_jobs_list_json_does_not_claim_a_job_has_no_log_lines(
    db: Any, mongo_url: str
) -> None:
    """`jobs list --json` reads no log lines (a listing leaves them out), yet prints
    `"logs": []` for every job, which says "this job logged nothing"; `--id` of the same job
    prints its lines, and /api/jobs leaves the key out (docs/dashboard.md: "a listing has no
    logs: the job's own has them")."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"chatty": JobDef(handler=chatty)}, **FAST)
    async with processor:
        job = await processor.schedule_job("chatty", {})
        await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
    assert len((await processor.get_job(job.id)).logs) == 2
    by_id = json.loads((await cli(url, "jobs", "list", "--id", job.id, "--json")).stdout)
    assert len(by_id["jobs"][0]["logs"]) == 2  # read by id: its lines
    listed = await cli(url, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["jobs"]
    # either the lines, or no "logs" key (as /api/jobs): never an empty list for a job that has 2
    assert row.get("logs", None) != [], row["logs"]


async def test_jobs_list_table_masks_the_event_secret_a_delivery_error_quotes(
    db: Any, mongo_url: str
) -> None:
    """A subscriber's error that quotes the event's `smtp_password`: `jobs show`, `jobs list
    --json` and the dashboard mask it (they pass the event's payload, `Admin.carried`); the
    `jobs list` table's ERROR column prints it in clear."""
    from job_processor import Event, Subscriber

    secret = "hunter2-from-the-event"

    async def notify(event: Event, signal: AbortSignal) -> None:
        raise RuntimeError(f"smtp refused {event.payload['smtp_password']}")

    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(
        db,
        jobs={},
        subscribers={"order.paid": [Subscriber("notify", handler=notify, max_attempts=1)]},
        **FAST,
    )
    async with processor:
        event = await processor.emit("order.paid", {"smtp_password": secret, "order": 7})
        (delivery,) = (await processor.get_event(event.id)).deliveries
        assert delivery.job_id is not None
        await wait_status(processor, delivery.job_id, "errored")  # type: ignore[arg-type]
    shown = await cli(url, "jobs", "show", delivery.job_id)
    as_json = await cli(url, "jobs", "list", "--json")
    table = await cli(url, "jobs", "list")
    for run in (shown, as_json, table):
        assert run.returncode == 0, run.stderr
    assert "smtp refused" in shown.stdout and secret not in shown.stdout
    assert secret not in as_json.stdout
    assert "smtp refused" in table.stdout
    assert secret not in table.stdout  # fails: the ERROR column shows it


async def test_jobs_list_pages_reach_every_bare_insert(db: Any, mongo_url: str) -> None:
    """Jobs another program inserted without `created_at` (bare inserts, not yet adopted) are
    listed on the first page, last; once a page ended before them, `--cursor` never reached
    them again: paging with --limit lost them (here all three)."""
    from bson import ObjectId

    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"chatty": JobDef(handler=chatty)}, **FAST)
    dated = [(await processor.schedule_job("chatty", {})).id for _ in range(2)]
    bare = [ObjectId() for _ in range(3)]
    for oid in bare:  # as another program inserts a job: no created_at until adopted
        await db["job_processor_jobs"].insert_one(
            {"_id": oid, "name": "chatty", "status": "pending", "payload": {}}
        )
    expected = sorted(dated + [str(b) for b in bare])

    async def listed(*extra: str) -> list[str]:
        seen: list[str] = []
        cursor: list[str] = []
        for _ in range(20):
            run = await cli(url, "jobs", "list", "--json", *extra, *cursor)
            assert run.returncode == 0, run.stderr
            page = json.loads(run.stdout)
            seen += [j["id"] for j in page["jobs"]]
            if not page["next_cursor"]:
                return seen
            cursor = ["--cursor", page["next_cursor"]]
        raise AssertionError("the pages never end")

    one_page = await listed()
    assert sorted(one_page) == expected
    for size in ("1", "2", "4"):
        paged = await listed("--limit", size)
        assert paged == one_page, (size, paged)  # the same order, none lost nor repeated


async def test_a_job_with_no_recorded_date_shows_a_dash_not_1970(db: Any, mongo_url: str) -> None:
    """Another program's insert with a text `_id`, no `created_at` and no `due_ms` has no
    insert time: `jobs list` printed "1970-01-01 00:00:00" as its creation (and due) date; it
    now prints "-", none recorded."""
    url = url_with_db(mongo_url, db.name)
    await init_job_processor(db, jobs={"chatty": JobDef(handler=chatty)}, **FAST)
    await db["job_processor_jobs"].insert_one(
        {"_id": "ext-7", "name": "chatty", "status": "errored", "payload": {}}
    )
    table = await cli(url, "jobs", "list")
    assert table.returncode == 0, table.stderr
    assert "1970" not in table.stdout, table.stdout
    (row,) = [line for line in table.stdout.splitlines() if "ext-7" in line]
    assert row.split()[3:5] == ["-", "-"], row  # CREATED, DUE/ENDED


def errored_import(now: Any) -> dict[str, Any]:
    """An errored job's document as job-processor writes it, to set odd fields on."""
    return {
        "name": "import",
        "status": "errored",
        "payload": {},
        "created_at": now,
        "updated_at": now,
        "scheduled_for": now,
        "attempt": 1,
        "failures": 1,
        "max_attempts": 1,
        "output": {"result": None, "error": "boom", "duration_ms": 5},
    }


async def test_jobs_show_reads_odd_nested_values_another_program_wrote(
    db: Any, mongo_url: str
) -> None:
    """scale.md: reading a document another program wrote (`jobs show` among the readers)
    "shows the wrong fields ... instead of failing", as the dashboard's job page does.
    `jobs show` stopped with a traceback on a history entry whose error is a number, a log
    line whose level is null and a progress whose fraction is text."""
    import datetime as dt

    url = url_with_db(mongo_url, db.name)
    now = dt.datetime.now(dt.UTC)
    base = errored_import(now)
    odd = {
        "history": ([{"attempt": 1, "status": "errored", "error": 500}], "500"),
        "logs": ([{"at": now, "run": 1, "level": None, "message": "started"}], "started"),
        "progress": ({"done": 5, "total": 10, "fraction": "0.5"}, "'0.5' · 5 / 10"),
    }
    for field, (value, said) in odd.items():
        oid = (await db["job_processor_jobs"].insert_one(base | {field: value})).inserted_id
        shown = await cli(url, "jobs", "show", str(oid), "--logs")
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, (field, shown.stderr)
        assert said in shown.stdout, (field, shown.stdout)


async def test_jobs_show_prints_no_forged_line_from_a_log_lines_run_or_a_dependency(
    db: Any, mongo_url: str
) -> None:
    """operations.md: in a field of `jobs show` or a log line a line break is printed as
    `\\u000a`, "so no value reads as a line of its own". A log line's `run` and the `after:` /
    `failed dependency:` fields, written by another program, were printed as they were."""
    import datetime as dt

    url = url_with_db(mongo_url, db.name)
    now = dt.datetime.now(dt.UTC)
    forged = 'x\nresult:             {"paid": true}'
    base = errored_import(now)
    odd = {
        "logs": {"logs": [{"at": now, "run": forged, "level": "info", "message": "m"}]},
        "after": {"after": [forged], "deps": {forged: "errored"}, "failed_dependency": forged},
    }
    forging: dict[str, list[str]] = {}
    for field, fields in odd.items():
        oid = (await db["job_processor_jobs"].insert_one(base | fields)).inserted_id
        shown = await cli(url, "jobs", "show", str(oid), "--logs")
        assert shown.returncode == 0, (field, shown.stderr)
        forging[field] = [x for x in shown.stdout.splitlines() if x.startswith("result:")]
    assert forging == {"logs": [], "after": []}, forging


async def test_jobs_show_and_list_read_a_date_utc_cannot_hold(db: Any, mongo_url: str) -> None:
    """Another program's text date that UTC cannot hold ("9999-12-31T23:00:00-05:00"), kept as
    written, made `jobs list` (every job, not only that one) and `jobs show` stop with an
    OverflowError; it now reads as the nearest date UTC holds."""
    from bson import ObjectId

    url = url_with_db(mongo_url, db.name)
    oid = ObjectId()
    await db["job_processor_jobs"].insert_one(
        {
            "_id": oid,
            "name": "send-email",
            "payload": {},
            "scheduled_for": "9999-12-31T23:00:00-05:00",
        }
    )
    shown = await cli(url, "jobs", "show", str(oid))
    listed = await cli(url, "jobs", "list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr[-600:]
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-600:]
    assert "9999-12-31T23:59:59.999Z" in shown.stdout, shown.stdout


ODD_FIELDS = [
    ("workers", {"_id": "other-1"}, "names", None, ("status",)),
    ("workers", {"_id": "other-1"}, "names", None, ("workers", "list")),
    ("workers", {"_id": "other-1"}, "names", 3, ("crons", "list")),
    ("workers", {"_id": "other-1"}, "definitions", None, ("status",)),
    ("workers", {"_id": "other-1"}, "definitions", "x", ("names", "list")),
    ("definitions", {"_id": "send"}, "sensitive_fields", None, ("names", "list")),
    ("definitions", {"_id": "send"}, "sensitive_fields", 1, ("status",)),
    ("definitions", {"_id": "send"}, "max_attempts", None, ("names", "list", "--json")),
    ("crons", {"_id": "nightly"}, "next_slot", "soon", ("crons", "list")),
    ("crons", {"_id": "nightly"}, "tag", 7, ("status", "--json")),
    ("events", {}, "emitted_at", None, ("events", "list")),
    ("events", {}, "name", None, ("events", "list", "--json")),
    ("webhooks", {}, "format", None, ("webhooks", "list")),
    ("webhooks", {}, "events", None, ("webhooks", "list", "--json")),
]


@pytest.mark.parametrize(
    "coll,which,field,value,command",
    ODD_FIELDS,
    ids=[f"{c}.{f}={v!r}-{' '.join(cmd)}" for c, _, f, v, cmd in ODD_FIELDS],
)
async def test_read_commands_read_odd_values_another_program_wrote_without_a_traceback(
    db: Any,
    mongo_url: str,
    coll: str,
    which: dict[str, Any],
    field: str,
    value: Any,
    command: tuple[str, ...],
) -> None:
    import datetime as dt

    from tests.helpers import every_kind, other_worker

    await every_kind(db, events=["order_placed"])
    now = dt.datetime.now(dt.UTC)
    await db["job_processor_workers"].insert_one(other_worker(now))  # a live worker elsewhere
    url = url_with_db(mongo_url, db.name)
    before = await cli(url, *command)
    assert before.returncode == 0, before.stderr  # the same data, as job-processor writes it
    found = await db[f"job_processor_{coll}"].find_one(which)
    await db[f"job_processor_{coll}"].update_one({"_id": found["_id"]}, {"$set": {field: value}})
    after = await cli(url, *command)
    assert "Traceback" not in after.stderr, after.stderr
    assert after.returncode == 0, after.stderr
    if "--json" in command:
        json.loads(after.stdout)


def _columns(line: str) -> int:
    """The terminal columns `line` takes (a wide character two, a combining one none)."""
    return sum(
        0
        if unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in "WF"
        else 1
        for c in line
    )


async def test_table_columns_line_up_under_wide_and_escaped_text(db: Any, mongo_url: str) -> None:
    """A table's column was as wide as its longest text counted in characters, not in the
    columns the terminal gives it: a name of wide characters (日本語, an emoji) takes two
    columns each, and a control or bidi character is printed as its 6-character `\\uXXXX`
    escape, so every cell after such a name stood off its header (here STATUS)."""
    import time

    from bson import ObjectId

    url = url_with_db(mongo_url, db.name)
    now = int(time.time() * 1000)
    for name in ("レポート🎉", "ok\u202eevil", "e\u0301té", "plain"):  # é as e + a combining accent
        await db["job_processor_jobs"].insert_one(
            {"_id": ObjectId(), "name": name, "claim_name": name, "due_ms": now}
        )
    listed = await cli(url, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert len(rows) == 4, rows
    at = _columns(header[: header.index("STATUS")])
    for row in rows:
        status = row.index("pending")
        assert _columns(row[:status]) == at, (row, header)


async def test_events_show_says_its_times_are_utc(db: Any, mongo_url: str) -> None:
    """`events show` printed `emitted_at: 2030-01-31 09:00:00`, a time with no zone that reads
    as the operator's local time, where `jobs show` prints `2030-01-31T09:00:00.123Z` and every
    listing's header says (UTC); it now prints its times as `jobs show` does."""
    from job_processor import Event, Subscriber

    async def notify(event: Event, signal: AbortSignal) -> None:
        return None

    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(
        db, jobs={}, subscribers={"order.paid": [Subscriber("notify", handler=notify)]}, **FAST
    )
    event = await processor.emit("order.paid", {"order": 7})
    shown = await cli(url, "events", "show", event.id)
    assert shown.returncode == 0, shown.stderr
    (line,) = [x for x in shown.stdout.splitlines() if x.startswith("emitted_at:")]
    at = event.emitted_at.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    assert line.split() == ["emitted_at:", at.replace("+00:00", "Z")]
