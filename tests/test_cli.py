"""The operations CLI, run for real (`python -m job_processor ...`) against the test server,
from MONGODB_URL alone: what an operator sees, and the exit codes scripts rely on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.admin import Admin

from .e2e.app import JOBS
from .e2e.test_processes import url_with_db
from .integration.helpers import FAST, wait_status

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


async def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "job_processor",
        *args,
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": url} | (env or {}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def boom(job: Job, signal: AbortSignal) -> None:
    raise RuntimeError("smtp down")


async def tick(job: Job, signal: AbortSignal) -> None:
    return None


async def test_status_and_kill_need_no_app_factory(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs=JOBS)
    job = await processor.schedule_job("anywhere", {})
    status = await cli(url, "status")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
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
            "ID", "NAME", "STATUS", "CREATED", "DUE/ENDED", "ATTEMPT", "ERROR"
        ]  # fmt: skip
        assert failed.id in listing.stdout and "RuntimeError: smtp down" in listing.stdout
        assert done.id not in listing.stdout
        as_json = await cli(url, "jobs", "list", "--name", "fine", "--json", "--log-level", "error")
        assert [j["id"] for j in json.loads(as_json.stdout)["jobs"]] == [done.id]
        shown = await cli(url, "jobs", "show", failed.id)
        assert "status:             errored" in shown.stdout
        assert "RuntimeError: smtp down" in shown.stdout and "runs:" in shown.stdout
        shown_json = json.loads((await cli(url, "jobs", "show", failed.id, "--json")).stdout)
        assert shown_json["payload"] == {"to": "a@b.c"}

        nothing = await cli(url, "jobs", "retry", done.id)
        assert nothing.returncode == 1
        assert "finished: only errored or killed jobs can be retried" in nothing.stdout
        retried = await cli(url, "jobs", "retry", "--name", "mail", "--status", "errored")
        assert retried.returncode == 0, retried.stderr
        assert f"jobs retried: 1 ({failed.id})" in retried.stdout
        await wait_status(processor, failed.id, "errored")  # type: ignore[arg-type]

        later = await cli(url, "jobs", "new", "fine", "--payload", '{"n": 1}', "--at", "2099-01-01")
        assert later.returncode == 0, later.stderr
        new_id = (await Admin(db).list_jobs(status="pending")).jobs[0].id
        run_now = await cli(url, "jobs", "run-now", new_id)
        assert run_now.returncode == 0, run_now.stderr
        await wait_status(processor, new_id, "finished")  # type: ignore[arg-type]
        bad_json = await cli(url, "jobs", "new", "fine", "--payload", "{n: 1}")
        assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr

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
        assert (await cli(url, "names", "pause", "fine")).returncode == 1
        names = await cli(url, "names", "list", "--json")
        by_name = {n["name"]: n for n in json.loads(names.stdout)}
        assert by_name["fine"]["paused"] and by_name["fine"]["served_by"] == [processor.worker_id]
        assert (await cli(url, "names", "resume", "fine")).returncode == 0

    # an operations command never changes definitions (no init_job_processor, no pruning)
    admin = Admin(db)
    assert [c.name for c in await admin.list_crons()] == ["nightly"]
    actions = [e.action for e in await admin.audit_log(limit=100)]
    assert "jobs_retried" in actions and "name_paused" in actions


async def test_clear_errors(mongo_url: str) -> None:
    unreachable = await cli("mongodb://127.0.0.1:1/x", "jobs", "list", "--timeout", "0.5")
    assert unreachable.returncode == 3
    assert unreachable.stderr.strip().startswith("error: cannot reach MongoDB at 127.0.0.1:1")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    health = await cli("mongodb://127.0.0.1:1/x", "--timeout", "0.5", "health")
    assert health.returncode == 1 and "cannot reach MongoDB" in health.stdout
    bad_id = await cli(mongo_url, "jobs", "show", "nope")
    assert bad_id.returncode == 2 and "not a job id" in bad_id.stderr
    usage = await cli(mongo_url, "jobs", "retry")
    assert usage.returncode == 2 and "give job ids" in usage.stderr
    missing = await cli("", "run", "tests.e2e.app:make")
    assert missing.returncode != 0
    assert "set MONGODB_URL" in missing.stderr
    bad = await cli(mongo_url, "run", "tests.e2e.app")
    assert bad.returncode != 0
    assert "must be MODULE:ATTR" in bad.stderr


async def test_run_serves_metrics(db: Any, mongo_url: str) -> None:
    import signal
    import urllib.request

    from job_processor.local_server import free_port

    url = url_with_db(mongo_url, db.name)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "job_processor",
        "run",
        "tests.e2e.app:make",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": url, "INSTANCE_ID": "runner-1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

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
