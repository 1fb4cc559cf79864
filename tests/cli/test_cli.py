"""The operations CLI, run for real (each command a process of its own, see
tests/forked_cli.py) against the test server, from MONGODB_URL alone: what an operator sees, and
the exit codes scripts rely on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from job_processor import (
    AbortSignal,
    Event,
    Job,
    JobDef,
    Subscriber,
    WebhookOptions,
    init_job_processor,
)
from job_processor.core.definitions import Backoff, Limit
from job_processor.events.webhooks import generate_secret
from job_processor.ops.admin import Admin
from tests.conftest import url_with_db
from tests.e2e.app import JOBS
from tests.forked_cli import Run, run_cli
from tests.helpers import FAST, wait_status
from tests.receiver import Reply, receiving

ROOT = Path(__file__).resolve().parents[2]


async def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """`job-processor ARGS` with MONGODB_URL=url, in a process of its own (tests/forked_cli.py)."""
    return await run_cli(*args, env={"MONGODB_URL": url} | (env or {}))


async def boom(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError("smtp down")


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


async def test_status_and_kill_need_no_app_factory(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs=JOBS)
    job = await processor.schedule_job("anywhere", {})
    status, summary = await asyncio.gather(cli(url, "status", "--json"), cli(url, "status"))
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert "worker_id" not in data  # the reading process is not a worker
    lines = summary.stdout.splitlines()  # for a person: one line per part, a table by name
    assert lines[0] == "workers: 0 alive"
    assert "queue: 1 due now (pending or paused), 1 pending, 0 paused jobs, 0 running" in lines
    assert any(line.split()[:3] == ["anywhere", "1", "0"] for line in lines), lines
    assert any("no live worker" in line for line in lines)
    assert data["queue"]["pending"] == 1
    assert data["jobs"]["anywhere"] == {"pending": 1}
    assert any("no live worker" in w for w in data["warnings"])
    old_form = await cli(url, "status", "tests.e2e.app:make")  # still accepted, not run
    assert old_form.returncode == 0 and "not needed any more" in old_form.stderr
    killed = await cli(url, "kill", job.id)
    assert killed.returncode == 0, killed.stderr
    assert "jobs killed: 1" in killed.stdout
    assert (await processor.get_job(job.id)).status == "killed"
    again = await cli(url, "kill", "tests.e2e.app:make", job.id)
    assert again.returncode == 1  # it had already ended: nothing done
    assert "already ended (killed)" in again.stdout


async def test_names_forget_takes_several_names(db: Any, mongo_url: str) -> None:
    """As status lists them: `names forget a b c`, each forgotten or said why not."""
    url = url_with_db(mongo_url, db.name)
    async with await init_job_processor(db, jobs=JOBS):
        pass  # registered its names, then stopped: no live worker serves them
    forgot = await cli(url, "names", "forget", "anywhere", "hooked", "no-such-name", "anywhere")
    assert forgot.returncode == 0, forgot.stderr
    assert "name forgotten: 2 (anywhere, hooked)" in forgot.stdout
    said = "no-such-name: nothing done: 'no-such-name' is not a registered job name"
    assert said in forgot.stderr
    names = {n["name"] for n in json.loads((await cli(url, "names", "list", "--json")).stdout)}
    assert "anywhere" not in names and "hooked" not in names and "limited" in names
    none = await cli(url, "names", "forget", "no-such-name", "nor-this")  # none known: each said
    assert none.returncode == 2, none.stderr
    assert "no-such-name: 'no-such-name' is not a registered" in none.stderr, none.stderr
    assert "nor-this: 'nor-this' is not a registered" in none.stderr, none.stderr


async def test_crons_remove_then_names_forget_clears_a_cron_no_worker_defines(
    db: Any, mongo_url: str
) -> None:
    """A cron registered by a worker that is gone (the quick start tried in the dev database):
    status warned for ever, `names forget` refused while it was scheduled, and only Python
    (prune_crons) could remove it. `crons remove` does, with its pending tasks; one a live
    worker serves is kept, and said why."""
    url = url_with_db(mongo_url, db.name)
    crons = {"nightly": {"cron_string": "0 2 * * *", "handler": tick}}
    gone = await init_job_processor(db, crons=crons, **FAST)
    async with gone:
        pass  # registered its names, then stopped: no live worker serves them
    await gone.trigger_cron("nightly")  # a pending task, removed with the cron
    refused = await cli(url, "names", "forget", "nightly")
    assert refused.returncode == 1 and "job-processor crons remove nightly" in refused.stdout
    live = await init_job_processor(db, crons={"served": crons["nightly"]}, **FAST)
    async with live:
        removed = await cli(url, "crons", "remove", "nightly", "served", "nope")
    assert removed.returncode == 0, removed.stderr
    assert "crons removed: 1 (nightly)" in removed.stdout, removed.stdout
    assert "served: nothing done: served by 1 live worker(s)" in removed.stderr
    assert "nope: nothing done: not a stored cron" in removed.stderr
    assert await db["job_processor_jobs"].count_documents({"name": "nightly"}) == 0
    forgot = await cli(url, "names", "forget", "nightly")
    assert forgot.returncode == 0 and "name forgotten: 1 (nightly)" in forgot.stdout
    status = await cli(url, "status")
    assert "'nightly'" not in status.stdout, status.stdout


async def test_killing_a_running_job_prints_one_line(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    started = asyncio.Event()

    async def slow(job: Job, signal: AbortSignal) -> None:
        started.set()
        await signal.wait()

    processor = await init_job_processor(db, jobs={"slow": JobDef(handler=slow)}, **FAST)
    async with processor:
        job = await processor.schedule_job("slow", {})
        await asyncio.wait_for(started.wait(), 10)
        killed = await cli(url, "jobs", "kill", job.id)
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.strip().splitlines() == [
            f"{job.id}: kill requested (its worker aborts it)"
        ]
        await wait_status(processor, job.id, "killed")  # type: ignore[arg-type]


async def test_operating_jobs_crons_workers_and_names(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    jobs: dict[str, Any] = {"mail": JobDef(handler=boom), "fine": JobDef(handler=tick)}
    crons: dict[str, Any] = {"nightly": {"cron_string": "0 2 * * *", "handler": tick}}
    processor = await init_job_processor(db, jobs=jobs, crons=crons, instance_id="runner-7", **FAST)
    async with processor:
        failed = await processor.schedule_job("mail", {"to": "a@b.c"})
        done = await processor.schedule_job("fine", {})
        await wait_status(processor, failed.id, "errored")  # type: ignore[arg-type]
        await wait_status(processor, done.id, "finished")  # type: ignore[arg-type]

        listing = await cli(url, "jobs", "list", "--status", "errored")
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[0].split() == [
            "ID", "NAME", "STATUS", "CREATED", "(UTC)", "DUE/ENDED", "(UTC)", "RUNS", "ERROR"
        ]  # fmt: skip
        assert failed.id in listing.stdout and "RuntimeError: smtp down" in listing.stdout
        assert done.id not in listing.stdout
        as_json = await cli(url, "jobs", "list", "--name", "fine", "--json", "--log-level", "error")
        assert [j["id"] for j in json.loads(as_json.stdout)["jobs"]] == [done.id]
        shown = await cli(url, "jobs", "show", failed.id)
        assert "status:             errored" in shown.stdout
        assert "RuntimeError: smtp down" in shown.stdout and "runs:" in shown.stdout
        assert "run 1 · 1 of 1 failure used" in shown.stdout  # runs, failures, attempts add up
        run_row = shown.stdout[shown.stdout.index("RUN ") :].splitlines()[1].split()
        assert run_row[:2] == ["1", "failed"]  # the run's own outcome
        shown_json = json.loads((await cli(url, "jobs", "show", failed.id, "--json")).stdout)
        assert shown_json["payload"] == {"to": "a@b.c"}

        nothing = await cli(url, "jobs", "retry", done.id)
        assert nothing.returncode == 1
        assert "finished: only errored or killed jobs can be retried" in nothing.stdout
        typo = await cli(url, "jobs", "retry", "--name", "maill", "--status", "errored")
        assert typo.returncode == 2  # not "nothing matched": the name is named, with the fix
        assert "unknown job 'maill' (did you mean 'mail'?)" in typo.stderr
        retried = await cli(url, "jobs", "retry", "--name", "mail", "--status", "errored")
        assert retried.returncode == 0, retried.stderr
        assert f"jobs retried: 1 ({failed.id})" in retried.stdout
        await wait_status(processor, failed.id, "errored")  # type: ignore[arg-type]

        later = await cli(url, "jobs", "new", "fine", "--payload", '{"n": 1}', "--at", "2099-01-01")
        assert later.returncode == 0, later.stderr
        new_id = (await Admin(db).list_jobs(status="pending")).jobs[0].id
        assert later.stdout.strip() == (
            f"created job fine {new_id} (pending, due 2099-01-01T00:00:00+00:00)"
        )
        keyed = await cli(url, "jobs", "new", "fine", "--key", "k1", "--at", "2099-01-01")
        assert keyed.returncode == 0, keyed.stderr
        again = await cli(url, "jobs", "new", "fine", "--key", "k1")
        assert again.returncode == 1, again.stderr  # nothing done: the key is held
        held = keyed.stdout.split()[3]
        assert again.stdout.strip() == (
            f"not created: job fine {held} (pending, due 2099-01-01T00:00:00+00:00) holds the "
            "key 'k1' while it is active"
        )
        assert "created job" not in again.stdout and again.stderr == ""
        run_now = await cli(url, "jobs", "run-now", new_id)
        assert run_now.returncode == 0, run_now.stderr
        await wait_status(processor, new_id, "finished")  # type: ignore[arg-type]
        bad_json = await cli(url, "jobs", "new", "fine", "--payload", "{n: 1}")
        assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
        deep = await cli(url, "jobs", "new", "fine", "--payload", '{"a":' * 3000 + "1" + "}" * 3000)
        assert deep.returncode == 2 and "Traceback" not in deep.stderr
        assert "error: job 'fine': payload is nested too deeply" in deep.stderr

        typo = await cli(url, "jobs", "purge", "--status", "finished", "--older-than", "7days")
        assert typo.returncode == 2 and "--older-than '7days' is not a duration" in typo.stderr
        purge = await cli(url, "jobs", "purge", "--status", "finished", "--older-than", "7d")
        assert purge.returncode == 1  # nothing that old
        refused = await cli(url, "jobs", "purge", "--status", "pending", "--older-than", "1d")
        assert refused.returncode == 2 and "only finished, errored" in refused.stderr

        cron_list = await cli(url, "crons", "list")
        assert cron_list.stdout.splitlines()[1].split()[:6] == [
            "nightly", "0", "2", "*", "*", "*"
        ]  # fmt: skip
        triggered = await cli(url, "crons", "trigger", "nightly")
        assert triggered.returncode == 0, triggered.stderr
        unknown = await cli(url, "crons", "trigger", "daily")
        assert unknown.returncode == 2 and "unknown cron 'daily'" in unknown.stderr

        workers = await cli(url, "workers", "list")
        assert "runner-7" in workers.stdout and "yes" in workers.stdout
        health = await cli(url, "health", "--instance-id", "runner-7")
        assert health.returncode == 0, health.stdout + health.stderr
        other = await cli(url, "health", env={"INSTANCE_ID": "runner-8"})
        assert other.returncode == 1 and "no worker registered" in other.stdout

        paused = await cli(url, "names", "pause", "fine")
        assert paused.returncode == 0 and "name paused: 1 (fine)" in paused.stdout
        assert "live workers stop claiming it at their next heartbeat" in paused.stdout
        assert (await cli(url, "names", "pause", "fine")).returncode == 1
        names = await cli(url, "names", "list", "--json")
        by_name = {n["name"]: n for n in json.loads(names.stdout)}
        assert by_name["fine"]["paused"] and by_name["fine"]["served_by"] == [processor.worker_id]
        assert (await cli(url, "names", "resume", "fine")).returncode == 0
        served = await cli(url, "names", "forget", "fine")  # a live worker would register it again
        assert served.returncode == 1
        assert "fine: nothing done: served or defined by 1 live worker" in served.stdout

    # an operations command never changes definitions (no init_job_processor, no pruning)
    admin = Admin(db)
    assert [c.name for c in await admin.list_crons()] == ["nightly"]
    actions = [e.action for e in await admin.audit_log(limit=100)]
    assert "jobs_retried" in actions and "name_paused" in actions


async def leaky(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError(
        f"login refused for password={job.payload['password']} card {job.payload['card']['number']}"
    )


async def echo(job: Job, signal: AbortSignal) -> dict[str, str]:
    return {"echo": f"{job.payload['password']} {job.payload['card']['number']}"}


async def test_secrets_are_never_printed_and_the_other_job_verbs(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    jobs: dict[str, Any] = {
        "pay": JobDef(handler=leaky, sensitive_fields=("card.number",)),
        "echo": JobDef(handler=echo, sensitive_fields=("card.number",)),
        "fine": JobDef(handler=tick, tag="main"),
    }
    processor = await init_job_processor(db, jobs=jobs, **FAST)
    payload = {"to": "a@b.c", "password": "hunter2-secret", "card": {"number": "4111222233334444"}}
    async with processor:
        failed = await processor.schedule_job("pay", payload)
        echoed = await processor.schedule_job("echo", payload)
        await wait_status(processor, failed.id, "errored")  # type: ignore[arg-type]
        await wait_status(processor, echoed.id, "finished")  # type: ignore[arg-type]
    printed = [
        await cli(url, "jobs", "show", failed.id),
        await cli(url, "jobs", "show", failed.id, "--json"),
        await cli(url, "jobs", "show", echoed.id),
        await cli(url, "jobs", "show", echoed.id, "--json"),
        await cli(url, "jobs", "list"),
        await cli(url, "jobs", "list", "--json"),
    ]
    for run in printed:
        assert run.returncode == 0, run.stderr
        assert "hunter2-secret" not in run.stdout + run.stderr  # a default sensitive name
        assert "4111222233334444" not in run.stdout + run.stderr  # the definition's field
    assert "login refused for password=" in printed[0].stdout  # the error is shown, not them

    copy = await cli(url, "jobs", "duplicate", failed.id, "--json")
    assert copy.returncode == 0, copy.stderr
    (new,) = json.loads(copy.stdout)["jobs"]
    assert new["status"] == "pending" and new["id"] != failed.id
    assert json.loads(copy.stdout)["id"] == new["id"]  # the new job's id, at the top
    stored = await processor.get_job(new["id"])
    assert stored.payload == payload  # the copy has the real values, never shown
    killed = await cli(url, "jobs", "kill", new["id"])
    assert killed.returncode == 0, killed.stderr
    assert (await processor.get_job(new["id"])).status == "killed"
    assert (await cli(url, "jobs", "kill", new["id"])).returncode == 1  # already ended
    deleted = await cli(url, "jobs", "delete", new["id"], failed.id, echoed.id)
    assert deleted.returncode == 0, deleted.stderr
    assert [j.id for j in await processor.list_jobs("pay")] == []
    gone = await cli(url, "jobs", "delete", failed.id)  # no such job any more
    assert gone.returncode == 2 and gone.stdout == f"{failed.id}: nothing done: not found\n"

    for listing in (("crons", "list"), ("workers", "list"), ("names", "list")):
        out = await cli(url, *listing, "--json", "--log-level=error")
        assert out.returncode == 0, out.stderr
        assert isinstance(json.loads(out.stdout), list)
    empty, typo, tag, tagged = await asyncio.gather(
        cli(url, "jobs", "list", "--status", "paused"),
        cli(url, "jobs", "list", "--name", "fien"),
        cli(url, "jobs", "list", "--tag", "mian"),
        cli(url, "jobs", "list", "--tag", "main"),  # a definition's tag, no job of it
    )
    assert empty.returncode == 0 and empty.stdout.splitlines()[-1] == "(none)"
    assert typo.returncode == 2  # a misspelt name is named, not an empty table
    assert "unknown job 'fien' (did you mean 'fine'?): check the name" in typo.stderr
    assert tag.returncode == 2  # so is a misspelt tag
    assert "unknown tag 'mian' (did you mean 'main'?)" in tag.stderr
    assert tagged.returncode == 0 and tagged.stdout.splitlines()[-1] == "(none)"


async def test_a_database_of_events_or_webhook_endpoints_only_holds_data(
    db: Any, mongo_url: str
) -> None:
    """An events-only program (it emits, or keeps webhook endpoints, and runs no worker nor
    job) writes only `events` and `webhooks`: the CLI warned that such a database 'holds no
    job-processor data', as if MONGODB_URL named the wrong one."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db)
    event = await processor.emit("shipped", {"n": 1})
    await processor.webhooks.add(url="https://example.com/hook", events=["shipped"])
    for name in await db.list_collection_names():
        if name not in ("job_processor_events", "job_processor_webhooks"):
            await db.drop_collection(name)
    await db.drop_collection("job_processor_webhooks")  # an event, and nothing else
    assert await db.list_collection_names() == ["job_processor_events"]
    listed = await cli(url, "events", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [event.id]
    assert "holds no job-processor data" not in listed.stderr, listed.stderr
    await db.drop_collection("job_processor_events")  # a webhook endpoint, and nothing else
    await processor.webhooks.add(url="https://example.com/hook", events=["shipped"])
    assert await db.list_collection_names() == ["job_processor_webhooks"]
    hooks = await cli(url, "webhooks", "list")
    assert hooks.returncode == 0, hooks.stderr
    assert "holds no job-processor data" not in hooks.stderr, hooks.stderr
    await db["job_processor_webhooks"].delete_many({})  # empty collections still do not count
    await db["job_processor_events"].insert_one({"x": 1})
    await db["job_processor_events"].delete_many({})
    empty = await cli(url, "webhooks", "list")
    assert "holds no job-processor data" in empty.stderr, empty.stderr


def _hang_up(listening: socket.socket, stop: threading.Event) -> None:
    """Accept and close every connection at once, until `stop`."""
    listening.settimeout(0.05)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            conn, _ = listening.accept()
            conn.close()


async def test_clear_errors(mongo_url: str, db: Any) -> None:
    unreachable = await cli("mongodb://127.0.0.1:1/x", "jobs", "list")  # refused: at once
    assert unreachable.returncode == 3
    assert unreachable.stderr.strip().startswith("error: cannot reach MongoDB at 127.0.0.1:1")
    assert "(connection refused: nothing listens on that port)" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1
    with_data = await init_job_processor(db, jobs={"fine": JobDef(handler=tick)})
    await with_data.schedule_job("fine", delay=3600)  # a database with data: a job
    typo = await cli(url_with_db(mongo_url, "job_procesor"), "jobs", "list")
    assert typo.returncode == 0 and typo.stdout.splitlines()[-1] == "(none)"
    assert typo.stderr.startswith(
        "warning: database 'job_procesor' holds no job-processor data (job_processor_*): "
        "check the database name in MONGODB_URL; databases that do: "
    )
    scheme = await cli("http://127.0.0.1:1/x", "jobs", "list")
    assert scheme.returncode == 2  # a typo in the URL, not an outage
    assert scheme.stderr.startswith("error: MONGODB_URL is not a MongoDB URL: Invalid URI scheme")
    assert "(e.g. mongodb://host:27017/dbname)" in scheme.stderr
    with socket.socket() as closes:  # a service that is not MongoDB: it hangs up at once
        closes.bind(("127.0.0.1", 0))
        closes.listen()
        port = closes.getsockname()[1]
        stop = threading.Event()
        hangs_up = threading.Thread(target=_hang_up, args=(closes, stop))
        hangs_up.start()
        try:
            not_mongodb = await cli(
                f"mongodb://127.0.0.1:{port}/x", "jobs", "list", "--timeout", "2"
            )
        finally:
            stop.set()
            hangs_up.join()
    assert not_mongodb.returncode == 3
    assert "what answers there is not MongoDB (an HTTP port?)" in not_mongodb.stderr
    began = time.monotonic()
    health = await cli("mongodb://127.0.0.1:1/x", "--timeout", "30", "health")
    assert health.returncode == 1 and "connection refused" in health.stdout
    assert time.monotonic() - began < 15, "a refused connection is said at once, not at 30 s"
    malformed = await cli("http://127.0.0.1:1/x", "health")  # Docker reserves exit 2
    assert malformed.returncode == 1
    assert malformed.stdout.startswith("unhealthy: MONGODB_URL is not a MongoDB URL")
    state = await cli(mongo_url, "jobs", "list", "--state", "errored")
    assert state.returncode == 2
    assert state.stderr.splitlines()[-1] == (
        "job-processor jobs list: error: unrecognized arguments: --state errored "
        "(did you mean --status?)"
    )
    later = await cli(mongo_url, "jobs", "new", "fine", "--delay", "10")  # was: --key?
    assert later.returncode == 2
    assert later.stderr.splitlines()[-1].endswith(
        "(to schedule it later, give the time: --at 2030-01-31T09:00Z (UTC))"
    )
    positional = await cli(mongo_url, "jobs", "new", "fine", '{"invoice": 42}')
    assert positional.returncode == 2
    assert positional.stderr.splitlines()[-1].endswith(
        """(the payload goes after --payload: --payload '{"invoice": 42}')"""
    )
    early = await cli(mongo_url, "--json", "workers", "list")
    assert early.returncode == 2
    assert early.stderr.splitlines()[-1].endswith(
        "unrecognized arguments: --json (--json goes after the subcommand: "
        "job-processor workers list ... --json)"
    )
    twice = await cli(mongo_url, "jobs", "new", "fine", "--key", "a", "--key=b")
    assert twice.returncode == 2
    assert twice.stderr.splitlines()[-1] == (
        "job-processor jobs new: error: --key was given 2 times: it takes one value (give it once)"
    )
    wrapper = await cli(mongo_url, "--timeout", "5", "workers", "list", "--timeout", "9")
    assert wrapper.returncode == 0, wrapper.stderr  # before and after the subcommand: the last
    dashes = await cli(mongo_url, "jobs", "new", "fine", "--", "--key")
    assert dashes.stderr.splitlines()[-1] == (
        "job-processor jobs new: error: unrecognized arguments: --key"  # no hint after --
    )
    cased = await cli(mongo_url, "jobs", "retry", "--name", "fine", "--status", "Killed")
    assert "invalid choice" not in cased.stderr  # read as killed: past argparse, to the name
    assert "unknown job 'fine'" in cased.stderr
    tomorrow = await cli(mongo_url, "jobs", "new", "fine", "--at", "tomorrow")
    assert tomorrow.returncode == 2
    assert tomorrow.stderr.splitlines()[-1] == (
        "job-processor jobs new: error: argument --at: 'tomorrow' is not a date: use ISO 8601, "
        "e.g. 2030-01-31T09:00:00Z or 2030-01-31 (UTC when no offset is given)"
    )
    early = await cli(mongo_url, "jobs", "list", "--since", "0001-01-01T00:00:00+23:59")
    assert early.returncode == 2 and "Traceback" not in early.stderr
    assert early.stderr.splitlines()[-1] == (
        "job-processor jobs list: error: argument --since: '0001-01-01T00:00:00+23:59' is out of "
        "range: in UTC it falls outside years 1 to 9999"
    )
    forever = await cli(
        mongo_url, "jobs", "purge", "--status", "finished", "--older-than", "9" * 14 + "d"
    )
    assert forever.returncode == 2 and "Traceback" not in forever.stderr
    assert "--older-than '99999999999999d' is too long: at most 36500d" in forever.stderr
    bad_id = await cli(mongo_url, "jobs", "show", "nope")
    assert bad_id.returncode == 2 and "not a job id" in bad_id.stderr
    usage = await cli(mongo_url, "jobs", "retry")
    assert usage.returncode == 2 and "give job ids" in usage.stderr
    missing = await cli("", "run", "tests.e2e.app:make")
    assert missing.returncode == 2  # bad input, as for every command
    assert "set MONGODB_URL" in missing.stderr
    bad = await cli(mongo_url, "run", "tests.e2e.app")
    assert bad.returncode == 2
    assert "must be MODULE:ATTR" in bad.stderr
    typo = await cli(mongo_url, "run", "tests.e2e.app:mak")
    assert typo.returncode == 2
    assert "has no attribute 'mak' (did you mean 'make'?)" in typo.stderr
    # run's factory decides how long to wait and which prefix: not silently ignored
    ignored = await cli(mongo_url, "run", "tests.e2e.app:make", "--timeout", "1")
    assert ignored.returncode == 2
    assert "--timeout applies to operations commands" in ignored.stderr
    abbreviated = await cli(mongo_url, "run", "tests.e2e.app:make", "--time", "1")
    assert abbreviated.returncode == 2 and "unrecognized arguments: --time" in abbreviated.stderr
    assert "connect_timeout" in ignored.stderr
    # an invalid definition built by the factory: the error, then the factory's line
    invalid = await cli(mongo_url, "run", "tests.cli.bad_app:make")
    assert invalid.returncode == 2
    said, where = invalid.stderr.strip().splitlines()
    assert said.startswith("error: CronDef(...): field 'cron_string': cron_string '*/5 * * *'")
    line = next(
        n
        for n, text in enumerate((ROOT / "tests/cli/bad_app.py").read_text().splitlines(), 1)
        if "CronDef(" in text
    )
    assert where == f"  at {ROOT / 'tests/cli/bad_app.py'}:{line} (make)"
    # a target that is not a factory (a dict of JobDefs): one line saying what run expects
    not_a_factory = await cli(mongo_url, "run", "tests.e2e.app:JOBS")
    assert not_a_factory.returncode == 2
    assert not_a_factory.stderr.strip().splitlines() == [
        "error: tests.e2e.app:JOBS is a dict, not a function: `run` expects MODULE:ATTR naming "
        "a function (async def make(ctx) or make()) that returns the JobProcessor from "
        "init_job_processor(...)"
    ]
    handler = await cli(mongo_url, "run", "tests.e2e.app:report")  # a handler, not the factory
    assert handler.returncode == 2
    assert handler.stderr.startswith(
        "error: tests.e2e.app:report takes (job, signal): it looks like a job handler, not the "
        "app factory;"
    )
    for factory, why in (
        ("forgot_return", "returned NoneType (a missing `return`?)"),
        ("forgot_await", "returned coroutine (a missing `await` before init_job_processor(...)?)"),
    ):
        forgot = await cli(url_with_db(mongo_url, db.name), "run", f"tests.cli.bad_app:{factory}")
        assert forgot.returncode == 2
        assert forgot.stderr.strip().splitlines()[-1] == (
            f"error: tests.cli.bad_app:{factory} {why}; it must return the JobProcessor from "
            "init_job_processor(...)"
        )
    elsewhere = await cli(mongo_url, "run", "no_such_app:make")
    assert elsewhere.returncode == 2
    assert "cannot import 'no_such_app': No module named 'no_such_app' (modules are found " in (
        elsewhere.stderr
    )
    assert "run from your project's root, or set PYTHONPATH)" in elsewhere.stderr


def test_each_command_shows_only_its_own_options() -> None:
    from job_processor.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb in ("run", "demo"):
        text = subcommands.choices[verb].format_help()
        assert "--timeout" not in text and "--prefix" not in text, verb  # refused there
    assert "--timeout" in subcommands.choices["status"].format_help()
    top = parser.format_help()  # only what every command takes; the rest under each command
    assert "--log-level" in top and "COMMAND --help" in top
    assert not any(o in top for o in ("--timeout", "--prefix", "--actor")), top
    for verb in ("status", "health"):  # they record nothing in the audit log
        assert "--actor" not in subcommands.choices[verb].format_help(), verb
        assert parser.parse_args([verb, "--actor", "ada"]).actor == "ada"  # scripts pass it
    assert "--actor" in subcommands.choices["kill"].format_help()
    before = parser.parse_args(["--prefix", "x_", "--actor", "ada", "kill", "abc"])
    assert (before.prefix, before.actor) == ("x_", "ada")  # still accepted before the command
    run = parser.parse_args(["run", "app:make", "--metrics-port", "9100"])
    assert run.metrics_host is None  # resolved to 127.0.0.1 (this machine: no auth) by cmd_run


async def test_a_window_that_cannot_hold_anything_is_refused() -> None:
    url = "mongodb://127.0.0.1:1/x"  # refused before any connection
    window = ["--since", "2030-01-02", "--until", "2030-01-01"]
    *swapped, empty = await asyncio.gather(
        cli(url, "jobs", "list", *window),
        cli(url, "events", "list", *window),
        cli(url, "events", "replay", "--name", "e", *window),
        cli(url, "jobs", "list", "--since", "2030-01-01", "--until", "2030-01-01"),
    )
    for refused in swapped:
        assert refused.returncode == 2
        assert refused.stderr == (
            "error: --since 2030-01-02T00:00:00+00:00 is not before --until "
            "2030-01-01T00:00:00+00:00: nothing can match; swap them\n"
        )
    assert empty.returncode == 2 and "--until is exclusive: give a later one" in empty.stderr


def test_an_unreachable_server_names_what_sets_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    from job_processor.cli.common import UNREACHABLE, handle_errors
    from job_processor.core.errors import DatabaseUnreachableError

    exc = DatabaseUnreachableError("cannot reach MongoDB at 127.0.0.1:1 within 1s; details")
    assert handle_errors(exc, "run") == UNREACHABLE
    assert "init_job_processor(connect_timeout=...)" in capsys.readouterr().err
    assert handle_errors(exc, "jobs") == UNREACHABLE
    assert "(--timeout sets the wait)" in capsys.readouterr().err


async def test_run_serves_metrics(db: Any, mongo_url: str) -> None:
    """On --metrics-port 0: the log line says the port the system chose."""
    import re
    import signal
    import urllib.request

    url = url_with_db(mongo_url, db.name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "job_processor",
        "run",
        "tests.e2e.app:make",
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": url, "INSTANCE_ID": "runner-1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    port = 0
    async with asyncio.timeout(30):
        while not port:
            line = (await proc.stderr.readline()).decode()
            assert line, "the worker exited before serving metrics"
            served = re.search(r"metrics_served .*port=(\d+)", line)
            port = int(served[1]) if served else 0
    drain = asyncio.create_task(proc.stderr.read())  # the rest of its log

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return bytes(r.read()).decode()

    try:
        deadline = asyncio.get_running_loop().time() + 30
        body = ""
        while 'job_processor_workers{state="alive"} 1.0' not in body:
            assert asyncio.get_running_loop().time() < deadline, body
            with contextlib.suppress(OSError):  # not listening yet
                body = await asyncio.to_thread(scrape)
            await asyncio.sleep(0.1)
        assert "job_processor_scrape_timeout 0.0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await drain


async def test_run_on_a_busy_metrics_port_fails_with_the_flag_named(
    db: Any, mongo_url: str
) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "job_processor", "run", "tests.e2e.app:make"],
            *["--metrics-port", str(port)],
            cwd=ROOT,
            env=os.environ | {"MONGODB_URL": url_with_db(mongo_url, db.name)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        taken.close()
    assert proc.returncode == 2, err
    said = re.search(
        rf"error: --metrics-port {port} on 127\.0\.0\.1: already in use: pick another port, "
        r"e\.g\. --metrics-port (\d+) \(free now\)\n$",
        err.decode(),
    )
    assert said is not None, err
    assert b"job_processor_initialized" not in err  # said before anything was registered


async def test_run_with_a_metrics_port_without_the_metrics_extra_says_so_before_anything(
    tmp_path: Any,
) -> None:
    """Said only once init_job_processor had run: with MongoDB unreachable, exit 3 after
    waiting for it (10 s) instead of naming the missing extra at once, exit 2."""
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    unreachable = "mongodb://127.0.0.1:9/x?serverSelectionTimeoutMS=60000"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "job_processor", "run", "tests.e2e.app:make"],
        *["--metrics-port", "0"],
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": unreachable, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    assert b"--metrics-port needs prometheus-client" in err, err
    assert b"cannot reach MongoDB" not in err


async def test_events_show_list_replay_and_webhooks_list(db: Any, mongo_url: str) -> None:
    async def send_email(event: Event, signal: AbortSignal) -> dict[str, str]:
        return {"sent": event.payload["shipment_id"]}

    async def update_crm(event: Event, signal: AbortSignal) -> None:
        raise RuntimeError("crm down")

    url = url_with_db(mongo_url, db.name)
    subscribers: dict[str, Any] = {
        "shipped": [
            Subscriber("send-email", handler=send_email),
            Subscriber("update-crm", handler=update_crm, max_attempts=1),
        ]
    }
    limited: dict[str, Any] = {
        "fine": JobDef(handler=tick, limit=Limit(key="mail-provider", concurrency=2))
    }
    with receiving() as receiver:
        processor = await init_job_processor(
            db,
            jobs=limited,
            subscribers=subscribers,
            webhook_secrets={"crm": generate_secret()},
            webhook_options=WebhookOptions(
                backoff=Backoff(kind="fixed", base_seconds=0.2, jitter=False)
            ),
            **FAST,
        )
        hook = await processor.webhooks.add(
            url=receiver.script("/hooks/crm", Reply(503, body=b"busy"), Reply(200)),
            events=["shipped"],
            secret_ref="crm",
        )
        token_path = "/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXX1"
        retired = await processor.webhooks.add(
            url=receiver.url(f"{token_path}?token=s3cr3t-query"), events=["*"], enabled=False
        )
        async with processor:
            await processor.run_job("fine", {})
            first = await processor.emit("shipped", {"shipment_id": "s1"}, key="s1")
            second = await processor.emit("shipped", {"shipment_id": "s2"})

            async def settled() -> bool:
                events = [await processor.get_event(e.id) for e in (first, second)]
                return all(
                    d.status in ("finished", "errored") for e in events for d in e.deliveries
                )

            deadline = asyncio.get_running_loop().time() + 15
            while not await settled():
                assert asyncio.get_running_loop().time() < deadline, "deliveries did not end"
                await asyncio.sleep(0.05)

            listing, as_json, shown, shown_json, hooks, hooks_json, status = await asyncio.gather(
                cli(url, "events", "list"),
                cli(url, "events", "list", "--name", "shipped", "--limit", "1", "--json"),
                cli(url, "events", "show", first.id),
                cli(url, "events", "show", first.id, "--json"),
                cli(url, "webhooks", "list"),
                cli(url, "webhooks", "list", "--json"),
                cli(url, "status", "--json"),
            )
            assert listing.returncode == 0, listing.stderr
            assert listing.stdout.splitlines()[0].split() == [
                "ID", "NAME", "EMITTED", "(UTC)", "KEY", "SUBSCRIBERS", "WEBHOOKS", "REPLAYS",
                "EMITTED", "BY",
            ]  # fmt: skip
            rows = listing.stdout.splitlines()[1:]
            assert [r.split()[0] for r in rows] == [second.id, first.id]  # newest first
            assert rows[1].split()[1:7] == [
                "shipped",
                *when_cells(first.emitted_at),
                "s1",
                "2",
                "1",
            ]
            assert [e["id"] for e in json.loads(as_json.stdout)] == [second.id]
            assert "more: add --cursor " in as_json.stderr  # the next page's cursor

            assert shown.returncode == 0, shown.stderr
            assert "name:               shipped" in shown.stdout
            assert '{"shipment_id": "s1"}' in shown.stdout
            lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line}
            assert lines["send-email"].split()[1:5] == ["subscriber", "async", "finished", "1/3"]
            assert lines["update-crm"].split()[3:5] == ["errored", "1/1"]
            assert "RuntimeError: crm down" in lines["update-crm"]
            assert f"webhook:{hook.id}" in lines
            assert f"webhook attempts of webhook:{hook.id}" in shown.stdout
            attempts = shown.stdout.split("webhook attempts of")[1].splitlines()[2:]
            assert [a.split()[2] for a in attempts] == ["503", "200"]
            assert "busy" in attempts[0]
            data = json.loads(shown_json.stdout)
            webhook = next(d for d in data["deliveries"] if d["kind"] == "webhook")
            assert [a["status_code"] for a in webhook["attempts"]] == [503, 200]

            assert hooks.returncode == 0, hooks.stderr
            by_id = {line.split()[0]: line for line in hooks.stdout.splitlines()[1:]}
            assert by_id[hook.id].split()[1:7] == [
                receiver.url("/hooks/crm"), "shipped", "standard", "crm", "yes", "0"
            ]  # fmt: skip
            assert by_id[retired.id].split()[1] == receiver.url("/services/T0001/B0001/…?…")
            assert "NO" in by_id[retired.id] and "added disabled" in by_id[retired.id]
            assert "s3cr3t-query" not in hooks.stdout + hooks_json.stdout
            assert "XXXXXXXXXXXXXXXXXXXXXXX1" not in hooks.stdout + hooks_json.stdout
            endpoints = {e["id"]: e for e in json.loads(hooks_json.stdout)}
            assert endpoints[retired.id]["enabled"] is False
            assert endpoints[hook.id]["header_names"] == []

            limits = json.loads(status.stdout)["limits"]
            assert [(x["key"], x["running"], x["concurrency"]) for x in limits] == [
                ("mail-provider", 0, 2)
            ]
            assert any(
                "is disabled: added disabled" in w for w in json.loads(status.stdout)["warnings"]
            )

            # replay one subscriber of one event (and refuse bad input), then every event of
            # the name in a window
            one, *errors = await asyncio.gather(
                cli(url, "events", "replay", first.id, "--subscriber", "send-email"),
                cli(url, "events", "replay"),
                cli(url, "events", "replay", first.id, "--subscriber", "nope"),
                cli(url, "events", "replay", "--name", "shipped"),
                cli(url, "events", "show", "nope"),
            )
            assert one.returncode == 0, one.stderr
            assert "replayed: 1 new deliveries of 1 event(s)" in one.stdout
            since = (first.emitted_at - dt.timedelta(seconds=1)).isoformat()
            window = await cli(
                url, "events", "replay", "--name", "shipped", "--since", since, "--json"
            )
            assert window.returncode == 0, window.stderr
            result = json.loads(window.stdout)
            replayed = sorted((d["event_id"], d["target"]) for d in result["detail"]["deliveries"])
            assert replayed == sorted(
                (e.id, t)
                for e in (first, second)
                for t in ("send-email", "update-crm", f"webhook:{hook.id}")
            )
            assert [e.returncode for e in errors] == [2, 2, 2, 2]
            assert "give an event id, or --name N --since T" in errors[0].stderr
            assert "no subscriber or enabled webhook endpoint named 'nope'" in errors[1].stderr
            assert "known: send-email, update-crm, webhook:" in errors[1].stderr
            assert "--since is required with --name" in errors[2].stderr
            assert "not an event id" in errors[3].stderr

            event = await processor.get_event(first.id)
            replays = [d for d in event.deliveries if d.replay_id]
            assert sorted(d.target for d in replays) == sorted(
                ["send-email", "send-email", "update-crm", f"webhook:{hook.id}"]
            )
            assert event.replays == 2

    # recorded like every action (two processes: ObjectId order within a second is arbitrary)
    audit = {a.action: a for a in await Admin(db).audit_log(limit=2)}
    assert audit["event_replayed"].detail["event_id"] == first.id
    assert audit["event_replayed"].detail["subscribers"] == "send-email"
    assert len(audit["events_replayed"].ids) == 6


async def test_events_list_names_a_misspelt_event_name(db: Any, mongo_url: str) -> None:
    """`events list --name` of a name that no subscriber, webhook endpoint or stored event has
    exits 2 with a did-you-mean, as `jobs list --name` does; a known name with nothing in the
    listing is an empty table (exit 0)."""

    async def send_email(event: Event, signal: AbortSignal) -> None:
        return None

    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(
        db, subscribers={"shipped": [Subscriber("send-email", handler=send_email)]}
    )
    await processor.webhooks.add(url="https://crm.example/hooks", events=["invoiced"])
    await processor.webhooks.add(url="https://all.example/hooks", events=["*"], enabled=False)
    await processor.emit("refunded", {"order": "o1"})  # stored, nobody listening
    later = ["--since", "2099-01-01"]
    *typos, as_json, hooked, stored, everything = await asyncio.gather(
        cli(url, "events", "list", "--name", "shiped"),
        cli(url, "events", "list", "--name", "invoicd", *later),
        cli(url, "events", "list", "--name", "refundd"),
        cli(url, "events", "list", "--name", "nothing-like-it"),
        cli(url, "events", "list", "--name", "shiped", "--json"),
        cli(url, "events", "list", "--name", "invoiced"),
        cli(url, "events", "list", "--name", "refunded", *later),
        cli(url, "events", "list", "--name", "shipped"),
    )
    assert [t.returncode for t in typos] == [2, 2, 2, 2], [t.stderr for t in typos]
    assert "unknown event 'shiped' (did you mean 'shipped'?)" in typos[0].stderr
    assert "unknown event 'invoicd' (did you mean 'invoiced'?)" in typos[1].stderr
    assert "unknown event 'refundd' (did you mean 'refunded'?)" in typos[2].stderr
    assert "unknown event 'nothing-like-it': no subscriber" in typos[3].stderr  # "*" names none
    assert typos[0].stdout == "" and as_json.stdout == ""
    assert as_json.returncode == 2 and "did you mean 'shipped'?" in as_json.stderr
    for known in (hooked, stored, everything):  # known names: an empty listing is an answer
        assert known.returncode == 0, known.stderr
        assert known.stdout.splitlines()[-1] == "(none)"


def when_cells(value: dt.datetime) -> list[str]:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S").split()


async def test_a_reader_that_stops_early_gets_no_traceback(db: Any, mongo_url: str) -> None:
    """`jobs show ID | head -1`: the command stops quietly when the pipe closes (exit 141, as
    a tool killed by SIGPIPE), without a BrokenPipeError traceback."""
    import subprocess

    processor = await init_job_processor(db, jobs=JOBS)
    job = await processor.schedule_job("anywhere", {"text": "x" * 300_000})  # > a pipe's buffer
    env = os.environ | {"MONGODB_URL": url_with_db(mongo_url, db.name)}

    def head_1() -> tuple[str, int, str]:
        with subprocess.Popen(
            [sys.executable, "-m", "job_processor", "jobs", "show", job.id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()  # what `head -1` reads, then it exits
            proc.stdout.close()
            return first, proc.wait(timeout=30), proc.stderr.read()

    first, code, stderr = await asyncio.to_thread(head_1)
    assert first.split() == ["id:", job.id]
    assert (code, stderr) == (141, "")


@pytest.mark.parametrize(
    "args", [("jobs", "list", "--json"), ("status",), ("jobs", "list", "--help")]
)
async def test_a_reader_gone_before_a_short_output_is_written_gets_no_traceback(
    db: Any, mongo_url: str, args: tuple[str, ...]
) -> None:
    """`jobs list --json | head -1`, output under a pipe's buffer: Python (without
    PYTHONUNBUFFERED, as a shell runs it) holds what the command printed until it exits, and
    the flush at exit met the closed pipe: exit 120 and "Exception ignored ... BrokenPipeError"
    on stderr, where operations.md promises 141, quietly (the help text too)."""
    import subprocess

    processor = await init_job_processor(db, jobs=JOBS)
    await processor.schedule_job("anywhere", {})
    env = os.environ | {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    env.pop("PYTHONUNBUFFERED", None)  # a shell's python buffers its stdout to a pipe

    def closed_reader() -> tuple[int, str]:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the command writes anything
        try:
            with subprocess.Popen(
                [sys.executable, "-m", "job_processor", *args],
                env=env,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
            ) as proc:
                os.close(write)
                write = -1
                assert proc.stderr is not None
                return proc.wait(timeout=30), proc.stderr.read()
        finally:
            if write != -1:
                os.close(write)

    assert await asyncio.to_thread(closed_reader) == (141, "")


async def test_health_never_exits_2_for_a_bad_logging_variable(db: Any, mongo_url: str) -> None:
    """operations.md: health exits 0 or 1 (Docker reserves exit 2). A LOG_LEVEL or
    JOB_PROCESSOR_LOG_FORMAT it does not use made it exit 2 before it ran; every other command
    still refuses them."""
    url = url_with_db(mongo_url, db.name)
    await db["job_processor_workers"].insert_one(
        {
            "_id": "w-live",
            "hostname": socket.gethostname(),
            "pid": 1,
            "last_seen": dt.datetime.now(dt.UTC),
            "worker_timeout": 30.0,
        }
    )
    assert (await cli(url, "health")).returncode == 0
    for env in ({"LOG_LEVEL": "trace"}, {"JOB_PROCESSOR_LOG_FORMAT": "logfmt"}):
        assert (await cli(url, "health", env=env)).returncode == 0, env
        listing = await cli(url, "workers", "list", env=env)
        assert listing.returncode == 2 and next(iter(env)) in listing.stderr, listing.stderr


def test_main_returning_leaves_sigterm_and_sigint_as_they_were() -> None:
    """cli.main() is a function: once it returns, a process that called it (a script, a test
    runner) still stops on SIGTERM and Ctrl-C. `run` left both ignored (SIG_IGN), even when
    it only said a usage error (MONGODB_URL unset)."""
    import subprocess

    code = (
        "import os, signal\n"
        "from job_processor.cli import main\n"
        "rc = main(['run', 'tests.e2e.app:make'])\n"
        "print(rc, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,"
        " signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URL"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.split() == ["2", "True", "True"], (done.stdout, done.stderr[-2000:])


async def test_status_and_workers_list_say_a_crashed_worker_is_not_claiming(
    db: Any, mongo_url: str
) -> None:
    """Its heartbeat goes on, its claim loop crashed: 'alive' in both read as 'claiming'."""
    from job_processor.core import documents as D
    from job_processor.storage import Storage

    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs=JOBS)
    crashed = D.new_worker(processor.clock.now(), None, "runner-1", 1, ["anywhere"], 30)
    crashed["crashed"] = "RuntimeError: boom"
    await Storage(db).workers.register(crashed)
    status, workers = await asyncio.gather(cli(url, "status"), cli(url, "workers", "list"))
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == "workers: 0 alive, 1 crashed", status.stdout
    assert "(crashed)" in status.stdout
    row = next(line for line in workers.stdout.splitlines() if "runner-1" in line)
    assert row.split()[-1] == "CRASHED", workers.stdout
