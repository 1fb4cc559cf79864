"""Bad input to the `job-processor` CLI is said naming the option and the fix, exit 2, with no
traceback (an outside review's findings, each failing before its fix). Every command is a
process of its own (tests/forked_cli.py) against the test server, from MONGODB_URL alone."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any

import pytest

from job_processor import AbortSignal, InvalidDefinitionError, Job, JobDef, init_job_processor
from job_processor.cli.parser import iso_time
from job_processor.core.settings import check_prefix
from job_processor.storage.local_server import free_port
from tests.conftest import url_with_db
from tests.forked_cli import Run, run_cli
from tests.helpers import FAST

ROOT = Path(__file__).resolve().parents[2]


async def cli(url: str, *args: str, cwd: Path = ROOT) -> Run:
    return await run_cli(*args, env={"MONGODB_URL": url}, cwd=cwd)


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


# 1. The documented "--timeout, accepted before or after the subcommand" is only checked after it.
async def test_timeout_before_the_subcommand_is_checked_as_after_it(mongo_url: str) -> None:
    for value in ("nan", "0", "-1"):
        after = await cli(mongo_url, "jobs", "list", "--timeout", value)
        assert after.returncode == 2 and "argument --timeout" in after.stderr  # fine
        before = await cli(mongo_url, "--timeout", value, "jobs", "list")
        assert "Traceback" not in before.stderr, (value, before.stderr)
        assert before.returncode == 2, (value, before.returncode, before.stderr)
        assert "--timeout" in before.stderr, (value, before.stderr)
        assert "MONGODB_URL is not a MongoDB URL" not in before.stderr, before.stderr


# 1b. A positive --timeout below a millisecond passes `seconds()` but is 0 ms for the driver:
# a live server is then said to be "not MongoDB" (and, outside the forked test runner, an
# asyncio "Task exception was never retrieved" traceback follows).
async def test_a_sub_millisecond_timeout_gives_no_traceback(mongo_url: str) -> None:
    tiny = await cli(mongo_url, "jobs", "list", "--timeout", "0.0001")
    assert "Traceback" not in tiny.stderr, tiny.stderr
    # a live nx-27017 is not "something that does not answer as MongoDB does"
    assert "does not answer as MongoDB does" not in tiny.stderr, tiny.stderr
    assert tiny.returncode in (0, 2), (tiny.returncode, tiny.stderr)


# 2. `crons trigger` in a database with no cron suggests the placeholder word "none".
async def test_an_unknown_cron_with_no_crons_is_not_a_did_you_mean_none(scratch_url: str) -> None:
    said = await cli(scratch_url, "crons", "trigger", "nope")
    assert said.returncode == 2
    assert "did you mean 'none'" not in said.stderr, said.stderr


# 3. `health --max-age` takes any float: nan makes a dead worker healthy, -1 a live one unhealthy.
async def test_health_refuses_a_max_age_that_is_not_a_positive_number(
    db: Any, mongo_url: str
) -> None:
    url = url_with_db(mongo_url, db.name)
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    await db["job_processor_workers"].insert_one(
        {
            "_id": "w-stale",
            "hostname": socket.gethostname(),
            "pid": 1,
            "last_seen": stale,
            "worker_timeout": 30.0,
        }
    )
    plain = await cli(url, "health")
    assert plain.returncode == 1 and "last heartbeat" in plain.stdout, plain.stdout  # right
    nan = await cli(url, "health", "--max-age", "nan")
    assert nan.returncode != 0, f"a day-old heartbeat reported healthy: {nan.stdout!r}"
    negative = await cli(url, "health", "--max-age", "-1")
    assert "--max-age" in negative.stdout + negative.stderr, negative.stdout


# 4. `run` with a module path that importlib refuses (empty, relative, a file path) is a traceback.
async def test_run_with_an_empty_or_relative_module_is_one_line(mongo_url: str) -> None:
    for target in (":make", ".app:make", "../app.py:make"):
        ran = await cli(mongo_url, "run", target)
        assert "Traceback" not in ran.stderr, (target, ran.stderr[-400:])
        assert ran.returncode == 2, (target, ran.returncode)


# 5. A factory whose parameter is keyword-only passes the signature check, then crashes.
async def test_run_with_a_keyword_only_factory_says_what_run_expects(
    mongo_url: str, tmp_path: Path
) -> None:
    (tmp_path / "kwapp.py").write_text("async def make(*, ctx):\n    return None\n")
    ran = await cli(mongo_url, "run", "kwapp:make", cwd=tmp_path)
    assert "Traceback" not in ran.stderr, ran.stderr[-400:]
    assert ran.returncode == 2, (ran.returncode, ran.stderr)


# 6. `events list --limit` has no upper bound: past 64 bits the driver's OverflowError escapes.
async def test_events_list_with_a_huge_limit_gives_no_traceback(scratch_url: str) -> None:
    huge = await cli(scratch_url, "events", "list", "--limit", str(2**63))
    assert "Traceback" not in huge.stderr, huge.stderr[-300:]
    assert huge.returncode == 2 and "limit" in huge.stderr, (huge.returncode, huge.stderr)


# 7. A --prefix MongoDB cannot use is reported as "MongoDB unreachable" (exit 3).
async def test_a_prefix_mongodb_refuses_is_bad_input_naming_prefix(scratch_url: str) -> None:
    bad = await cli(scratch_url, "jobs", "list", "--prefix", "a$b")
    assert bad.returncode == 2, (bad.returncode, bad.stderr)
    assert "--prefix" in bad.stderr, bad.stderr


# 8. `server --data-dir` that cannot be a folder (a file) is a traceback.
async def test_server_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "not-a-folder"
    afile.write_text("x")
    ran = await run_cli("server", "--data-dir", str(afile), "--port", str(free_port()))
    assert "Traceback" not in ran.stderr, ran.stderr[-400:]
    assert ran.returncode == 2, (ran.returncode, ran.stderr[-200:])
    assert "--data-dir" in ran.stdout + ran.stderr


# 9. `--log-level` takes any word: a typo silently logs at info.
async def test_an_unknown_log_level_is_refused(mongo_url: str) -> None:
    ran = await cli(mongo_url, "workers", "list", "--log-level", "verbose")
    assert ran.returncode == 2, (ran.returncode, ran.stdout)
    assert "--log-level" in ran.stderr


# 10. `names forget` of a name that is not registered tells the user to register it.
async def test_forgetting_an_unknown_name_does_not_say_add_it(scratch_url: str) -> None:
    said = await cli(scratch_url, "names", "forget", "old-job")
    assert said.returncode == 2
    assert "add it to init_job_processor" not in said.stderr, said.stderr


# 11. An id given twice is acted on once, then reported as "nothing done" too.
async def test_an_id_given_twice_is_not_both_done_and_not_done(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"later": JobDef(handler=tick)}, **FAST)
    job = await processor.schedule_job("later", {}, delay=3600)
    killed = await cli(url, "jobs", "kill", job.id, job.id)
    assert killed.returncode == 0
    assert f"jobs killed: 1 ({job.id})" in killed.stdout
    assert "nothing done" not in killed.stderr, killed.stderr


# 12. An unreachable mongodb+srv URL is said "at HOST:None".
async def test_an_srv_url_is_not_named_host_none() -> None:
    said = await cli("mongodb+srv://nonexistent.invalid/x", "jobs", "list", "--timeout", "1")
    assert said.returncode == 3
    assert ":None" not in said.stderr, said.stderr


# 13. `dashboard --root-path` without its leading "/" serves pages whose links are broken.
async def test_dashboard_refuses_a_root_path_without_its_leading_slash(scratch_url: str) -> None:
    """`--root-path jobs` served pages linking to "jobs/static/dashboard.css" (relative: 405)
    and printed http://127.0.0.1:8080jobs/."""
    said = await cli(scratch_url, "dashboard", "--port", str(free_port()), "--root-path", "jobs")
    assert said.returncode == 2 and "--root-path" in said.stderr, said.stderr


# 14. A misspelt MONGODB_URL option is a Python UserWarning with the driver's source line.
async def test_a_misspelt_url_option_is_said_naming_it(mongo_url: str) -> None:
    base, _, _ = mongo_url.partition("?")
    url = f"{url_with_db(base, 'job_processor')}?authSorce=admin"
    said = await cli(url, "workers", "list")
    assert "UserWarning" not in said.stderr and "uri_parser" not in said.stderr, said.stderr
    assert "authSorce" in said.stderr, said.stderr


@pytest.mark.parametrize("prefix", ["", "app.v2_"])
async def test_a_prefix_init_job_processor_refuses_is_bad_input_naming_prefix(
    scratch_url: str, prefix: str
) -> None:
    # no deployment can have this prefix: init_job_processor refuses it
    with pytest.raises(InvalidDefinitionError):
        check_prefix(prefix)
    # both are accepted today (exit 0, "holds no job-processor data"): "" reads and writes
    # the database's own `jobs`, `workers`, `audit`... collections
    ran = await cli(scratch_url, "jobs", "list", "--prefix", prefix)
    assert ran.returncode == 2, (ran.returncode, ran.stdout[-200:], ran.stderr[-300:])
    assert "--prefix" in ran.stderr, ran.stderr[-300:]


async def test_an_empty_log_level_variable_is_unset_not_bad_input(scratch_url: str) -> None:
    """`LOG_LEVEL=` (set but empty: docker compose's `- LOG_LEVEL` or `${LOG_LEVEL:-}` when
    the host has none) was read as "info" before 82608bf; now every command, operations ones
    included (which "log only warnings unless --log-level is given", operations.md), exits 2."""
    ran = await run_cli("jobs", "list", env={"MONGODB_URL": scratch_url, "LOG_LEVEL": ""})
    assert ran.returncode == 0, (ran.returncode, ran.stderr[-300:])


@pytest.mark.parametrize("value", ["jsonl", "text", "jsn"])
async def test_an_unknown_log_format_variable_is_refused_naming_it(
    scratch_url: str, value: str
) -> None:
    """`JOB_PROCESSOR_LOG_FORMAT=json` gives JSON lines; any other value (a typo, `jsonl`) gave
    the console renderer without a word, which a log pipeline expecting JSON then drops: it is
    bad input (2) naming the variable, as a bad LOG_LEVEL is. `JSON`, `console` and empty are
    accepted."""
    env = {"MONGODB_URL": scratch_url, "JOB_PROCESSOR_LOG_FORMAT": value}
    ran = await run_cli("workers", "list", "--log-level", "info", env=env)
    assert ran.returncode == 2, (ran.returncode, ran.stdout[-200:], ran.stderr[-300:])
    assert f"JOB_PROCESSOR_LOG_FORMAT={value!r}: give json" in ran.stderr, ran.stderr[-300:]
    for good in ("JSON", "console", ""):
        env["JOB_PROCESSOR_LOG_FORMAT"] = good
        ran = await run_cli("workers", "list", env=env)
        assert ran.returncode == 0, (good, ran.stderr[-300:])


async def test_run_refuses_tags_that_name_no_tag(mongo_url: str, tmp_path: Path) -> None:
    """`--tags ""` (a compose file's `--tags "$TAGS"`, its variable unset) read as no tags at
    all: the worker ran every tag's jobs. Refused, as init_job_processor refuses worker_tags=[]
    (an empty JOB_PROCESSOR_WORKER_TAGS stays unset; one of commas only is refused)."""
    (tmp_path / "tagapp.py").write_text(
        "import pathlib\n"
        "async def make(ctx):\n"
        "    pathlib.Path('called').write_text(repr(ctx.worker_tags))\n"
        "    return None\n"
    )
    for given in ("--tags=", "--tags=,", "--tags= , "):
        ran = await cli(mongo_url, "run", "tagapp:make", given, cwd=tmp_path)
        assert not (tmp_path / "called").exists(), given
        assert ran.returncode == 2 and "--tags names no tag" in ran.stderr, (given, ran.stderr)
    env = {"MONGODB_URL": mongo_url, "JOB_PROCESSOR_WORKER_TAGS": " , "}
    ran = await run_cli("run", "tagapp:make", env=env, cwd=tmp_path)
    assert ran.returncode == 2 and "JOB_PROCESSOR_WORKER_TAGS names no tag" in ran.stderr
    env["JOB_PROCESSOR_WORKER_TAGS"] = ""  # unset: the factory is called (it returns None)
    ran = await run_cli("run", "tagapp:make", env=env, cwd=tmp_path)
    assert (tmp_path / "called").read_text() == "None", ran.stderr


async def test_run_names_a_misspelt_variable(mongo_url: str, tmp_path: Path) -> None:
    """JOB_PROCESSOR_WORKER_TAG (no S) gave an untagged worker, LOG_FORMAT=json console lines,
    without a word: each is named on stderr, with the variable meant."""
    (tmp_path / "envapp.py").write_text("async def make(ctx):\n    return None\n")
    for variable, meant in (
        ("JOB_PROCESSOR_WORKER_TAG", "JOB_PROCESSOR_WORKER_TAGS"),
        ("LOG_FORMAT", "JOB_PROCESSOR_LOG_FORMAT"),
    ):
        value = "json" if "FORMAT" in variable else "main"
        env = {"MONGODB_URL": mongo_url, variable: value}
        ran = await run_cli("run", "envapp:make", env=env, cwd=tmp_path)
        warned = [line for line in ran.stderr.splitlines() if line.startswith("warning:")]
        assert len(warned) == 1 and variable in warned[0] and meant in warned[0], ran.stderr


async def test_run_says_metrics_host_without_metrics_port_serves_nothing(
    mongo_url: str, tmp_path: Path
) -> None:
    """`run app:make --metrics-host 0.0.0.0` served no metrics and said nothing."""
    (tmp_path / "hostapp.py").write_text("async def make(ctx):\n    return None\n")
    ran = await cli(mongo_url, "run", "hostapp:make", "--metrics-host", "0.0.0.0", cwd=tmp_path)
    assert ran.returncode == 2 and "needs --metrics-port" in ran.stderr, ran.stderr


async def test_health_names_a_misspelt_variable_as_every_command_does(scratch_url: str) -> None:
    """operations.md: "Every command warns on stderr of a JOB_PROCESSOR_... variable it does not
    know ... and of a LOG_FORMAT set without JOB_PROCESSOR_LOG_FORMAT": `health` (the compose
    file's healthcheck) said nothing; its exit code stays what it was (1 here: no worker)."""
    for variable, meant in (
        ("JOB_PROCESSOR_WORKER_TAG", "JOB_PROCESSOR_WORKER_TAGS"),
        ("LOG_FORMAT", "JOB_PROCESSOR_LOG_FORMAT"),
    ):
        env = {"MONGODB_URL": scratch_url, variable: "json" if "FORMAT" in variable else "main"}
        ran = await run_cli("health", env=env)
        assert ran.returncode == 1, ran.stderr
        warned = [line for line in ran.stderr.splitlines() if line.startswith("warning:")]
        assert len(warned) == 1 and variable in warned[0] and meant in warned[0], ran.stderr


@pytest.mark.parametrize(
    "text", ["2030-01-31T09:00:00z", "2030-01-31t09:00:00z", "2030-01-31 09:00z", "2030-01-31T09Z"]
)
def test_a_utc_time_with_a_lower_case_z_is_a_date(text: str) -> None:
    """--since/--until/--at take ISO 8601 (RFC 3339: "T" and "Z" may be lower case). A lower
    case "t" was read, a lower case "z" refused ("is not a date: use ISO 8601"), though it
    says UTC as "Z" does."""
    assert iso_time(text) == dt.datetime(2030, 1, 31, 9, tzinfo=dt.UTC)


async def test_a_payload_integer_of_thousands_of_digits_names_its_field(
    db: Any, mongo_url: str
) -> None:
    """`jobs new NAME --payload '{"n": <5000 digits>}'` gave Python's own ValueError ("Exceeds
    the limit (4300 digits) for integer string conversion") as a traceback: now a usage error
    naming the field and MongoDB's 64-bit limit, exit 2, nothing written."""
    url = url_with_db(mongo_url, db.name)
    async with await init_job_processor(db, jobs={"fine": JobDef(handler=tick)}, **FAST):
        pass  # registered its name
    digits = "7" * 5000
    for payload, field in (
        (f'{{"n": {digits}}}', "'n'"),
        (f'{{"a": {{"n": [1, -{digits}]}}}}', "'a.n[1]'"),
    ):
        ran = await cli(url, "jobs", "new", "fine", "--payload", payload)
        assert ran.returncode == 2, ran.stderr
        assert "Traceback" not in ran.stderr and "sys.set_int_max_str_digits" not in ran.stderr
        assert ran.stderr.startswith(
            f"error: job 'fine': payload field {field} is an integer of 5000 digits: "
            "MongoDB's integers have 64 bits (19 digits at most): store it as a string"
        ), ran.stderr
    assert await db["job_processor_jobs"].count_documents({}) == 0
