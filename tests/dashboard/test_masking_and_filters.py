"""The dashboard: what a page filtered by id retries, and secrets masked wherever shown."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
from typing import Any

from bson import ObjectId

from job_processor import AbortSignal, Job, JobDef, JobProcessor, JobStatus, init_job_processor
from job_processor.admin import Admin
from job_processor.dashboard import create_dashboard
from tests.helpers import FAST, wait_for

from .harness import wait_until
from .test_http import AUTH, client

S = JobStatus


def flash_of(resp: Any) -> dict[str, Any]:
    raw = resp.cookies.get("jp_dashboard_flash")
    assert raw, "no flash message set"
    return json.loads(base64.urlsafe_b64decode(raw.encode()))


async def errored_email(p: JobProcessor) -> str:
    job = await p.schedule_job("send-email", {"to": "ada@example.com", "fail": True})

    async def ended() -> bool:
        return (await p.get_job(job.id)).status == S.ERRORED

    await wait_until(ended)
    return job.id


async def test_retry_all_matching_on_a_page_filtered_by_id_retries_only_that_job(
    processor: Any,
) -> None:
    """/jobs?status=errored&id=A lists one job and offers "Retry all errored matching": it
    must retry that job, not every errored job of the database."""
    p, _ = processor
    shown = await errored_email(p)
    other = await errored_email(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get("/jobs", params={"status": "errored", "id": shown})
        assert page.status_code == 200
        assert shown[-8:] in page.text and other[-8:] not in page.text  # one job listed
        form = re.search(r'<form method="post" action="/jobs/retry-all".*?</form>', page.text, re.S)
        assert form, "no Retry all errored matching button"
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(0)))
        fields["confirm"] = "yes"
        resp = await c.post("/jobs/retry-all", data=fields)
        assert resp.status_code == 303
        flash = flash_of(resp)
    # only the job the page listed was asked for
    assert flash["lines"] == [shown], flash  # fails: every errored job was retried
    assert flash["title"] == "Retry: 1 changed", flash


async def test_jobs_list_progress_tooltip_masks_the_jobs_secrets(db: Any) -> None:
    """The job page masks a payload's secret wherever it appears (its progress message too);
    the jobs list shows the same progress message in a tooltip with the secret in clear."""
    secret = "hunter2-very-secret"
    started = asyncio.Event()

    async def login(job: Job, signal: AbortSignal) -> None:
        await job.report_progress(1, 3, f"logged in to smtp with {job.payload['smtp_password']}")
        started.set()
        await signal.wait()

    p = await init_job_processor(db, jobs={"login": JobDef(handler=login)}, **FAST)
    app = create_dashboard(p, auth=AUTH)
    async with p:
        job = await p.schedule_job("login", {"smtp_password": secret, "to": "ada@example.com"})
        await asyncio.wait_for(started.wait(), 10)

        async def has_progress() -> bool:
            return (await p.get_job(job.id)).progress is not None

        await wait_until(has_progress)
        async with client(app) as c:
            job_page = await c.get(f"/jobs/{job.id}")
            assert "logged in to smtp with" in job_page.text
            assert secret not in job_page.text  # the job's own page masks it
            listing = await c.get("/jobs")
            assert "logged in to smtp with" in listing.text
            assert secret not in listing.text  # fails: the row's progress tooltip shows it
        await p.kill_job(job.id)


async def test_a_dotted_config_key_holding_a_password_is_masked_in_the_payload(db: Any) -> None:
    """`{"spring.datasource.password": "..."}` (a flat config map): the error text masks
    `spring.datasource.password=...` (a sensitive name after a separator), but the payload
    shows the same value in clear, in /api/jobs/{id} and on the job page."""
    secret = "hunter2-config-pw"

    async def deploy(job: Job, signal: AbortSignal) -> None:
        return None

    p = await init_job_processor(db, jobs={"deploy": JobDef(handler=deploy)}, **FAST)
    job = await p.schedule_job("deploy", {"spring.datasource.password": secret, "app": "billing"})
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get(f"/jobs/{job.id}")
        api = await c.get(f"/api/jobs/{job.id}")
    assert page.status_code == 200 and api.status_code == 200
    assert "billing" in api.text
    assert secret not in api.text  # fails
    assert secret not in page.text  # fails


async def test_retry_all_matching_on_an_id_page_listing_nothing_retries_nothing(
    processor: Any,
) -> None:
    """/jobs?status=killed&id=<an errored job> lists nothing: its "Retry all killed matching"
    retried that errored job. The button is not shown there, and a form posted anyway retries
    only what the page lists."""
    p, _ = processor
    errored = await errored_email(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get("/jobs", params={"status": "killed", "id": errored})
        assert page.status_code == 200 and f'/jobs/{errored}"' not in page.text
        assert "/jobs/retry-all" not in page.text  # nothing listed: no button
        # a form posted anyway (with the page's CSRF token, from its other forms)
        token = dict(re.findall(r'name="(csrf[^"]*)" value="([^"]*)"', page.text))
        stale = token | {"status": "killed", "id": errored, "confirm": "yes"}
        resp = await c.post("/jobs/retry-all", data=stale)
        assert resp.status_code == 303
    assert (await p.get_job(errored)).status == S.ERRORED


async def test_the_job_page_masks_a_secret_cut_by_the_end_of_a_long_log_message(db: Any) -> None:
    """A message log_line cut to fit its line (marked `cut: true`) ends inside the payload's
    password ("...hunter2-very…"): the JSON API masked it (masked_line), the job page showed
    it."""
    from job_processor.core.notes import log_line

    password = "hunter2-very-secret"
    probe = log_line(1, "info", "x" * 5000, {}, dt.datetime(2030, 1, 1, 0, 0, 0, 123000, dt.UTC))
    full = len(probe["message"]) - 1  # the characters a cut message keeps before "…"
    message = "x" * (full - 12) + password + " " + "y" * 3000

    async def login(job: Job, signal: AbortSignal) -> None:
        job.log(message)

    p = await init_job_processor(db, jobs={"login": JobDef(handler=login)}, **FAST)
    app = create_dashboard(p, auth=AUTH)
    done = await p.run_job("login", {"password": password})
    stored = done.logs[0]
    assert stored.get("cut") is True and stored["message"].endswith("…")
    kept = max(k for k in range(len(password)) if stored["message"][:-1].endswith(password[:k]))
    assert kept >= 5, stored["message"][-20:]  # the cut falls inside the password
    async with client(app) as c:
        api = (await c.get(f"/api/jobs/{done.id}")).json()
        assert password[:kept] not in api["logs"][0]["message"]
        page = await c.get(f"/jobs/{done.id}")
        assert "xxxxxxxx" in page.text
        assert password[:kept] not in page.text


async def test_retry_all_matching_keeps_the_sub_second_time_filter_the_page_listed_by(
    processor: Any,
) -> None:
    """/jobs?status=errored&id=A&before=<A's creation + 1 ms> lists A and offers "Retry all
    errored matching"; its hidden `before` was the filter form's datetime-local value, cut to
    the second (before A was created), so the retry matched nothing the page listed, and said
    "Retry all failed: give at least one job id"."""
    p, _ = processor
    while True:  # a creation time with a fraction of a second (999 times in 1,000)
        job_id = await errored_email(p)
        created = (await p.get_job(job_id)).created_at
        if created.microsecond:
            break
    before = (created + dt.timedelta(milliseconds=1)).isoformat().replace("+00:00", "Z")
    app = create_dashboard(p, auth=AUTH)
    # paused: the retried job stays pending (the started worker would run it, and fail it, again)
    await (await Admin.open(p.storage.db, p.storage.prefix)).pause("send-email")
    # the worker claims nothing of it once it has seen the pause (its heartbeat reads it)
    await wait_for(lambda: "send-email" in p.worker.paused)
    async with client(app) as c:
        page = await c.get("/jobs", params={"status": "errored", "id": job_id, "before": before})
        assert page.status_code == 200 and f'/jobs/{job_id}"' in page.text  # listed
        form = re.search(r'<form method="post" action="/jobs/retry-all".*?</form>', page.text, re.S)
        assert form, "no Retry all errored matching button"
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(0)))
        resp = await c.post("/jobs/retry-all", data=fields | {"confirm": "yes"})
        assert resp.status_code == 303
        flash = flash_of(resp)
        assert flash["lines"][0] == job_id, (fields["before"], flash)  # then: it is paused
        assert (await p.get_job(job_id)).status == S.PENDING
        # the same page once the job is no longer errored: nothing retried, and said so
        again = await c.post("/jobs/retry-all", data=fields | {"confirm": "yes"})
        assert flash_of(again)["title"] == "Nothing retried", flash_of(again)


async def test_retry_all_matching_after_a_sub_second_time_retries_no_job_the_page_left_out() -> (
    None
):
    """On a server that compares dates to the millisecond (MongoDB; mongomock here, nx-27017
    compares to the second): /jobs?status=errored&after=<B's creation> lists B, not A created
    0.3 s before it in the same second; "Retry all errored matching" retried A too."""
    from mongomock_motor import AsyncMongoMockClient

    async def fail(job: Job, signal: AbortSignal) -> None:
        raise ValueError("boom")

    mdb = AsyncMongoMockClient(tz_aware=True)["jp_sub_second"]
    p = await init_job_processor(mdb, jobs={"fail": JobDef(handler=fail)}, **FAST)
    async with p:
        while dt.datetime.now(dt.UTC).microsecond > 300_000:  # A and B in one second
            await asyncio.sleep(0.01)
        a = await p.schedule_job("fail", {"n": 1})
        await asyncio.sleep(0.3)  # B 0.3 s after A, in the same second
        b = await p.schedule_job("fail", {"n": 2})

        async def both_errored() -> bool:
            return all([(await p.get_job(j.id)).status == S.ERRORED for j in (a, b)])

        await wait_until(both_errored)
        created_b = (await p.get_job(b.id)).created_at
        app = create_dashboard(p, auth=AUTH)
        async with client(app) as c:
            after = created_b.isoformat().replace("+00:00", "Z")
            page = await c.get("/jobs", params={"status": "errored", "after": after})
            assert f'/jobs/{b.id}"' in page.text and f'/jobs/{a.id}"' not in page.text
            form = re.search(
                r'<form method="post" action="/jobs/retry-all".*?</form>', page.text, re.S
            )
            assert form, "no Retry all errored matching button"
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(0)))
            resp = await c.post("/jobs/retry-all", data=fields | {"confirm": "yes"})
            assert resp.status_code == 303
        assert (await p.get_job(a.id)).status == S.ERRORED
        assert (await p.get_job(b.id)).status != S.ERRORED


async def test_a_refused_jobs_filter_offers_no_retry_all_of_everything(processor: Any) -> None:
    """/jobs?status=errored&nmae=other (a typo) is refused: the page lists no job and says
    "unknown parameter 'nmae'". It offered "Retry all errored matching" for the filter it did
    not apply: the button retried every errored job of every name."""
    p, _ = processor
    victim = await errored_email(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get("/jobs", params={"status": "errored", "nmae": "nothing-like-it"})
        assert page.status_code == 400 and "unknown parameter" in page.text
        assert f'/jobs/{victim}"' not in page.text  # nothing listed
        form = re.search(r'<form method="post" action="/jobs/retry-all".*?</form>', page.text, re.S)
        assert form is None, "Retry all offered on a refused filter"
    assert (await p.get_job(victim)).status == S.ERRORED


async def test_the_json_views_mask_fields_another_program_added_to_output_progress_and_logs(
    processor: Any,
) -> None:
    """A job's output, progress and log lines keep every field another program wrote there
    (`output.details`, `output.traceback`): the JSON views mask them as they mask a payload."""
    p, _ = processor
    job_id = await errored_email(p)
    secret = "hunter2-very-secret"
    await p.storage.db["job_processor_jobs"].update_one(
        {"_id": ObjectId(job_id)},
        {
            "$set": {
                "output.details": {"password": secret + "-out"},
                "output.traceback": f"login failed: token={secret}-trace",
                "progress": {"done": 1, "total": 2, "message": "half", "api_key": secret + "-p"},
                "logs": [{"level": "info", "message": "hello", "password": secret + "-log"}],
            }
        },
    )
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in (f"/api/jobs/{job_id}", f"/api/jobs?id={job_id}", f"/jobs/{job_id}"):
            resp = await c.get(path)
            assert resp.status_code == 200, path
            assert secret not in resp.text, path
        shown = (await c.get(f"/api/jobs/{job_id}")).json()
    assert shown["output"]["details"] == {"password": "••••••"}
    assert shown["output"]["traceback"] == "login failed: token=••••••"
    assert shown["progress"]["api_key"] == "••••••" and shown["progress"]["message"] == "half"
    assert shown["logs"][0]["password"] == "••••••" and shown["logs"][0]["message"] == "hello"
