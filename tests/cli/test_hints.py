"""The commands the CLI's messages suggest run as printed, for a name that starts with '-':
each hint is taken from the output as a user would copy it and run through the CLI's main
(tests/forked_cli.py). `job-processor names resume -x` was a usage error (argparse takes
`-x` for an option): a hint now puts such a name after `--`, or joins it to its option
(`--name=-x`)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from job_processor import AbortSignal, Job, JobDef, Subscriber, init_job_processor
from job_processor.core.commands import command, option
from tests.conftest import url_with_db
from tests.forked_cli import Run, run_cli
from tests.helpers import FAST

#: A printed command: up to the quote, bracket, comma or semicolon that ends it in a message.
HINT = re.compile(r"job-processor ((?:[^`),;\n])+)")


async def cli(url: str, *args: str) -> Run:
    return await run_cli(*args, env={"MONGODB_URL": url})


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


def hints(text: str, name: str) -> list[list[str]]:
    """The commands `text` suggests for `name`, as argv (the shell's words)."""
    found = [shlex.split(h.strip()) for h in HINT.findall(text)]
    return [argv for argv in found if name in argv or any(a.endswith(f"={name}") for a in argv)]


async def run_hint(url: str, text: str, name: str) -> list[Run]:
    """Run each command `text` suggests for `name`; none may be a usage error."""
    argvs = hints(text, name)
    assert argvs, f"no hint for {name!r} in: {text}"
    runs = []
    for argv in argvs:
        ran = await cli(url, *argv)
        assert ran.returncode != 2, (argv, ran.stderr)
        assert "usage:" not in ran.stderr, (argv, ran.stderr)
        runs.append(ran)
    return runs


def test_a_hint_keeps_a_name_that_starts_with_a_dash_an_argument() -> None:
    assert command("names resume", "mail") == "job-processor names resume mail"
    assert command("names resume", "-x") == "job-processor names resume -- -x"
    assert command("names forget", "a b") == "job-processor names forget 'a b'"
    assert command("names forget", "-a b") == "job-processor names forget -- '-a b'"
    assert option("--name", "mail") == "--name mail"
    assert option("--name", "-x") == "--name=-x"
    assert option("--name", "-x y") == "--name='-x y'"


async def test_each_hint_for_a_dash_name_runs_as_printed(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    cron = {"cron_string": "0 2 * * *", "handler": tick}
    gone = await init_job_processor(db, jobs={"-x": JobDef(handler=tick)}, crons={"-c": cron})
    async with gone:
        pass  # registered its names, then stopped: no live worker serves them
    # a cron given to `jobs new`, a job to `crons trigger`: each names the command to use
    not_a_job = await cli(url, "jobs", "new", "--", "-c")
    assert not_a_job.returncode == 2, not_a_job.stderr
    (triggered,) = await run_hint(url, not_a_job.stderr, "-c")
    assert triggered.returncode == 0 and "cron triggered" in triggered.stdout, triggered.stdout
    not_a_cron = await cli(url, "crons", "trigger", "--", "-x")
    assert not_a_cron.returncode == 2, not_a_cron.stderr
    (made,) = await run_hint(url, not_a_cron.stderr, "-x")
    assert made.returncode == 0 and "created job -x" in made.stdout, made.stdout
    # a job queued for a paused name: "no worker runs it until `job-processor names resume`"
    paused = await cli(url, "names", "pause", "--", "-x")
    assert paused.returncode == 0, paused.stderr
    queued = await cli(url, "jobs", "new", "--", "-x")
    assert queued.returncode == 0, queued.stderr
    status = await cli(url, "status")  # its paused name with due jobs: resume it
    assert "'-x' is paused" in status.stdout, status.stdout
    paused_line = next(line for line in status.stdout.splitlines() if "'-x' is paused" in line)
    (resumed,) = await run_hint(url, queued.stdout, "-x")
    assert resumed.returncode == 0 and "name resumed: 1" in resumed.stdout, resumed.stdout
    await cli(url, "names", "pause", "--", "-x")
    (again,) = await run_hint(url, paused_line, "-x")
    assert again.returncode == 0 and "name resumed: 1" in again.stdout, again.stdout
    # forget refused while jobs of it are active: it names the listing of them
    refused = await cli(url, "names", "forget", "--", "-x")
    assert refused.returncode == 1, refused.stderr
    (listing,) = await run_hint(url, refused.stdout + refused.stderr, "-x")
    made_id = made.stdout.split()[3]  # "created job -x ID (pending, due now)"
    assert listing.returncode == 0 and made_id in listing.stdout, listing.stdout
    refused_cron = await cli(url, "names", "forget", "--", "-c")  # a cron still scheduled
    assert refused_cron.returncode == 1, refused_cron.stderr
    (removed,) = await run_hint(url, refused_cron.stdout + refused_cron.stderr, "-c")
    assert removed.returncode == 0 and "crons removed: 1 (-c)" in removed.stdout, removed.stdout
    # no live worker can run them: status names `names forget` (after `crons remove`)
    await db["job_processor_jobs"].delete_many({})
    await db["job_processor_crons"].insert_one({"_id": "-c", "cron_string": "0 2 * * *"})
    status = await cli(url, "status")
    warnings = [line for line in status.stdout.splitlines() if "no live worker" in line]
    cron_line = next(line for line in warnings if "cron '-c'" in line)
    assert len(hints(cron_line, "-c")) == 2, cron_line  # crons remove, then names forget
    cron_runs = await run_hint(url, cron_line, "-c")
    assert [r.returncode for r in cron_runs] == [0, 0], [r.stderr for r in cron_runs]
    job_line = next(line for line in warnings if "job '-x'" in line)
    (forgot,) = await run_hint(url, job_line, "-x")
    assert forgot.returncode == 0 and "name forgotten: 1 (-x)" in forgot.stdout, forgot.stdout


async def test_a_hint_in_a_subscriber_clash_runs_as_printed(db: Any, mongo_url: str) -> None:
    """The names-forget hint of a subscriber delivery name that a job's row holds."""
    url = url_with_db(mongo_url, db.name)
    clash = "-e:-s"
    async with await init_job_processor(db, jobs={clash: JobDef(handler=tick)}, **FAST):
        pass

    async def handler(event: Any, signal: AbortSignal) -> None:
        return None

    try:
        await init_job_processor(db, subscribers={"-e": [Subscriber("-s", handler=handler)]})
    except Exception as exc:
        text = str(exc)
    else:
        raise AssertionError("the clash was not refused")
    (forgot,) = await run_hint(url, text, clash)
    assert forgot.returncode == 0, forgot.stderr


async def test_a_dash_name_typed_as_an_option_is_told_how_to_give_it(
    db: Any, mongo_url: str
) -> None:
    """`names pause -x` said only "the following arguments are required: name", and `jobs list
    --name -x` "argument --name: expected one argument": the name was there, read as an
    option. The refusal now says so, with the command that takes it, which runs as printed."""
    url = url_with_db(mongo_url, db.name)
    async with await init_job_processor(db, jobs={"-x": JobDef(handler=tick)}, **FAST):
        pass
    typed = await cli(url, "names", "pause", "-x")
    assert typed.returncode == 2, typed.stderr
    assert "'-x' was read as an option" in typed.stderr, typed.stderr
    (paused,) = await run_hint(url, typed.stderr, "-x")
    assert paused.returncode == 0 and "name paused: 1 (-x)" in paused.stdout, paused.stdout
    listed = await cli(url, "jobs", "list", "--name", "-x", "--limit", "5")
    assert listed.returncode == 2, listed.stderr
    assert "'-x' was read as an option" in listed.stderr, listed.stderr
    (listing,) = await run_hint(url, listed.stderr, "-x")
    assert listing.returncode == 0, listing.stderr
    typed_new = await cli(url, "jobs", "new", "-x", "--payload", "{}")
    (made,) = await run_hint(url, typed_new.stderr, "-x")
    assert made.returncode == 0 and "created job -x" in made.stdout, made.stdout
