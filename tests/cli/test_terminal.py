"""What the CLI prints cannot act on the operator's terminal: control characters that a job's
data holds (an error message quoting an HTTP reply, a dedup key another program wrote) are
shown as `\\uXXXX` escapes, in text and in `--json` (where the escape is JSON's own)."""

from __future__ import annotations

import io
import json
from typing import Any

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.cli.common import VisibleStream
from job_processor.core.masking import visible
from tests.conftest import url_with_db
from tests.forked_cli import run_cli
from tests.helpers import FAST, wait_status

#: An OSC sequence that sets the terminal's title, a carriage return that hides "ok", a CSI
#: (C1) and a right-to-left override.
HOSTILE = "title\x1b]0;pwned\x07 ok\rfailed \x9b31m red \u202eexe.txt"


async def hostile(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError(HOSTILE)


def test_controls_are_escaped_and_text_is_kept() -> None:
    assert visible("a\tb\nc") == "a\tb\nc"
    assert visible(HOSTILE) == (
        "title\\u001b]0;pwned\\u0007 ok\\u000dfailed \\u009b31m red \\u202eexe.txt"
    )
    assert json.loads(f'"{visible(HOSTILE)}"') == HOSTILE  # the escapes are JSON's


def test_the_cli_stream_escapes_every_way_of_writing() -> None:
    """`writelines` went to the wrapped stream as it was (escape sequences included)."""
    out = io.StringIO()
    stream = VisibleStream(out)
    assert stream.write("a\x1b[2J") == 5  # the characters given, as a text stream counts
    stream.writelines(["b\rc\n", "d\x07"])
    assert out.getvalue() == "a\\u001b[2Jb\\u000dc\nd\\u0007"


async def test_a_jobs_error_and_key_cannot_act_on_the_terminal(db: Any, mongo_url: str) -> None:
    processor = await init_job_processor(db, jobs={"fetch": JobDef(handler=hostile)}, **FAST)
    async with processor:
        job = await processor.schedule_job("fetch", {}, key=HOSTILE)
        await wait_status(processor, job.id, "errored")  # type: ignore[arg-type]
    env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    shown = await run_cli("jobs", "show", job.id, env=env)
    listed = await run_cli("jobs", "list", env=env)
    as_json = await run_cli("jobs", "show", job.id, "--json", env=env)
    for run in (shown, listed, as_json):
        assert run.returncode == 0, run.stderr
        out = run.stdout + run.stderr
        assert not any(c in out for c in "\x1b\x07\r\x9b\u202e"), out
    assert "title\\u001b]0;pwned\\u0007 ok\\u000dfailed" in shown.stdout
    data = json.loads(as_json.stdout)
    assert HOSTILE in data["output"]["error"] and data["key"] == HOSTILE  # the value itself
    for args in (("jobs", "list", "--name", "x\x1b[2J"), ("jobs", "show", "x\x1b[2J")):
        refused = await run_cli(*args, env=env)  # usage errors quote what was given
        assert refused.returncode == 2 and "x" in refused.stderr
        assert "\x1b" not in refused.stdout + refused.stderr


async def test_jobs_show_writes_a_payloads_text_as_it_is_and_escapes_only_controls(
    db: Any, mongo_url: str
) -> None:
    """`jobs show` printed every non-ASCII character of a payload as `\\uXXXX` (café read
    caf\\u00e9, the mask \\u2022...): only what could act on the terminal is escaped."""
    processor = await init_job_processor(db, jobs={"fetch": JobDef(handler=hostile)}, **FAST)
    job = await processor.schedule_job(
        "fetch", {"note": "café Zürich", "password": "hunter2", "trap": "x\u202ey"}
    )
    env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    shown = await run_cli("jobs", "show", job.id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert '"note": "café Zürich"' in shown.stdout
    assert '"password": "••••••"' in shown.stdout and "hunter2" not in shown.stdout
    assert "\u202e" not in shown.stdout and "x\\u202ey" in shown.stdout


def test_text_a_terminal_cannot_encode_is_written_as_escapes() -> None:
    raw = io.BytesIO()
    latin = io.TextIOWrapper(raw, encoding="latin-1")
    VisibleStream(latin).write('"password": "••••••", "note": "café"\n')
    latin.flush()
    assert (
        raw.getvalue().decode("latin-1")
        == '"password": "\\u2022' + "\\u2022" * 5 + '", "note": "café"\n'
    )


async def test_a_newline_in_a_name_another_program_wrote_cannot_forge_a_row(
    db: Any, mongo_url: str
) -> None:
    """docs/operations.md: control characters in a job's data are printed as their `\\uXXXX`
    escape. A newline in a name another program inserted was printed as it is inside the
    `jobs list` table: the rest of the name read as a row of its own (here a finished job that
    does not exist)."""
    import time

    forged = "send\n6b16000000000000000000ff  send          finished  2026-12-07 00:00:00"
    doc = {"name": forged, "claim_name": forged, "due_ms": int(time.time() * 1000)}
    inserted = (await db["job_processor_jobs"].insert_one(doc)).inserted_id
    env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    listed = await run_cli("jobs", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert len(rows) == 2, rows  # the header and the one job
    assert str(inserted) in rows[1] and "send\\u000a6b16" in rows[1]


async def test_a_line_break_in_a_log_line_or_progress_message_cannot_forge_a_line_of_jobs_show(
    db: Any, mongo_url: str
) -> None:
    """`jobs show` prints a job's error indented line by line and a table cell's line break as
    its escape; a progress message or a log line holding a line break was printed as it is:
    its second line read as a field of the job (a `result:` the job does not have)."""

    async def h(job: Job, signal: AbortSignal) -> None:
        job.log("fetched page\nstatus:             errored")
        await job.report_progress(1, 2, "page 1\nresult:             42")

    processor = await init_job_processor(db, jobs={"h": JobDef(handler=h)}, **FAST)
    async with processor:
        job = await processor.schedule_job("h", {})
        await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
    env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    shown = await run_cli("jobs", "show", job.id, "--logs", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert not any(line.startswith("result:") for line in lines), shown.stdout  # none: None
    assert [line for line in lines if line.startswith("status:")] == [
        "status:             finished"
    ], shown.stdout
    assert "page 1\\u000aresult:" in shown.stdout  # shown, on its line


async def test_events_show_prints_no_forged_line_from_an_events_name_key_or_emitter(
    db: Any, mongo_url: str
) -> None:
    """operations.md: a line break is printed as `\\u000a` in a table cell or a field, so no
    value reads as a line of its own. `events show` printed an event's name and key (both
    taken as given by `emit`) raw: their second line read as a field of the event."""
    from job_processor import Event, Subscriber

    async def noop(event: Event, signal: AbortSignal) -> None:
        return None

    name = "order\nfanout:             owed"
    processor = await init_job_processor(
        db, jobs={}, subscribers={name: [Subscriber("mail", handler=noop)]}, **FAST
    )
    event = await processor.emit(name, {"o": 1}, key="k1\nreplays:            7")
    env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    shown = await run_cli("events", "show", event.id, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert not any(line.startswith("replays:") for line in lines), shown.stdout
    assert [line for line in lines if line.startswith("fanout:")] == ["fanout:             done"], (
        shown.stdout
    )
    assert "order\\u000afanout:" in shown.stdout and "k1\\u000areplays:" in shown.stdout


async def test_status_prints_no_forged_line_from_a_job_name(db: Any, mongo_url: str) -> None:
    """`status` escaped a job name's line break in its tables but printed it raw on its
    `paused names:` and `unserved names:` lines and in the command its warning suggests: the
    rest of the name read as a line of its own (here a forged `warnings: none`)."""
    from job_processor.admin import Admin

    async def h(job: Job, signal: AbortSignal) -> None:
        return None

    name = "send\nwarnings: none"
    processor = await init_job_processor(db, jobs={name: JobDef(handler=h)}, **FAST)
    async with processor:  # registers the name; stopped: served in the last 24 h, now unserved
        pass
    admin = await Admin.open(db, "job_processor_")
    await admin.pause(name)
    env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    shown = await run_cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "warnings: none" not in lines, shown.stdout  # there are warnings, and no such line
    assert [line for line in lines if line.startswith("paused names:")] == [
        "paused names: send\\u000awarnings: none"
    ], shown.stdout


async def test_status_prints_no_forged_line_from_a_limit_key_filled_from_a_payload(
    db: Any, mongo_url: str
) -> None:
    """A per-value limit's key is filled from the job's payload as a producer sent it: a line
    break in the tenant id forged a line of `status` (its limit line was printed raw)."""
    from job_processor import Limit

    async def h(job: Job, signal: AbortSignal) -> None:
        return None

    limit = Limit(key="tenant:{tenant_id}", rate=10, per_seconds=60)
    processor = await init_job_processor(db, jobs={"sync": JobDef(handler=h, limit=limit)}, **FAST)
    async with processor:
        job = await processor.schedule_job("sync", {"tenant_id": "acme\nwarnings: none"})
        await wait_status(processor, job.id, "finished")  # type: ignore[arg-type]
        env = {"MONGODB_URL": url_with_db(mongo_url, db.name)}
        shown = await run_cli("status", env=env)  # its start is in the rate window
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    limits = [line for line in lines if line.startswith("limit ")]
    assert limits and limits[0].startswith("limit tenant:acme\\u000awarnings: none"), shown.stdout
    assert "warnings: none" not in lines or lines.count("warnings: none") == 1, shown.stdout


def test_a_progress_of_nothing_to_do_shows_its_total_of_0() -> None:
    """ "0 of 0" read "100% · 0", the "/ 0" left out (a total of 0 is no total)."""
    from job_processor.cli.jobs import progress_text

    assert progress_text({"done": 0, "total": 0, "fraction": 1.0}) == "100% · 0 / 0"
    assert progress_text({"done": 3, "total": None, "fraction": None}) == "3"
