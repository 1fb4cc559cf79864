"""CLI faults an outside hunt found (each test failed before its fix): a `kill` of two ids
that killed one, an empty `--name` that made `jobs retry` and `jobs purge` act on every name, a
`MONGODB_URL` option value the driver dropped (`?tls=yes` connected in plain text), and `run
--tags` ignored by a factory that does not pass `ctx.worker_tags` on."""

from __future__ import annotations

import datetime as dt
from typing import Any

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from tests.conftest import url_with_db
from tests.forked_cli import Run, run_cli


async def cli(url: str, *args: str) -> Run:
    return await run_cli(*args, env={"MONGODB_URL": url})


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


async def fails(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError("down")


async def test_kill_with_several_job_ids_kills_them_all(db: Any, mongo_url: str) -> None:
    """`kill --help` says `JOB_ID [JOB_ID ...]`: two ids must not be read as the old
    `kill MODULE:ATTR JOB_ID` form, which kills only the second and ignores the first."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"tick": JobDef(handler=tick)})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    first = await processor.schedule_job("tick", {}, scheduled_for=later)
    second = await processor.schedule_job("tick", {}, scheduled_for=later)
    said = await cli(url, "kill", first.id, second.id)
    assert said.returncode == 0, (said.stdout, said.stderr)
    statuses = [(await processor.get_job(j.id)).status for j in (first, second)]
    assert statuses == ["killed", "killed"], said.stdout
    third = await processor.schedule_job("tick", {}, scheduled_for=later)
    again = await cli(url, "kill", third.id, first.id, third.id)  # --help: JOB_ID [JOB_ID ...]
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert (await processor.get_job(third.id)).status == "killed"


APP_IGNORING_CTX = """
import os
from pymongo import AsyncMongoClient
from job_processor import JobDef, init_job_processor

async def report(job, signal):
    return None

async def make():  # takes no ctx: the worker_tags it gets are its own (None: every job)
    db = AsyncMongoClient(os.environ["MONGODB_URL"], tz_aware=True).get_default_database()
    return await init_job_processor(db, jobs={"report": JobDef(handler=report, tag="main")})
"""


async def test_run_tags_are_not_silently_dropped(db: Any, mongo_url: str, tmp_path: Any) -> None:
    """A factory that does not pass ctx.worker_tags on (a `make()` without ctx) built a
    processor with tags None, which runs every job: the operator's `--tags reports` (or
    JOB_PROCESSOR_WORKER_TAGS) was dropped without a word. It is refused before serving."""
    (tmp_path / "tagless_app.py").write_text(APP_IGNORING_CTX)
    url = url_with_db(mongo_url, db.name)
    for args, env, named in (
        (["--tags", "reports"], {}, "--tags"),
        ([], {"JOB_PROCESSOR_WORKER_TAGS": "reports"}, "JOB_PROCESSOR_WORKER_TAGS"),
    ):
        said = await run_cli(
            "run", "tagless_app:make", *args, env={"MONGODB_URL": url} | env, cwd=tmp_path
        )
        assert said.returncode == 2, (said.returncode, said.stderr[-2000:])
        assert named in said.stderr and "ctx.worker_tags" in said.stderr, said.stderr[-2000:]
        assert "Traceback" not in said.stderr
    assert await db["job_processor_workers"].count_documents({}) == 0


async def test_purge_and_retry_with_an_empty_name_act_on_no_other_name(
    db: Any, mongo_url: str
) -> None:
    """operations.md: "A name given to `retry --name` or `purge --name` that no definition and
    no job has is an error with a did-you-mean (exit 2)". An empty --name (a script's unset
    "$JOB") is such a name; it must not widen the action to every name."""
    from job_processor import FakeClock

    url = url_with_db(mongo_url, db.name)
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    processor = await init_job_processor(
        db,
        jobs={
            "a": JobDef(handler=tick),
            "b": JobDef(handler=tick),
            "c": JobDef(handler=fails, max_attempts=1),
        },
        clock=FakeClock(two_days_ago),
        keep_finished=True,  # no expiry: only the purge may remove them
        keep_failed=True,
    )
    ended = [await processor.run_job(n) for n in ("a", "b", "c")]
    assert [j.status for j in ended] == ["finished", "finished", "errored"]

    retry = await cli(url, "jobs", "retry", "--name", "", "--status", "errored")
    still = (await processor.get_job(ended[2].id)).status
    assert (retry.returncode, still) == (2, "errored"), (retry.returncode, still, retry.stdout)

    purge = await cli(
        url, "jobs", "purge", "--status", "finished", "--older-than", "1d", "--name", ""
    )
    left = await db["job_processor_jobs"].count_documents({"status": "finished"})
    assert (purge.returncode, left) == (2, 2), (purge.returncode, left, purge.stdout, purge.stderr)


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


async def test_a_url_option_with_a_bad_value_is_bad_input(db: Any, mongo_url: str) -> None:
    """The driver only warns about a known option with a value it cannot read and goes on
    without it, as it does for an unknown option (which the CLI refuses, exit 2): `?tls=yes`
    then connects in plain text, credentials included, and the command succeeds."""
    url = url_with_db(mongo_url, db.name)
    for option in ("tls=yes", "readPreference=secundary", "authMechanism=SCRAM-SHA256"):
        said = await cli(with_option(url, option), "workers", "list")
        assert said.returncode == 2, (option, said.returncode, said.stderr)
        assert option.split("=")[0].lower() in said.stderr.lower(), said.stderr
    conflict = await cli(with_option(url, "tls=true&ssl=false"), "workers", "list")
    assert conflict.returncode == 2 and "ssl and tls" in conflict.stderr, conflict.stderr
    fine = await cli(
        with_option(url, "readPreference=secondaryPreferred&w=majority"), "workers", "list"
    )
    assert fine.returncode == 0, fine.stderr


async def test_a_missing_tls_file_in_the_url_is_one_line(db: Any, mongo_url: str) -> None:
    """A tlsCAFile that names no file (a path typo) is bad input said in one line, not a
    traceback with exit 1; for `health`, "unhealthy: ..." (exit 1), as a malformed URL is."""
    url = with_option(url_with_db(mongo_url, db.name), "tlsCAFile=/nonexistent/ca.pem")
    listing = await cli(url, "jobs", "list")
    assert "Traceback" not in listing.stderr, listing.stderr
    assert listing.returncode == 2 and "tlsCAFile" in listing.stderr.replace(
        "tlscafile", "tlsCAFile"
    )
    health = await cli(url, "health")
    assert "Traceback" not in health.stderr, health.stderr
    assert health.returncode == 1 and health.stdout.startswith("unhealthy: "), health.stdout


async def test_a_bad_url_never_prints_the_password(db: Any, mongo_url: str) -> None:
    """A password with an unescaped '?' (the driver refuses it) must not be echoed: what
    follows the '?' in the userinfo is not an option name to quote back in stderr (and the
    logs that keep it)."""
    host = mongo_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    for secret in ("hunter2?TopSecretTail", "pa?zqk=wordTAIL&x", "pa/ss?zqk=wordTAIL"):
        url = f"mongodb://app:{secret}@{host}/{db.name}"
        said = await cli(url, "workers", "list")
        assert said.returncode == 2, (said.returncode, said.stderr)
        assert "percent-encode" in said.stderr, said.stderr
        tail = secret.split("?", 1)[1]
        for piece in {tail, tail.split("=")[0], tail.split("&")[-1]}:
            assert piece not in said.stderr + said.stdout, said.stderr
    # an '@' in an option's value is no password
    fine = await cli(f"mongodb://{host}/{db.name}?appName=me@example", "workers", "list")
    assert fine.returncode == 0, fine.stderr


async def test_a_password_with_an_at_sign_before_its_question_mark_is_not_printed(
    db: Any, mongo_url: str
) -> None:
    host = mongo_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    for secret in ("p@ss?TopSecretTail", "p@ss?TopSecret=Tail", "p@ss?tls=TopSecretTail"):
        url = f"mongodb://app:{secret}@{host}/{db.name}"
        said = await cli(url, "workers", "list")
        assert said.returncode == 2, (said.returncode, said.stderr)
        assert "TopSecret" not in said.stderr + said.stdout, said.stderr


async def test_a_url_without_credentials_is_not_said_to_have_a_bad_password(
    db: Any, mongo_url: str
) -> None:
    """An '@' in an option's value is no password: the typo after it is named."""
    host = mongo_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    url = f"mongodb://{host}/{db.name}?appName=me@example&authSorce=admin"
    said = await cli(url, "workers", "list")
    assert said.returncode == 2, (said.returncode, said.stderr)
    assert "authSorce" in said.stderr and "password" not in said.stderr, said.stderr


async def test_retry_by_status_alone_does_not_retry_every_name(db: Any, mongo_url: str) -> None:
    """operations.md: `jobs retry ID... | --name N --status errored` ("retries every errored job
    of a name"); an empty --name is refused because "it would act on every name". Leaving
    --name out did exactly that."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(
        db,
        jobs={
            "a": JobDef(handler=fails, max_attempts=1),
            "b": JobDef(handler=fails, max_attempts=1),
        },
    )
    ended = [await processor.run_job(n) for n in ("a", "b")]
    assert [j.status for j in ended] == ["errored", "errored"]
    retry = await cli(url, "jobs", "retry", "--status", "errored")
    statuses = [(await processor.get_job(j.id)).status for j in ended]
    assert (retry.returncode, statuses) == (2, ["errored", "errored"]), retry.stdout
    assert "--name N --status errored" in retry.stderr


async def test_webhooks_list_hides_a_token_path_segment_that_holds_a_colon(
    db: Any, mongo_url: str
) -> None:
    """operations.md: path segments that look like tokens are shown as `…`. A Telegram bot
    URL's `bot<id>:<token>` was printed whole."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"tick": JobDef(handler=tick)})
    token = "123456789:AAHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0"
    await processor.webhooks.add(
        url=f"https://api.telegram.org/bot{token}/sendMessage", events=["shipped"]
    )
    listing = await cli(url, "webhooks", "list")
    as_json = await cli(url, "webhooks", "list", "--json")
    assert listing.returncode == as_json.returncode == 0, (listing.stderr, as_json.stderr)
    assert "AAHfiqksKZ8WmR2zSjiQ7" not in listing.stdout, listing.stdout
    assert "AAHfiqksKZ8WmR2zSjiQ7" not in as_json.stdout, as_json.stdout
    assert "api.telegram.org/…/sendMessage" in listing.stdout


async def test_a_replica_set_name_the_server_does_not_have_is_said(db: Any, mongo_url: str) -> None:
    """operations.md, exit 3: "cannot reach MongoDB at host:port ...; the reason is the
    driver's, said plainly". A wrong ?replicaSet= got "at the configured address ... (no
    answer)"."""
    url = url_with_db(mongo_url, db.name)
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    url = url + ("&" if "?" in url else "?") + "replicaSet=no-such-set"
    said = await cli(url, "status", "--timeout", "1")
    assert said.returncode == 3, said.stderr
    assert hostport in said.stderr and "no answer" not in said.stderr, said.stderr
    assert "not a member of replica set 'no-such-set'" in said.stderr


async def test_a_database_name_the_server_refuses_is_bad_input(mongo_url: str) -> None:
    """A MONGODB_URL naming a database MongoDB refuses (too long) exited 3, "cannot reach
    MongoDB ... (--timeout sets the wait)": the server answered, and the URL is what to fix."""
    name = "jobs_of_the_billing_service_in_the_europe_west_region_production_blue"
    said = await cli(url_with_db(mongo_url, name), "status", "--timeout", "5")
    assert said.returncode == 2, (said.returncode, said.stderr)
    assert f"database name {name!r}" in said.stderr and "MONGODB_URL" in said.stderr
    assert "cannot reach" not in said.stderr and "Traceback" not in said.stderr, said.stderr


async def test_jobs_new_with_an_empty_at_or_payload_is_refused(db: Any, mongo_url: str) -> None:
    """`--at ""` (a script's unset variable) created a job due now; `--payload ""` one of {}."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"tick": JobDef(handler=tick)})
    async with processor:  # a live worker registers the name
        at = await cli(url, "jobs", "new", "tick", "--at", "")
        payload = await cli(url, "jobs", "new", "tick", "--payload", " ")
    made = await db["job_processor_jobs"].count_documents({"name": "tick"})
    assert (at.returncode, payload.returncode, made) == (2, 2, 0), (at.stdout, payload.stdout)
    assert "argument --at: is empty" in at.stderr
    assert "argument --payload: is empty" in payload.stderr


async def test_a_global_option_given_twice_before_the_subcommand_is_refused(
    db: Any, mongo_url: str
) -> None:
    """Exit 2 for "an option of one value given twice": `--actor alice --actor bob` before the
    subcommand was accepted, and the audit log recorded bob."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"tick": JobDef(handler=tick)})
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    job = await processor.schedule_job("tick", {}, scheduled_for=later)
    said = await cli(url, "--actor", "alice", "--actor", "bob", "jobs", "run-now", job.id)
    audit = await db["job_processor_audit"].find_one({"action": "jobs_run_now"})
    assert said.returncode == 2 and audit is None, (said.returncode, audit, said.stderr)
    assert "--actor was given 2 times" in said.stderr
    once = await cli(url, "--actor", "alice", "jobs", "run-now", job.id, "--actor", "bob")
    assert once.returncode == 0, once.stderr  # before and after: the later one wins


def test_a_repeated_global_option_whose_value_is_a_subcommand_name() -> None:
    """The subcommand was found as the first word equal to its name: a global option's value
    equal to it (`--actor status`, `--prefix jobs`) moved the split."""
    import pytest

    from job_processor.cli.parser import build_parser, parse

    with pytest.raises(SystemExit) as twice:
        parse(build_parser(), ["--actor", "status", "--actor", "bob", "status"])
    assert twice.value.code == 2
    with pytest.raises(SystemExit) as twice_prefix:
        parse(build_parser(), ["--prefix", "jobs", "--prefix", "other_", "jobs", "list"])
    assert twice_prefix.value.code == 2
    argv = ["--actor", "status", "--timeout", "5", "status", "--timeout", "9"]
    assert parse(build_parser(), argv).timeout == 9.0  # before and after: the later one wins


async def test_health_of_a_database_name_mongodb_refuses_exits_1(mongo_url: str) -> None:
    """operations.md: `health` exits 0 or 1 (Docker reserves exit 2), a malformed MONGODB_URL
    included; a database name MongoDB refuses (64 characters or more) exited 2 with
    `error: ...` and no `unhealthy:` line (nor JSON with --json)."""
    url = url_with_db(mongo_url, "x" * 70)
    said = await cli(url, "health")
    assert said.returncode == 1, (said.returncode, said.stdout, said.stderr)
    assert said.stdout.startswith("unhealthy: "), said.stdout
    assert "refuses the database name" in said.stdout, said.stdout
    as_json = await cli(url, "health", "--json")
    assert as_json.returncode == 1, (as_json.stdout, as_json.stderr)
    assert '"ok": false' in as_json.stdout, as_json.stdout
