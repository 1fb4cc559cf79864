"""The dashboard over HTTP without a browser (httpx in the same event loop as a real started
JobProcessor on the test server): auth, CSRF, read-only, the public-host refusal, masking,
actions and their flash messages, mounting under a prefix, metrics and probes."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
from typing import Any

import httpx2 as httpx
import pytest
from bson import ObjectId

from job_processor import InvalidArgumentError, JobProcessor, JobStatus
from job_processor.admin import Admin
from job_processor.core import documents as D
from job_processor.core.masking import Masker
from job_processor.dashboard import MASK, DashboardConfigError, create_dashboard
from job_processor.dashboard.render import make_env
from job_processor.storage import object_id

from .harness import host_app, wait_until

S = JobStatus
AUTH = ("admin", "s3cret-pw")
SECRET = "hunter2-very-secret"


def client(app: Any, base: str = "http://127.0.0.1", auth: Any = AUTH) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=base, auth=auth, follow_redirects=False
    )


def token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


async def failed_email(processor: JobProcessor, **payload: Any) -> str:
    job = await processor.schedule_job(
        "send-email", {"to": "ada@example.com", "fail": True} | payload
    )
    await wait_until(lambda: _status(processor, job.id, S.ERRORED))
    return job.id


async def _status(processor: JobProcessor, job_id: str, *statuses: JobStatus) -> bool:
    return (await processor.get_job(job_id)).status in statuses


async def test_basic_auth_refuses_without_or_with_wrong_credentials(processor: Any) -> None:
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app, auth=None) as anonymous:
        resp = await anonymous.get("/")
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Basic ")
        assert "Log in" in resp.text and "Queues" not in resp.text
        bad = "Basic " + base64.b64encode(b"admin:nope").decode()
        assert (await anonymous.get("/jobs", headers={"Authorization": bad})).status_code == 401
        assert (await anonymous.get("/api/overview")).status_code == 401
        # probes stay open for orchestrators
        health = await anonymous.get("/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        assert (await anonymous.get("/readyz")).json()["mongodb"] is True
    async with client(app) as signed_in:
        resp = await signed_in.get("/")
        assert resp.status_code == 200
        assert "Queues" in resp.text and "send-email" in resp.text and "runner-1" in resp.text
        assert "webhook-delivery" not in resp.text  # built in, listed once it has jobs


@pytest.mark.parametrize("is_async", [False, True])
async def test_callable_auth_and_the_actor_in_the_audit_log(processor: Any, is_async: bool) -> None:
    p, _ = processor

    def decide(request: Any) -> bool | str:
        return "carol" if request.headers.get("x-user") == "carol" else False

    async def decide_async(request: Any) -> bool | str:
        return decide(request)

    app = create_dashboard(p, auth=decide_async if is_async else decide)
    async with client(app, auth=None) as c:
        assert (await c.get("/")).status_code == 403
        c.headers["x-user"] = "carol"
        page = await c.get("/crons")
        assert page.status_code == 200 and "nightly-cleanup" in page.text
        resp = await c.post("/crons/nightly-cleanup/trigger", data={"csrf_token": token(page.text)})
        assert resp.status_code == 303
        audit = await c.get("/audit")
        assert "carol (dashboard" in audit.text and "cron_triggered" in audit.text


async def test_no_auth_refuses_public_hosts_unless_auth_none_is_explicit(
    db: Any, processor: Any
) -> None:
    p, _ = processor
    with pytest.raises(DashboardConfigError, match="without authentication"):
        create_dashboard(db, host="0.0.0.0")
    create_dashboard(db, host="127.0.0.1")  # loopback: fine
    create_dashboard(db, host="0.0.0.0", auth=None)  # explicit: fine
    app = create_dashboard(p)
    async with client(app, base="http://10.0.0.5", auth=None) as public:
        resp = await public.get("/")
        assert resp.status_code == 403
        assert "only answers on a loopback address" in resp.text
    async with client(app, base="http://127.0.0.1:8080", auth=None) as local:
        assert (await local.get("/")).status_code == 200
    # auth=None (a proxy authenticates): the names it forwards are given; others get a 400
    behind = create_dashboard(p, auth=None, allowed_hosts=["jobs.example.com"])
    async with client(behind, base="http://jobs.example.com", auth=None) as c:
        assert (await c.get("/")).status_code == 200
    async with client(behind, base="http://10.0.0.5", auth=None) as c:
        assert (await c.get("/")).status_code == 400


async def test_without_credentials_a_rebound_host_is_refused(processor: Any) -> None:
    """auth=None on loopback (`--no-auth`): a page of another site whose name resolves to
    127.0.0.1 (DNS rebinding) gets a 400 and cannot post."""
    p, _ = processor
    job_id = await failed_email(p)
    app = create_dashboard(p, auth=None, host="127.0.0.1")
    evil = {"host": "evil.example:8080", "origin": "http://evil.example:8080"}
    async with client(app, base="http://127.0.0.1:8080", auth=None) as c:
        page = await c.get(f"/jobs/{job_id}")
        assert page.status_code == 200
        assert (
            await c.get(f"/jobs/{job_id}", headers={"host": "evil.example:8080"})
        ).status_code == 400
        posted = await c.post(
            f"/jobs/{job_id}/retry", data={"csrf_token": token(page.text)}, headers=evil
        )
        assert posted.status_code in (400, 403)
    assert (await p.get_job(job_id)).status == S.ERRORED  # nothing happened


async def test_csrf_refusals_and_a_genuine_post(processor: Any) -> None:
    p, _ = processor
    job_id = await failed_email(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        # no cookie, no token
        resp = await c.post(f"/jobs/{job_id}/retry", data={})
        assert resp.status_code == 403 and "security cookie is missing" in resp.text
        page = await c.get(f"/jobs/{job_id}")
        good = token(page.text)
        # cookie set by the page, but a forged token
        resp = await c.post(f"/jobs/{job_id}/retry", data={"csrf_token": "0" * 48})
        assert resp.status_code == 403 and "does not match" in resp.text
        # right token, posted from another site
        resp = await c.post(
            f"/jobs/{job_id}/retry",
            data={"csrf_token": good},
            headers={"Origin": "https://evil.example"},
        )
        assert resp.status_code == 403 and "another site" in resp.text
        assert (await p.get_job(job_id)).status == S.ERRORED  # nothing happened
        resp = await c.post(
            f"/jobs/{job_id}/retry",
            data={"csrf_token": good},
            headers={"Origin": "http://127.0.0.1"},
        )
        assert resp.status_code == 303 and resp.headers["location"] == f"/jobs/{job_id}"
        shown = await c.get(resp.headers["location"])
        assert "Retry: 1 changed" in shown.text
        assert "admin (dashboard" in shown.text


async def test_read_only_hides_and_refuses_every_action(processor: Any) -> None:
    p, _ = processor
    job_id = await failed_email(p)
    app = create_dashboard(p, auth=AUTH, read_only=True)
    async with client(app) as c:
        for path in ("/", "/jobs", f"/jobs/{job_id}", "/crons", "/names", "/workers"):
            html = (await c.get(path)).text
            assert 'method="post"' not in html, path
            assert "read-only" in html
        page = await c.get(f"/jobs/{job_id}")
        assert ">Retry<" not in page.text and ">Kill" not in page.text
        csrf = token_from_cookie(c)
        for path in (
            f"/jobs/{job_id}/retry",
            f"/jobs/{job_id}/delete",
            "/jobs/retry-all",
            "/jobs/new",
            "/crons/nightly-cleanup/trigger",
            "/names/send-email/pause",
        ):
            resp = await c.post(path, data={"csrf_token": csrf, "confirm": "yes"})
            assert resp.status_code == 403, path
            assert "read-only" in resp.text
        assert (await c.get("/jobs/new")).status_code == 403
    assert (await p.get_job(job_id)).status == S.ERRORED
    assert await p.storage.paused.names() == set()


def token_from_cookie(c: httpx.AsyncClient) -> str:
    value = c.cookies.get("jp_dashboard_csrf")
    assert value
    return str(value)


async def test_sensitive_fields_are_never_shown(processor: Any) -> None:
    p, _ = processor
    job_id = await failed_email(
        p, smtp_password=SECRET, nested={"api_token": "tok-123456789"}, author="bob"
    )
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in (f"/jobs/{job_id}", "/jobs", f"/api/jobs/{job_id}", "/api/jobs"):
            body = (await c.get(path)).text
            assert SECRET not in body, path
            assert "tok-123456789" not in body, path
        page = (await c.get(f"/jobs/{job_id}")).text
        assert MASK in page
        assert "SMTP server refused the login" in page  # the error is shown, the secret is not
        assert "bob" in page  # "author" is not "auth"
        data = (await c.get(f"/api/jobs/{job_id}")).json()
        assert data["payload"]["smtp_password"] == MASK
        assert data["payload"]["nested"]["api_token"] == MASK
        assert SECRET not in data["output"]["error"]
    custom = create_dashboard(p, auth=AUTH, sensitive_fields=["to"])
    async with client(custom) as c:
        data = (await c.get(f"/api/jobs/{job_id}")).json()
        assert data["payload"]["to"] == MASK
        assert data["payload"]["smtp_password"] == SECRET  # the defaults were replaced


async def test_new_job_from_json_with_a_clear_error_on_bad_json(processor: Any) -> None:
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        form = await c.get("/jobs/new")
        assert "send-email" in form.text
        data = {"csrf_token": token(form.text), "name": "send-email", "payload": '{"to": '}
        resp = await c.post("/jobs/new", data=data)
        assert resp.status_code == 400
        assert "payload is not valid JSON" in resp.text
        assert "{&#34;to&#34;: </textarea>" in resp.text  # what was typed is kept
        data["payload"] = '{"to": "grace@example.com"}'
        resp = await c.post("/jobs/new", data=data)
        assert resp.status_code == 303
        job_id = resp.headers["location"].rsplit("/", 1)[1]
        page = await c.get(resp.headers["location"])
        assert "New job: 1 changed" in page.text and "grace@example.com" in page.text
    await wait_until(lambda: _status(p, job_id, S.FINISHED))


async def test_new_job_with_an_integer_of_thousands_of_digits_is_a_form_error(
    processor: Any,
) -> None:
    """A payload integer past Python's 4,300 digits failed the form with a server error (the
    ValueError of int max str digits): the form says which field, and the limit."""
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        form = await c.get("/jobs/new")
        payload = '{"to": "a@b.c", "n": ' + "9" * 5000 + "}"
        data = {"csrf_token": token(form.text), "name": "send-email", "payload": payload}
        resp = await c.post("/jobs/new", data=data)
        assert resp.status_code == 400, resp.text[:300]
        assert "payload field &#39;n&#39; is an integer of 5000 digits" in resp.text
        assert "64 bits" in resp.text
    assert await p.list_jobs(name="send-email") == []  # nothing written


async def test_a_new_jobs_form_is_read_up_to_17_mib_and_past_it_is_a_413(processor: Any) -> None:
    """A URL-encoded form field over 1 MiB (Starlette's default part size) was refused as a
    "Malformed form" (400: "Field exceeded maximum size of 1024KB."), though the body limit,
    and the docs, said 17 MiB: a payload of 1 to 15 MiB could not be created from the
    dashboard. A form past 17 MiB gets a 413 that says the limit; a payload over the 15 MiB a
    job can hold, the form again with why."""
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        form = await c.get("/jobs/new")
        data = {"csrf_token": token(form.text), "name": "send-email"}
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()  # not run
        body = "x" * (2 * 2**20)
        payload = json.dumps({"to": "ada@example.com", "body": body})
        made = await c.post("/jobs/new", data=data | {"payload": payload, "scheduled_for": later})
        assert made.status_code == 303, made.text[-500:]
        job = await p.get_job(made.headers["location"].rsplit("/", 1)[1])
        assert job.payload["body"] == body

        over = json.dumps({"to": "ada@example.com", "body": "x" * (18 * 2**20)})
        refused = await c.post("/jobs/new", data=data | {"payload": over})
        assert refused.status_code == 413
        assert "A form of the dashboard is at most 17 MiB." in refused.text

        large = json.dumps({"to": "ada@example.com", "body": "x" * (16 * 2**20)})
        too_large = await c.post("/jobs/new", data=data | {"payload": large})
        assert too_large.status_code == 400 and "Malformed form" not in too_large.text
        assert "15 MiB" in html.unescape(too_large.text)


async def test_destructive_actions_ask_for_confirmation_first(processor: Any) -> None:
    p, _ = processor
    job_id = await failed_email(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        csrf = token((await c.get(f"/jobs/{job_id}")).text)
        resp = await c.post(f"/jobs/{job_id}/delete", data={"csrf_token": csrf})
        assert resp.status_code == 200
        assert f"Delete job {job_id}?" in resp.text and 'name="confirm" value="yes"' in resp.text
        assert (await p.get_job(job_id)).status == S.ERRORED  # still there
        resp = await c.post(f"/jobs/{job_id}/delete", data={"csrf_token": csrf, "confirm": "yes"})
        assert resp.status_code == 303 and resp.headers["location"] == "/jobs"
        assert "Delete: 1 changed" in (await c.get("/jobs")).text
        assert (await c.get(f"/jobs/{job_id}")).status_code == 404
        # an action that does nothing says so, and why
        finished = await p.run_job("send-email", {"to": "x@example.com"})
        resp = await c.post(f"/jobs/{finished.id}/retry", data={"csrf_token": csrf})
        page = await c.get(resp.headers["location"])
        assert "Retry: nothing changed" in page.text
        assert "only errored or killed jobs can be retried" in page.text
        # a kill's confirmation says the worker aborts it only for a running job
        later = await p.schedule_job("send-email", {"to": "y@example.com"}, delay=3600)
        resp = await c.post(f"/jobs/{later.id}/kill", data={"csrf_token": csrf})
        assert f"Kill job {later.id}?" in resp.text and "send-email · pending." in resp.text
        assert "It is running" not in resp.text
        # and that there is nothing to kill in one that has ended (it offered the kill as is)
        resp = await c.post(f"/jobs/{finished.id}/kill", data={"csrf_token": csrf})
        assert "send-email · finished. It has already ended: a kill changes nothing." in resp.text


async def test_a_confirmed_kill_is_not_made_when_the_job_has_run_again_since(
    processor: Any,
) -> None:
    """The kill's confirmation pins the run the user saw: a job that started another run
    between the confirmation and the click is not killed, and the flash says why."""
    import asyncio

    p, switches = processor
    switches.hold = asyncio.Event()
    later = await p.schedule_job("send-email", {"to": "later@example.com"}, delay=3600)
    app = create_dashboard(p, auth=AUTH)
    try:
        async with client(app) as c:
            csrf = token((await c.get(f"/jobs/{later.id}")).text)
            resp = await c.post(f"/jobs/{later.id}/kill", data={"csrf_token": csrf})
            assert "send-email · pending." in resp.text
            confirmed = dict(
                re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', resp.text)
            )
            assert confirmed["seen_attempt"] == "0" and confirmed["confirm"] == "yes"
            # it starts while the user reads the page (run now, from another tab)
            await c.post(f"/jobs/{later.id}/run-now", data={"csrf_token": csrf})
            await wait_until(lambda: _status(p, later.id, S.RUNNING))
            resp = await c.post(f"/jobs/{later.id}/kill", data=confirmed)
            page = await c.get(resp.headers["location"])
            assert "Kill: nothing changed" in page.text
            assert "it has started another run since the confirmation was shown" in page.text
            running = await p.get_job(later.id)
            assert running.status == S.RUNNING and running.kill_requested_at is None
            # confirmed again, on what it is now: killed
            resp = await c.post(f"/jobs/{later.id}/kill", data={"csrf_token": csrf})
            assert "It is running" in resp.text and 'name="seen_attempt" value="1"' in resp.text
            confirmed = dict(
                re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', resp.text)
            )
            resp = await c.post(f"/jobs/{later.id}/kill", data=confirmed)
            assert "Kill: 1 changed" in (await c.get(resp.headers["location"])).text
            assert (await p.get_job(later.id)).kill_requested_at is not None
    finally:
        switches.hold.set()


async def test_a_confirmed_kill_is_not_made_when_the_job_starts_between_the_check_and_the_kill(
    processor: Any, monkeypatch: Any
) -> None:
    """The pinned attempt is in the kill's own filter: a claim landing right before the kill's
    write (after any read the dashboard made) does not get the kill the user never confirmed."""
    import asyncio

    from job_processor.core import documents as D
    from job_processor.storage.jobs import JobStore

    p, switches = processor
    switches.hold = asyncio.Event()
    later = await p.schedule_job("send-email", {"to": "later@example.com"}, delay=3600)
    app = create_dashboard(p, auth=AUTH)
    original = JobStore.kill
    raced = False

    async def kill(self: Any, job_id: Any, *args: Any, **kw: Any) -> Any:
        nonlocal raced
        if not raced:  # the worker claims the job right before the kill's write
            raced = True
            await self.coll.update_one({"_id": job_id}, D.run_now_update(p.clock.now()))
            await wait_until(lambda: _status(p, later.id, S.RUNNING))
        return await original(self, job_id, *args, **kw)

    try:
        async with client(app) as c:
            csrf = token((await c.get(f"/jobs/{later.id}")).text)
            resp = await c.post(f"/jobs/{later.id}/kill", data={"csrf_token": csrf})
            confirmed = dict(
                re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', resp.text)
            )
            assert confirmed["seen_attempt"] == "0"
            monkeypatch.setattr(JobStore, "kill", kill)
            resp = await c.post(f"/jobs/{later.id}/kill", data=confirmed)
            page = await c.get(resp.headers["location"])
            assert raced
            running = await p.get_job(later.id)
            assert running.attempt == 1 and running.status == S.RUNNING
            assert running.kill_requested_at is None, "the run the user never saw was killed"
            assert "Kill: nothing changed" in page.text
            assert "it has started another run since the confirmation was shown" in page.text
    finally:
        switches.hold.set()


async def test_a_refused_delete_returns_to_the_job_and_a_paused_names_new_job_says_so(
    processor: Any,
) -> None:
    """A delete the admin refuses (a running job: kill it first) goes back to the job's page,
    which still exists, with the reason; a new job of a paused name says that no worker runs
    it until the name is resumed."""
    import asyncio

    p, switches = processor
    switches.hold = asyncio.Event()
    running = await p.schedule_job("send-email", {"to": "held@example.com"})
    await wait_until(lambda: _status(p, running.id, S.RUNNING))
    app = create_dashboard(p, auth=AUTH)
    try:
        async with client(app) as c:
            csrf = token((await c.get(f"/jobs/{running.id}")).text)
            form = {"csrf_token": csrf, "confirm": "yes"}
            resp = await c.post(f"/jobs/{running.id}/delete", data=form)
            assert resp.status_code == 303 and resp.headers["location"] == f"/jobs/{running.id}"
            page = await c.get(resp.headers["location"])
            assert "Delete: nothing changed" in page.text and "kill" in page.text
            await c.post("/names/send-email/pause", data={"csrf_token": csrf})
            form = {"csrf_token": csrf, "name": "send-email", "payload": '{"to": "p@example.com"}'}
            resp = await c.post("/jobs/new", data=form)
            page = await c.get(resp.headers["location"])
            assert "New job: 1 changed" in page.text
            assert (
                "&#39;send-email&#39; is paused: no worker runs it until it is resumed" in page.text
            )
    finally:
        switches.hold.set()


async def due_tomorrow(p: Any) -> Any:
    """A send-email job scheduled for this time tomorrow."""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return await p.schedule_job("send-email", {"to": "later@example.com"}, scheduled_for=later)


async def test_run_a_scheduled_job_now_and_duplicate_a_job(processor: Any) -> None:

    p, _ = processor
    later = await due_tomorrow(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = await c.get(f"/jobs/{later.id}")
        assert "Run now" in page.text
        resp = await c.post(f"/jobs/{later.id}/run-now", data={"csrf_token": token(page.text)})
        assert resp.status_code == 303
        assert "Run now: 1 changed" in (await c.get(resp.headers["location"])).text
        await wait_until(lambda: _status(p, later.id, S.FINISHED))  # it did not wait a day

        csrf = token((await c.get(f"/jobs/{later.id}")).text)
        resp = await c.post(f"/jobs/{later.id}/duplicate", data={"csrf_token": csrf})
        assert resp.status_code == 303
        copy_id = resp.headers["location"].rsplit("/", 1)[1]
        assert copy_id != later.id  # the redirect opens the new job's page
        page = await c.get(resp.headers["location"])
        assert "later@example.com" in page.text
        await wait_until(lambda: _status(p, copy_id, S.FINISHED))
    audit = [a["action"] for a in await p.storage.audit.recent(100)]
    assert "jobs_run_now" in audit and "job_duplicated" in audit


async def test_retry_all_errored_of_a_name_pause_and_purge(processor: Any) -> None:
    p, switches = processor
    ids = [await failed_email(p) for _ in range(3)]
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        csrf = token((await c.get("/")).text)
        resp = await c.post("/names/send-email/pause", data={"csrf_token": csrf, "next": "/names"})
        assert resp.status_code == 303
        names = await c.get("/names")
        assert "Pause: 1 changed" in names.text and "paused</span>" in names.text
        assert await p.storage.paused.names() == {"send-email"}
        switches.email_fails = False
        fields = {"csrf_token": csrf, "name": "send-email", "status": "errored"}
        confirm = await c.post("/jobs/retry-all", data=fields)
        assert "Retry every errored job matching this filter?" in confirm.text
        resp = await c.post("/jobs/retry-all", data=fields | {"confirm": "yes"})
        assert "Retry: 3 changed" in (await c.get(resp.headers["location"])).text
        await c.post("/names/send-email/resume", data={"csrf_token": csrf})
        for job_id in ids:
            await wait_until(lambda j=job_id: _status(p, j, S.FINISHED))
        purge = {"csrf_token": csrf, "status": "finished", "older_than": "bogus"}
        confirm = await c.post("/jobs/purge", data=purge)
        assert "Delete finished jobs that ended more than bogus ago?" in confirm.text
        resp = await c.post("/jobs/purge", data=purge | {"confirm": "yes"})
        assert "is not a duration" in (await c.get(resp.headers["location"])).text

        async def purged() -> bool:  # they ended within the last second: retry until past it
            resp = await c.post("/jobs/purge", data=purge | {"older_than": "1s", "confirm": "yes"})
            assert resp.status_code == 303
            return not await p.list_jobs(name="send-email", status=S.FINISHED)

        await wait_until(purged)
    audit = await p.storage.audit.recent(1000)
    actions = [a["action"] for a in audit]
    assert {"name_paused", "jobs_retried", "name_resumed"} <= set(actions)


async def test_jobs_filters_and_cursor_pages(processor: Any) -> None:
    p, _ = processor
    for i in range(5):
        await p.schedule_job("send-email", {"to": f"u{i}@example.com"}, key=f"k{i}")
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        first = await c.get("/jobs", params={"name": "send-email", "limit": 2})
        assert first.text.count('name="ids"') == 2
        nxt = re.search(r'href="(/jobs\?[^"]*cursor=[^"]+)" *>Next page', first.text)
        nxt = nxt or re.search(r'rel="next" href="([^"]+)"', first.text)
        assert nxt, "no next-page link"
        second = await c.get(nxt.group(1).replace("&amp;", "&"))
        seen = set(re.findall(r'name="ids" value="([0-9a-f]{24})"', first.text))
        again = set(re.findall(r'name="ids" value="([0-9a-f]{24})"', second.text))
        assert len(again) == 2 and not seen & again
        keyed = await c.get("/jobs", params={"key": "k3"})
        assert keyed.text.count('name="ids"') == 1 and "u3@example.com" in keyed.text
        bad = await c.get("/jobs", params={"after": "yesterday"})
        assert bad.status_code == 400 and "after &#39;yesterday&#39; is not a date" in bad.text
        # a parameter the list does not read is refused, never ignored (all jobs listed)
        since = await c.get("/api/jobs", params={"since": "2099-01-01"})  # the CLI's word
        assert since.status_code == 200 and since.json()["jobs"] == []
        empty = await c.get("/api/jobs", params={"since": "2099-01-02", "until": "2099-01-01"})
        assert empty.status_code == 400
        assert empty.json()["error"].startswith(
            "since 2099-01-02T00:00:00+00:00 is not before until 2099-01-01T00:00:00+00:00"
        )
        both = await c.get("/api/jobs", params={"since": "2099-01-01", "after": "2020-01-01"})
        assert both.status_code == 400 and "give after or since, not both" in both.json()["error"]
        page = await c.get("/jobs", params={"since": "2099-01-01", "after": "2020-01-01"})
        assert page.status_code == 400 and "give after or since, not both" in page.text
        after = await c.get("/api/jobs", params={"created_after": "2020-01-01"})
        assert after.status_code == 400
        assert after.json()["error"].startswith(
            "unknown parameter 'created_after': did you mean after? the jobs list reads name, "
        )
        typo = await c.get("/api/jobs", params={"stauts": "errored"})
        assert typo.status_code == 400 and "did you mean status?" in typo.json()["error"]
        page = await c.get("/jobs", params={"nmae": "send-email"})
        assert page.status_code == 400 and "unknown parameter &#39;nmae&#39;" in page.text
        cased = await c.get("/jobs", params={"status": "Pending"})
        assert cased.status_code == 200 and '<option value="pending" selected' in cased.text
        listed = (await c.get("/api/jobs", params={"key": "k3"})).json()["jobs"]
        assert len(listed) == 1 and "logs" not in listed[0] and "payload" in listed[0]
        for path, status in (
            ("/api/jobs/nope", 400),
            ("/api/jobs/0123456789ab0123456789ab", 404),
            ("/api/job", 404),
        ):
            answer = await c.get(path)
            assert answer.status_code == status, path
            assert answer.headers["content-type"] == "application/json", path
            assert answer.json()["error"], path
        assert "the API is /api/overview" in (await c.get("/api/job")).json()["error"]
        assert "text/html" in (await c.get("/nope")).headers["content-type"]
        late = await c.get("/api/jobs", params={"before": "tomorrow"})
        assert late.json()["error"].startswith("before 'tomorrow' is not a date")


async def test_the_other_pages_refuse_unknown_parameters_and_the_audit_takes_a_limit(
    processor: Any,
) -> None:
    """/audit, /workers, /crons and /names ignored any query parameter (/audit?limit=5 showed
    50 entries), while /jobs and /events refuse one they do not read with a did-you-mean: the
    same refusal here; /audit reads `limit` (1 to 1,000) and `before`, the others nothing."""
    p, _ = processor
    admin = Admin(p.storage.db, p.storage.prefix)
    for _ in range(7):
        await admin.pause("send-email")
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        five = await c.get("/audit", params={"limit": 5})
        assert five.status_code == 200 and five.text.count("<code>name_paused</code>") == 5
        older = re.search(r'href="(/audit\?[^"]+)"', five.text)
        assert older and "limit=5" in older.group(1)  # the next page keeps its size
        rest = await c.get(html.unescape(older.group(1)))
        assert rest.text.count("<code>name_paused</code>") == 2
        for bad in ("0", "1001", "five"):
            refused = await c.get("/audit", params={"limit": bad})
            assert refused.status_code == 400 and "limit must be" in refused.text
        typo = await c.get("/audit", params={"limt": 5})
        assert typo.status_code == 400
        assert "unknown parameter &#39;limt&#39;: did you mean limit?" in typo.text
        for path in ("/workers", "/crons", "/names"):
            answer = await c.get(path, params={"limit": 5})
            assert answer.status_code == 400, path
            assert "unknown parameter &#39;limit&#39;" in answer.text, path
            assert "reads no parameter" in answer.text, path
            assert (await c.get(path)).status_code == 200, path


async def test_the_overview_new_job_job_and_event_pages_refuse_unknown_parameters(
    processor: Any,
) -> None:
    """/, /jobs/new, /jobs/{id} and /events/{id} accepted any query parameter silently (/?foo=1
    was a 200) while the lists refuse one they do not read: the same refusal (the new-job form
    reads `name`, which chooses the name; the others nothing). The links and redirects the
    dashboard builds to them still open them."""
    p, _ = processor
    later = await due_tomorrow(p)
    event = await p.emit("shipped", {"n": 1})
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/", f"/jobs/{later.id}", f"/events/{event.id}", "/jobs/new"):
            answer = await c.get(path, params={"foo": 1})
            assert answer.status_code == 400, path
            assert "unknown parameter &#39;foo&#39;" in answer.text, path
            reads = "reads name" if path == "/jobs/new" else "reads no parameter"
            assert reads in answer.text, path
            assert (await c.get(path)).status_code == 200, path
        typo = await c.get("/jobs/new", params={"nmae": "send-email"})
        assert typo.status_code == 400 and "did you mean name?" in typo.text
        # the New job links of the jobs list (filtered by a name) and of the names page
        for listing in ("/jobs?name=send-email", "/names"):
            link = re.search(r'href="(/jobs/new\?name=send-email)"', (await c.get(listing)).text)
            assert link, listing
            form = await c.get(html.unescape(link.group(1)))
            assert form.status_code == 200 and '<option value="send-email" selected>' in form.text
        # an action on a job page returns to it (next=here), a new job opens its own page
        page = await c.get(f"/jobs/{later.id}")
        assert f'name="next" value="/jobs/{later.id}"' in page.text
        form = {"csrf_token": token(page.text), "next": f"/jobs/{later.id}"}
        resp = await c.post(f"/jobs/{later.id}/run-now", data=form)
        back = await c.get(resp.headers["location"])
        assert back.status_code == 200 and "Run now: 1 changed" in back.text
        form = {"csrf_token": token(page.text), "name": "send-email", "payload": "{}"}
        resp = await c.post("/jobs/new", data=form)
        assert resp.status_code == 303, resp.text
        assert (await c.get(resp.headers["location"])).status_code == 200


async def test_the_overview_and_job_apis_refuse_unknown_parameters(processor: Any) -> None:
    """/api/overview and /api/jobs/{id}, the JSON of the overview and a job's page, took any
    query parameter silently (/api/overview?minutes=60 answered the 30 minutes' figures with a
    200) while /api/jobs and the pages they mirror refuse one: the same refusal, as JSON."""
    p, _ = processor
    later = await due_tomorrow(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/api/overview", f"/api/jobs/{later.id}"):
            answer = await c.get(path, params={"minutes": 60})
            assert answer.status_code == 400, path
            assert "unknown parameter 'minutes'" in answer.json()["error"], path
            assert "reads no parameter" in answer.json()["error"], path
            assert (await c.get(path)).status_code == 200, path


async def test_a_misspelt_tag_filter_is_refused_with_a_did_you_mean(processor: Any) -> None:
    """/jobs?tag=reprots listed no job, as a tag with no job yet does, while a misspelt name
    is a 400 naming it: the tag is checked the same way (definitions, live workers' tags,
    stored jobs), on the page and the API."""
    p, _ = processor
    now = dt.datetime.now(dt.UTC)
    worker = D.new_worker(now, ["reports"], None, 1, ["send-email"], worker_timeout=600)
    await p.storage.workers.coll.insert_one(worker)  # a live worker run with --tags reports
    job = await p.schedule_job("send-email", {"to": "ada@example.com"})
    await p.storage.jobs.coll.update_one({"_id": object_id(job.id)}, {"$set": {"tag": "legacy"}})
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        api = await c.get("/api/jobs", params={"tag": "reprots"})
        assert api.status_code == 400
        assert api.json()["error"].startswith("unknown tag 'reprots' (did you mean 'reports'?)")
        page = await c.get("/jobs", params={"tag": "reprots"})
        assert page.status_code == 400 and "did you mean &#39;reports&#39;?" in page.text
        assert (await c.get("/api/jobs", params={"tag": "reports"})).json()["jobs"] == []
        listed = (await c.get("/api/jobs", params={"tag": "legacy"})).json()["jobs"]
        assert [j["id"] for j in listed] == [job.id]  # a tag only a stored job has


async def test_every_response_refuses_framing_by_another_origin(processor: Any) -> None:
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c, client(app, auth=None) as anonymous:
        for answer in (
            await c.get("/"),
            await c.get("/jobs/0123456789ab0123456789ab"),
            await c.get("/api/overview"),
            await c.get("/static/dashboard.css"),
            await anonymous.get("/jobs"),  # 401
            await anonymous.get("/healthz"),
        ):
            where = (answer.request.url.path, answer.status_code)
            assert answer.headers["x-frame-options"] == "SAMEORIGIN", where
            assert answer.headers["content-security-policy"] == "frame-ancestors 'self'", where
            assert answer.headers["x-content-type-options"] == "nosniff", where


async def test_a_very_long_dedup_key_is_cut_in_the_lists_and_shown_whole_on_its_page(
    processor: Any,
) -> None:
    """One job or event with a 10,000-character key made its list row (and the page) thousands
    of pixels long, or wide."""
    p, _ = processor
    job = await p.schedule_job("send-email", {"to": "a@b.c"}, key="k" * 10_000, delay=3600)
    event = await p.emit("order-shipped", {"n": 1}, key="e" * 10_000)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        jobs = (await c.get("/jobs")).text
        assert "k" * 59 + "…</span>" in jobs and "k" * 501 not in jobs
        events = (await c.get("/events")).text
        assert "e" * 59 + "…</span>" in events and "e" * 501 not in events
        assert "k" * 10_000 in (await c.get(f"/jobs/{job.id}")).text
        assert "e" * 10_000 in (await c.get(f"/events/{event.id}")).text


@pytest.mark.parametrize(
    "progress",
    [
        {"done": "x", "total": 0, "message": 5},
        {"done": 1e308, "total": 1e-308, "fraction": -1e300, "message": ["a"]},
        {"done": 1, "fraction": "half"},
        {"done": 1, "total": 2},  # no fraction at all
    ],
)
async def test_a_progress_written_by_another_program_never_breaks_the_pages(
    processor: Any, progress: dict[str, Any]
) -> None:
    """docs/scale.md: reading a job another program wrote never fails on a field of the wrong
    type. One such progress made the jobs list (every job on that page) and the job a 500."""
    p, _ = processor
    job = await p.schedule_job("send-email", {"to": "a@b.c"}, delay=3600)
    await p.storage.jobs.coll.update_one(
        {"_id": object_id(job.id)}, {"$set": {"status": "paused", "progress": progress}}
    )
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/jobs", f"/jobs/{job.id}", f"/api/jobs/{job.id}", "/api/jobs"):
            assert (await c.get(path)).status_code == 200, path


async def test_bson_values_another_program_wrote_in_progress_logs_or_output_are_shown_as_text(
    processor: Any,
) -> None:
    """An ObjectId or bytes another program wrote in a job's progress, a log line or its
    output made `model_dump(mode="json")` raise: `/api/jobs` (the whole page) and the job's
    `/api/jobs/{id}` answered 500, and `jobs show` (text and --json) exited 1 with a
    traceback. They are shown as text, as in a payload or a result."""
    p, _ = processor
    job = await p.schedule_job("send-email", {"to": "a@b.c"}, delay=3600)
    ref = ObjectId()
    await p.storage.jobs.coll.update_one(
        {"_id": object_id(job.id)},
        {
            "$set": {
                "progress": {"done": 1, "total": 2, "batch": ref},
                "logs": [{"level": "info", "message": "hello", "doc": ref, "raw": b"\xff"}],
                "output": {"result": None, "error": None, "ref": ref},
            }
        },
    )
    shown = (await p.get_job(job.id)).model_dump(mode="json")
    assert shown["progress"]["batch"] == str(ref) and shown["output"]["ref"] == str(ref)
    assert shown["logs"][0]["doc"] == str(ref) and shown["logs"][0]["raw"] == "/w=="
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/jobs", f"/jobs/{job.id}", f"/api/jobs/{job.id}", "/api/jobs"):
            assert (await c.get(path)).status_code == 200, path
        api = (await c.get(f"/api/jobs/{job.id}")).json()
    assert api["progress"]["batch"] == str(ref) and api["logs"][0]["doc"] == str(ref)


async def test_the_json_api_writes_every_date_in_utc_with_a_z(processor: Any) -> None:
    """/api/jobs and /api/jobs/{id} share the CLI's JSON: a job's history and the dates in its
    payload were written "...+00:00" where its own fields end in Z."""
    p, _ = processor
    when = dt.datetime(2030, 1, 31, 9, 0, tzinfo=dt.UTC)
    job_id = await failed_email(p, when=when)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        answers = [await c.get(path) for path in (f"/api/jobs/{job_id}", "/api/jobs")]
    assert [a.status_code for a in answers] == [200, 200]
    assert not [a.text for a in answers if "+00:00" in a.text]
    job = answers[0].json()
    assert job["payload"]["when"] == "2030-01-31T09:00:00Z"
    assert job["history"][0]["started_at"].endswith("Z") and job["created_at"].endswith("Z")


async def test_a_forged_flash_cookie_is_ignored(processor: Any) -> None:
    """A page of the same site (another port of the host, a sibling subdomain) can set the
    dashboard's cookies: a flash cookie it made is shown as text or ignored, never a 500 on
    every page."""
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    forged = {
        "deep": b"[" * 3000,
        "not json": b"<script>",
        "lines not a list": b'{"kind": "ok", "title": "t", "lines": "abc"}',
    }
    async with client(app) as c:
        for what, raw in forged.items():
            c.cookies.set("jp_dashboard_flash", base64.urlsafe_b64encode(raw).decode())
            answer = await c.get("/")
            assert answer.status_code == 200 and 'id="flash"' not in answer.text, what
        markup = b'{"kind": "x", "title": "<img src=x onerror=alert(1)>", "lines": ["<b>"]}'
        c.cookies.set("jp_dashboard_flash", base64.urlsafe_b64encode(markup).decode())
        shown = await c.get("/")
        assert shown.status_code == 200 and "&lt;img src=x onerror=alert(1)&gt;" in shown.text
        assert "<b>" not in shown.text and 'class="flash flash-ok"' in shown.text


async def test_out_of_range_dates_cursors_and_durations_are_400s_not_500s(processor: Any) -> None:
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    far = base64.urlsafe_b64encode(f"{'9' * 20}.{'ab' * 12}".encode()).decode().rstrip("=")
    end = base64.urlsafe_b64encode(f"253402300799999.{'ab' * 12}".encode()).decode()
    # a Decimal128 id that is none, or past its range: a 500 (InvalidOperation, Overflow)
    odd = [base64.urlsafe_b64encode(f"u.d:{x}".encode()).decode() for x in ("abc", "1e9999")]
    async with client(app) as c:
        for path, params, said in (
            *[
                (path, {"cursor": x}, "is not a cursor of a job listing")
                for x in odd
                for path in ("/jobs", "/api/jobs")
            ],
            ("/api/jobs", {"after": "0001-01-01T00:00:00+23:59"}, "is out of range"),
            ("/api/jobs", {"until": "9999-12-31T23:59:59-01:00"}, "is out of range"),
            ("/api/jobs", {"cursor": far}, "is not a cursor of a job listing"),
            ("/jobs", {"before": "0001-01-01T00:00:00+01:00"}, "is out of range"),
            ("/jobs", {"cursor": far}, "is not a cursor of a job listing"),
            ("/events", {"since": "0001-01-01T00:00:00+01:00"}, "is out of range"),
            ("/events", {"before": far}, "is not a cursor of an events listing"),
            ("/events", {"before": end.rstrip("=")}, "is not a cursor of an events listing"),
        ):
            answer = await c.get(path, params=params)
            assert answer.status_code == 400, (path, params)
            assert said in answer.text, (path, params)
        page = await c.get("/jobs")
        form = {"csrf_token": token(page.text), "next": "/jobs"}
        late = await c.post(
            "/jobs/new",
            data=form
            | {"name": "send-email", "payload": "{}", "scheduled_for": "0001-01-01T00:00+01:00"},
        )
        assert late.status_code == 400 and "is out of range" in late.text
        deep = '{"a":' * 5000 + "1" + "}" * 5000
        nested = await c.post("/jobs/new", data=form | {"name": "send-email", "payload": deep})
        assert nested.status_code == 400 and "payload is nested too deeply" in nested.text
        purge = form | {"status": "finished", "older_than": "99999999999999d", "confirm": "yes"}
        purged = await c.post("/jobs/purge", data=purge)
        assert purged.status_code == 303
        assert (
            "is too long" in base64.urlsafe_b64decode(purged.cookies["jp_dashboard_flash"]).decode()
        )


async def test_mounted_under_a_prefix_links_and_redirects_stay_inside(processor: Any) -> None:
    p, _ = processor
    job_id = await failed_email(p)
    app = host_app(create_dashboard(p, auth=AUTH))
    async with client(app) as c:
        assert (await c.get("/")).text == "my app"
        page = await c.get("/jobs/")
        assert page.status_code == 200
        hrefs = re.findall(r'(?:href|action|src)="([^"#]+)"', page.text)
        assert hrefs and all(h.startswith("/jobs/") or h == "/jobs" for h in hrefs), hrefs
        job = await c.get(f"/jobs/jobs/{job_id}")
        assert f'action="/jobs/jobs/{job_id}/retry"' in job.text
        resp = await c.post(
            f"/jobs/jobs/{job_id}/retry",
            data={"csrf_token": token(job.text), "next": f"/jobs/{job_id}"},
        )
        assert resp.headers["location"] == f"/jobs/jobs/{job_id}"
        # a `next` that a browser would read as another site (it drops tabs and newlines from
        # URLs: "/\t/evil.example" is "//evil.example") goes to the overview instead
        for hostile in ("/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "\\evil"):
            form = {"csrf_token": token(job.text), "next": hostile}
            kill = await c.post(f"/jobs/jobs/{job_id}/kill", data=form)
            assert (
                kill.status_code == 200
                and 'class="btn btn-ghost" href="/jobs/">Cancel' in kill.text
            )
            retried = await c.post(f"/jobs/jobs/{job_id}/retry", data=form)
            assert retried.headers["location"] == "/jobs/", hostile
        assert (await c.get("/jobs/static/dashboard.css")).status_code == 200
        icon = await c.get("/jobs/favicon.ico")  # browsers ask for it whatever the page says
        assert icon.status_code == 301 and icon.headers["location"] == "/jobs/static/favicon.svg"
        svg = await c.get("/jobs/static/favicon.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert '<link rel="icon" href="/jobs/static/favicon.svg"' in page.text
        metrics = await c.get("/jobs/metrics")
        assert metrics.status_code == 200
        assert 'job_processor_jobs{name="send-email"' in metrics.text
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        # the JSON API under the prefix: its errors are JSON, naming the mounted paths
        bad = await c.get("/jobs/api/jobs/nope")
        assert bad.status_code == 400 and "not a job id" in bad.json()["error"]
        missing = await c.get("/jobs/api/job")
        assert missing.status_code == 404
        assert "the API is /jobs/api/overview, /jobs/api/jobs" in missing.json()["error"]
        wrong_method = await c.options("/jobs/api/jobs")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"] == "OPTIONS is not allowed here"
        assert "GET" in wrong_method.headers["allow"]


async def test_what_runs_after_the_guard_can_read_the_body_again(processor: Any) -> None:
    """The guard reads the form (auth, CSRF); an app or middleware after it (Sentry's Starlette
    integration reads every request's body) must get that body too, not wait for it forever."""
    import asyncio

    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    from job_processor.dashboard.guard import Guard

    p, _ = processor
    dashboard_app = create_dashboard(p, auth=AUTH)
    seen: list[bytes] = []

    async def reads_the_body_again(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await Request(scope, receive).body())
        await PlainTextResponse("ok")(scope, receive, send)

    guard = Guard(reads_the_body_again, dashboard_app.state.dashboard)
    async with client(dashboard_app) as c:
        page = await c.get("/crons")
    body = f"csrf_token={token(page.text)}&x=1".encode()
    async with client(guard) as c:
        c.cookies = dict(page.cookies.items()) | dict(c.cookies)
        resp = await asyncio.wait_for(
            c.post(
                "/crons/nightly-cleanup/trigger",
                content=body,
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            5,
        )
    assert resp.text == "ok"
    assert seen == [body]


async def test_a_job_page_shows_its_checkpoint_runs_and_exit_hook(processor: Any) -> None:
    p, _ = processor
    report = await p.run_job("build-report", {"pages": 2})
    failed_id = await failed_email(p)
    await wait_until(lambda: _hook_done(p, failed_id))
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = (await c.get(f"/jobs/{report.id}")).text
        assert "Checkpoint state" in page and "pages_done" in page
        assert 'Runs <span class="count">1</span>' in page
        failed = (await c.get(f"/jobs/{failed_id}")).text
        assert '<span class="badge hook-done">done</span>' in failed  # on_job_exited ran
        assert "No checkpoint saved." in failed
        assert "ConnectionError: SMTP server refused the login" in failed


async def _hook_done(p: JobProcessor, job_id: str) -> bool:
    return (await p.get_job(job_id)).exit_hook == "done"


async def test_a_secret_echoed_by_the_result_or_quoted_with_spaces_is_masked(db: Any) -> None:
    password = "correct horse battery staple"

    async def echo(job: Any, signal: Any) -> dict[str, Any]:
        return {"note": f"logged in with {job.payload['password']}"}

    async def quoting(job: Any, signal: Any) -> None:
        raise RuntimeError(f"login refused: password='{job.payload['password']}' user=ada")

    from job_processor import JobDef, init_job_processor

    p = await init_job_processor(
        db, jobs={"echo": JobDef(handler=echo), "quote": JobDef(handler=quoting)}, poll_interval=0.2
    )
    async with p:
        done = await p.schedule_job("echo", {"password": password})
        failed = await p.schedule_job("quote", {"password": password})
        await wait_until(lambda: _status(p, done.id, S.FINISHED))
        await wait_until(lambda: _status(p, failed.id, S.ERRORED))
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in (f"/jobs/{done.id}", f"/api/jobs/{done.id}", f"/jobs/{failed.id}", "/jobs"):
            body = (await c.get(path)).text
            for word in ("correct horse", "horse battery", "battery staple"):
                assert word not in body, (path, word)
        result = (await c.get(f"/api/jobs/{done.id}")).json()["output"]["result"]
        assert result == {"note": f"logged in with {MASK}"}
        error = (await c.get(f"/api/jobs/{failed.id}")).json()["output"]["error"]
        assert f"password='{MASK}' user=ada" in error


async def test_a_loopback_dashboard_refuses_other_hosts_and_origins(processor: Any) -> None:
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 reaches the
    dashboard with `Host: evil.example`, and posts forms with `Origin: http://evil.example`."""
    p, _ = processor
    job_id = await failed_email(p)
    app = create_dashboard(p)  # no auth: loopback only
    async with client(app, base="http://127.0.0.1:8080", auth=None) as local:
        page = await local.get(f"/jobs/{job_id}")
        assert page.status_code == 200
        csrf = token(page.text)
        rebound = await local.get(f"/jobs/{job_id}", headers={"host": "evil.example:8080"})
        assert rebound.status_code == 400 and "Invalid Host header" in rebound.text
        assert (await local.get("/healthz", headers={"host": "evil.example"})).status_code == 400
        evil = {"origin": "http://evil.example:8080", "host": "evil.example:8080"}
        posted = await local.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf}, headers=evil)
        assert posted.status_code == 400
        from_evil = await local.post(
            f"/jobs/{job_id}/retry",
            data={"csrf_token": csrf},
            headers={"origin": "http://evil.example:8080"},
        )
        assert from_evil.status_code == 403 and "another site" in from_evil.text
        assert (await p.get_job(job_id)).status == S.ERRORED  # nothing was done
        for name in ("localhost:8080", "[::1]:8080", "app.localhost"):
            assert (await local.get("/", headers={"host": name})).status_code == 200, name
    named = create_dashboard(p, auth=AUTH, allowed_hosts=["jobs.example.com", "*.internal"])
    async with client(named, base="http://jobs.example.com") as c:
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/", headers={"host": "a.internal"})).status_code == 200
        assert (await c.get("/", headers={"host": "127.0.0.1"})).status_code == 400
    with pytest.raises(DashboardConfigError, match="allowed_hosts"):
        create_dashboard(p, allowed_hosts="jobs.example.com")  # type: ignore[arg-type]


def test_without_chromium_the_browser_tests_skip_in_one_line_and_fail_under_ci() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]
    command.append("tests/dashboard/test_browser.py")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"CHROMIUM": "none"}
    local = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert local.returncode in (0, 5), local.stdout  # 5: every test of the file skipped
    skipped = [line for line in local.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "apt-get install -y chromium" in skipped[0], local.stdout
    ci = subprocess.run(
        command, cwd=root, env=env | {"CI": "1"}, capture_output=True, text=True, timeout=120
    )
    assert ci.returncode != 0 and "Chromium is needed" in ci.stdout


async def test_runs_read_so_that_they_add_up_and_each_shows_its_outcome(processor: Any) -> None:
    """A resumable job paused twice by graceful stops, now in its third run, used no attempt;
    a failed attempt that was retried shows as failed, not as the pending it left."""
    import datetime as dt

    from job_processor.core import documents as D
    from job_processor.core.outcome import Ending, Policy, RunEnd, decide

    p, _ = processor
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    doc = D.as_running(
        D.new_job("send-email", {}, now=now, max_attempts=3, resumable=True), "w", now
    )
    history = []
    for end in (
        RunEnd(Ending.RETURNED, abort_reason="shutdown"),
        RunEnd(Ending.RAISED, error="ValueError: smtp down"),
    ):
        outcome = decide(doc, Policy(resumable=True), end, now)
        history.append(D.history_entry(doc, outcome, now))
    doc |= {"attempt": 3, "failures": 1, "history": history, "status": "paused"}
    doc.pop("worker_id")
    await p.storage.jobs.coll.insert_one(doc)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = (await c.get(f"/jobs/{doc['_id']}")).text
        assert "run 3 · 1 of 3 failures used" in page
        assert "attempt 3 of 3" not in page
        runs = page[page.index("<h2>Runs") :]
        assert 'class="badge s-paused">paused<' in runs
        assert 'class="badge s-failed">failed<' in runs


async def test_a_worker_with_stuck_threads_is_flagged(processor: Any) -> None:
    """Plain-def calls given up but still running (engine.threads) show on the worker's row and
    as a warning on the overview."""
    p, _ = processor
    await p.storage.workers.beat(p.worker.worker_id, p.clock.now(), {"stuck_threads": 2})
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        workers = (await c.get("/workers")).text
        assert "2 stuck threads" in workers
        overview = (await c.get("/")).text
        assert "2 plain-def handler or hook call(s) given up" in overview


async def test_a_name_holding_a_path_is_one_segment_of_the_forms_it_posts_to(
    processor: Any,
) -> None:
    """A name such as "a/../send-email" (names are free text) must post to its own path: with
    its "/" left as is, the browser would normalise the form's URL to send-email's."""
    p, _ = processor
    env = make_env(Masker([]))
    html = env.from_string(
        '{% import "_macros.html" as m %}{{ m.pause_button(name, False) }}'
    ).render(name="a/../send-email", url=lambda path: path, csrf_token="t")
    assert 'action="/names/a%2F..%2Fsend-email/pause"' in html
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        csrf = token((await c.get("/")).text)
        resp = await c.post(
            "/names/a%2F..%2Fsend-email/pause", data={"csrf_token": csrf, "next": "/names"}
        )
        assert resp.status_code == 303
        said = (await c.get(resp.headers["location"])).text
    assert "unknown job &#39;a/../send-email&#39;" in said  # the name arrived whole
    assert await p.storage.paused.names() == set()  # and send-email was not paused


async def test_cookies_are_secure_when_the_dashboard_is_served_over_https(processor: Any) -> None:
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app, base="http://127.0.0.1") as c:
        page = await c.get("/")
        assert "secure" not in page.headers["set-cookie"].lower()  # plain HTTP: it would be lost
    async with client(app, base="https://127.0.0.1") as c:
        page = await c.get("/")
        assert "; secure" in page.headers["set-cookie"].lower()
        csrf = token(page.text)
        resp = await c.post(
            "/names/send-email/pause",
            data={"csrf_token": csrf, "next": "/names"},
            headers={"origin": "https://127.0.0.1"},
        )
        assert resp.status_code == 303
        flash = [v for k, v in resp.headers.multi_items() if k == "set-cookie"]
        assert flash and all("; secure" in v.lower() for v in flash)


async def test_documents_another_program_wrote_never_break_the_jobs_pages(processor: Any) -> None:
    p, _ = processor
    coll = p.storage.jobs.coll
    bare = (await coll.insert_one({"name": "send-email", "payload": {}})).inserted_id
    odd = {"name": "send-email", "status": "queued", "payload": {"to": "<b>x</b>"}}
    queued = (await coll.insert_one(odd)).inserted_id
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/", "/names", "/metrics"):
            assert (await c.get(path)).status_code == 200, path
        listing = await c.get("/jobs")
        assert listing.status_code == 200
        assert str(bare) in listing.text and str(queued) in listing.text
        page = await c.get(f"/jobs/{queued}")
        assert page.status_code == 200
        assert "Invalid fields" in page.text and "&#34;status&#34;: &#34;queued&#34;" in page.text
        assert ">Retry<" not in page.text and ">Delete" not in page.text  # not ours to judge
        assert (await c.get(f"/jobs/{bare}")).status_code == 200


async def test_bidi_controls_show_as_escapes_in_text_and_form_values_keep_them(
    processor: Any,
) -> None:
    """A dedup key "invoice\u202efdp.exe" displayed as "invoiceexe.pdf" (Trojan-Source style).
    The page's text shows the control as `\\u202e`; a form field (the jobs filter) keeps the
    exact key, so that filtering by it still finds the job."""
    p, _ = processor
    key = "invoice\u202efdp.exe"
    job = await p.schedule_job("send-email", {"to": "a@b.c"}, key=key, delay=3600)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/jobs", f"/jobs/{job.id}"):
            page = (await c.get(path)).text
            assert "invoice\\u202efdp.exe" in page, path
        filtered = (await c.get("/jobs", params={"key": key})).text
        assert f'name="key" value="{key}"' in filtered  # the field's value is the key itself
        assert job.id in filtered
        api = (await c.get(f"/api/jobs/{job.id}")).json()
        assert api["key"] == key  # the API returns data as stored


async def test_bidi_controls_show_as_escapes_in_tooltips_too(processor: Any) -> None:
    """The jobs list shows a payload and an error cut short, the whole of them in the cell's
    tooltip (`title`): the tooltip read "invoiceexe.pdf" for "invoice\u202efdp.exe"."""
    p, _ = processor
    text = "invoice\u202efdp.exe"
    await p.schedule_job("send-email", {"to": text}, delay=3600)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = (await c.get("/jobs")).text
    assert "invoice\\u202efdp.exe" in page
    assert "\u202e" not in page  # no form field holds it here: nowhere as it is


async def test_forms_work_behind_a_proxy_that_rewrites_host_when_allowed_hosts_names_it(
    processor: Any,
) -> None:
    """Behind a proxy that sends its own Host (nginx's default `Host: $proxy_host`), the docs'
    remedy is `allowed_hosts` with the public name: the browser's forms come with the public
    Origin, an allowed host, and are accepted; another site's Origin is still refused."""
    p, _ = processor
    job_id = await failed_email(p)
    app = create_dashboard(p, auth=AUTH, allowed_hosts=["jobs.example.com", "127.0.0.1"])
    async with client(app, base="http://127.0.0.1:8080") as c:  # the Host the proxy sends
        page = await c.get(f"/jobs/{job_id}")
        form = {"csrf_token": token(page.text), "next": f"/jobs/{job_id}"}
        for other in ("https://evil.example", "https://jobs.example.com:9999"):
            evil = await c.post(f"/jobs/{job_id}/retry", data=form, headers={"origin": other})
            assert evil.status_code == 403 and "another site" in evil.text, other
        resp = await c.post(
            f"/jobs/{job_id}/retry", data=form, headers={"origin": "https://jobs.example.com"}
        )
        assert resp.status_code == 303, re.findall(r"Refused[^<]*", resp.text)
    entries = await p.storage.audit.recent(1)
    assert entries[0]["action"] == "jobs_retried"


async def test_a_loopback_dashboard_refuses_a_form_from_another_port_of_the_same_host(
    processor: Any,
) -> None:
    """A page on another port of the same host (a dev server at 127.0.0.1:3000) is another
    origin but the same site: the SameSite cookie rides along, and that page's server can set
    the cookie to a token it knows (cookies are not kept apart by port). The Origin check
    refuses its forms: without an explicit allowed_hosts, the Origin must be the Host, port
    included; with one, the same host name on another port is refused too."""
    p, _ = processor
    job_id = await failed_email(p)
    for app in (
        create_dashboard(p),  # no auth: loopback only, allowed_hosts not given
        create_dashboard(p, auth=AUTH, allowed_hosts=["127.0.0.1"]),
    ):
        async with client(app, base="http://127.0.0.1:8080") as local:
            page = await local.get(f"/jobs/{job_id}")
            form = {"csrf_token": token(page.text), "next": f"/jobs/{job_id}"}
            for origin in ("http://127.0.0.1:3000", "http://127.0.0.1"):
                other_port = await local.post(
                    f"/jobs/{job_id}/retry", data=form, headers={"origin": origin}
                )
                assert other_port.status_code == 403 and "another site" in other_port.text
    assert (await p.get_job(job_id)).status == S.ERRORED  # nothing was done


async def test_a_page_size_of_digits_int_cannot_read_is_refused_not_a_crash(processor: Any) -> None:
    """`str.isdigit()` is true for '²' (and other Unicode digits `int()` refuses): the filter
    form's page sizes do not turn such a `?limit=` into a server error."""
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        for path in ("/jobs", "/events"):
            resp = await c.get(path, params={"limit": "²"})
            assert resp.status_code == 400, (path, resp.status_code)
            assert "limit must be a whole number" in resp.text


async def test_the_new_job_form_offers_only_names_it_accepts(processor: Any) -> None:
    """Every worker registers the built-in "webhook-delivery", and subscribers register their
    deliveries' names; new_job refuses them (deliveries are made by emit()), so the form does
    not offer them: every name offered is one it accepts."""
    p, _ = processor
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        form = await c.get("/jobs/new")
        offered = re.findall(r'<option value="([^"]+)"', form.text)
        assert "send-email" in offered and "webhook-delivery" not in offered
        for name in offered:
            resp = await c.post(
                "/jobs/new", data={"csrf_token": token(form.text), "name": name, "payload": "{}"}
            )
            assert "is an event delivery" not in resp.text, name


async def test_the_crons_page_reads_a_task_of_a_status_this_version_does_not_know(
    processor: Any,
) -> None:
    """A cron task another program (or a newer version, in a rolling deploy) stored with a
    status of its own: the jobs list shows it as errored (invalid_fields); the crons page
    answered 500 (ValueError: 'queued' is not a valid JobStatus)."""
    import datetime as dt

    p, _ = processor
    doc = {
        "name": "nightly-cleanup",
        "status": "queued",
        "payload": {},
        "created_at": dt.datetime.now(dt.UTC),
    }
    odd = (await p.storage.jobs.coll.insert_one(doc)).inserted_id
    async with client(create_dashboard(p, auth=AUTH)) as c:
        assert (await c.get("/jobs?name=nightly-cleanup")).status_code == 200
        page = await c.get("/crons")
        assert page.status_code == 200
        assert f"/jobs/{odd}" in page.text


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "nightly-cleanup", "claim_name": "nightly-cleanup", "due_ms": 2**40},
        {"name": "nightly-cleanup"},  # a bare insert, not adopted yet
        {"name": "nightly-cleanup", "status": "errored", "output": "boom", "ended_at": "x"},
    ],
    ids=["minimal", "bare", "wrong-types"],
)
async def test_the_crons_page_reads_a_task_another_program_inserted(
    processor: Any, doc: dict[str, Any]
) -> None:
    """A manual run of a cron inserted from mongosh (no status nor created_at: no slot), or a
    task with an output or an end that is not one: the crons page answered 500."""
    p, _ = processor
    oid = (await p.storage.jobs.coll.insert_one(doc | {"payload": {}})).inserted_id
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = await c.get("/crons")
        assert page.status_code == 200, page.text
        assert f"/jobs/{oid}" in page.text


async def test_a_repeated_jobs_filter_is_refused_not_half_applied(processor: Any) -> None:
    """`?status=errored&status=killed` answered 200 with the killed jobs only (the last)."""
    p, _ = processor
    await failed_email(p)
    async with client(create_dashboard(p, auth=AUTH)) as c:
        r = await c.get("/api/jobs?status=errored&status=killed")
        assert r.status_code == 400 and "status" in r.text, (r.status_code, r.text)
        page = await c.get("/jobs?name=a&name=b")
        assert page.status_code == 400 and "name" in page.text


async def test_the_events_list_refuses_a_parameter_it_does_not_read(processor: Any) -> None:
    """`/events?after=...` (the jobs list's word) listed every event as if filtered."""
    p, _ = processor
    await p.emit("shipped", {"order": 1})
    async with client(create_dashboard(p, auth=AUTH)) as c:
        for query in ("after=2099-01-01T00:00:00", "event=nothing-by-that-name"):
            r = await c.get(f"/events?{query}")
            assert r.status_code == 400, (query, "listed every event as if filtered")
        r = await c.get("/events?after=2099-01-01T00:00:00")
        assert "since" in r.text  # the word this list uses
        assert (await c.get("/events?name=shipped")).status_code == 200


async def test_the_audit_log_offers_no_older_page_when_there_is_none(processor: Any) -> None:
    """Exactly 50 entries: "Older »" opened a page saying "No action recorded yet."."""
    from job_processor.ops.admin import Admin

    p, _ = processor
    admin = await Admin.open(p.storage.db, p.storage.prefix)
    for _ in range(25):
        await admin.pause("send-email", actor="cli")
        await admin.resume("send-email", actor="cli")
    async with client(create_dashboard(p, auth=AUTH)) as c:
        first = await c.get("/audit")
        assert first.text.count("<code>name_") == 50
        assert not re.search(r'href="(/audit\?before=[0-9a-f]+)"', first.text)
        await admin.pause("send-email", actor="cli")  # 51: an older page, with one entry
        first = await c.get("/audit")
        older = re.search(r'href="(/audit\?before=[0-9a-f]+)"', first.text)
        assert older is not None
        assert (await c.get(older.group(1))).text.count("<code>name_") == 1


@pytest.mark.parametrize(
    "message",
    [
        "could not parse invoice 42\nline 3: unexpected ','",  # an error quoting a reply
        # pydantic's ValidationError ends with "For further information visit https://..."
        "1 validation error for Invoice\namount\n  Input should be a valid integer\n"
        "    For further information visit https://errors.pydantic.dev/2/v/int_parsing",
    ],
)
async def test_the_error_line_is_the_errors_first_line_not_its_last(db: Any, message: str) -> None:
    """The jobs list's error line (and a run's, a delivery's, a cron run's) took the LAST line
    of the stored error: for a multi-line message a fragment of it, without the exception's
    type; `jobs list` shows the first ("ValueError: could not parse invoice 42")."""
    from job_processor import JobDef, init_job_processor
    from job_processor.dashboard.render import error_line

    async def parse(job: Any, signal: Any) -> None:
        raise ValueError(message)

    p = await init_job_processor(db, jobs={"parse": JobDef(handler=parse)}, poll_interval=0.2)
    async with p:
        job = await p.schedule_job("parse", {})
        await wait_until(lambda: _status(p, job.id, S.ERRORED))
        async with client(create_dashboard(p, auth=AUTH)) as c:
            page = await c.get("/jobs", params={"status": "errored"})
    assert page.status_code == 200
    line = re.search(r'class="err-line" title="([^"]*)"', page.text)
    assert line, page.text
    first = "ValueError: " + message.splitlines()[0]
    assert line.group(1).replace("&#39;", "'") == first
    bare = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'k'"
    assert error_line(bare) == "KeyError: 'k'"  # another writer's bare traceback: its end


async def test_crons_page_says_none_when_the_only_worker_cannot_claim_the_cron(db: Any) -> None:
    """The crons page shows "N live" (else "none": "No live worker runs it") from
    `list_crons().served_by`: a live worker whose worker_tags exclude the cron's tag fires
    its slots but never claims them; the names page and `status` say no live worker runs it."""
    from job_processor import AbortSignal, Job
    from tests.helpers import make

    async def tick(job: Job, signal: AbortSignal) -> None:
        return None

    crons = {"nightly": {"cron_string": "0 3 * * *", "handler": tick, "tag": "main"}}
    p = await make(db, {}, crons=crons, worker_tags=["secondary"])
    async with p, client(create_dashboard(p, auth=AUTH)) as c:
        page = await c.get("/crons")
    assert page.status_code == 200
    row = page.text[page.text.index("nightly") :]
    row = row[: row.index("</tr>")]
    assert "No live worker runs it" in row, row


async def test_the_overview_counts_a_crashed_worker_apart_from_the_alive(db: Any) -> None:
    """A worker whose claim loop crashed keeps its heartbeat and claims nothing: "0 workers
    alive", "1 crashed" (with the dead, if any)."""
    from job_processor.core import documents as D
    from tests.helpers import make

    p = await make(db, {})
    crashed = D.new_worker(p.clock.now(), None, "runner-1", 1, [], 30)
    crashed["crashed"] = "RuntimeError: boom"
    await p.storage.workers.register(crashed)
    async with client(create_dashboard(p, auth=AUTH)) as c:
        page = await c.get("/")
    assert page.status_code == 200
    stat = page.text[: page.text.index("workers alive")]
    stat = stat[stat.rindex('<a class="stat"') :] + page.text[page.text.index("workers alive") :]
    stat = stat[: stat.index("</a>")]
    assert re.search(r'stat-n">0<', stat), stat
    assert "1 crashed" in stat and "none dead" not in stat, stat
    async with client(create_dashboard(p, auth=AUTH)) as c:
        workers = await c.get("/workers")
    row = workers.text[workers.text.index("runner-1") :]
    row = row[: row.index("</tr>")]
    assert ">crashed<" in row and "RuntimeError: boom" in row and ">alive<" not in row, row


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (b"iban", DashboardConfigError),
        (7, DashboardConfigError),
        ({"iban": 1}, DashboardConfigError),
        (["iban", 7], DashboardConfigError),
        (["iban", ""], DashboardConfigError),
        ("iban", InvalidArgumentError),  # a Masker made directly (create_dashboard refused it)
    ],
)
async def test_sensitive_fields_that_are_no_list_of_names_are_refused(
    processor: Any, fields: Any, error: type[Exception]
) -> None:
    """Named with the fix, before the app is made: a Masker read a str as its characters
    (Masker("iban") masked fields named "i", "b", "a", "n" and showed the iban), a bytes as
    its numbers; create_dashboard raised a bare AttributeError or TypeError, or took a mapping's
    keys."""
    p, _ = processor
    with pytest.raises(error, match=r"^sensitive_fields (must be a|entries must)"):
        if error is InvalidArgumentError:
            Masker(fields)
        else:
            create_dashboard(p, auth=AUTH, sensitive_fields=fields)


@pytest.mark.parametrize("attempt", ["1", "x"])
async def test_a_confirmed_kill_kills_a_pending_foreign_job_whose_attempt_is_text(
    processor: Any, attempt: str
) -> None:
    """docs/scale.md: a job another program wrote reads as pending and `kill` kills it as it
    would a pending job; an `attempt` that is not a number is kept until a claim fails on it.
    The confirmation pins the attempt it shows (the number the text reads as, or 0): the kill
    finds that run, not "it has started another run" on every confirmation."""
    import datetime as dt

    from job_processor.core import documents as D

    p, _ = processor
    due = D.epoch_ms(p.clock.now() + dt.timedelta(hours=1))
    doc = {
        "name": "send-email",
        "claim_name": "send-email",
        "due_ms": due,
        "payload": {"to": "x@example.com"},
        "attempt": attempt,
    }
    job_id = str((await p.storage.jobs.coll.insert_one(doc)).inserted_id)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        csrf = token((await c.get(f"/jobs/{job_id}")).text)
        resp = await c.post(f"/jobs/{job_id}/kill", data={"csrf_token": csrf})
        confirmed = dict(
            re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', resp.text)
        )
        resp = await c.post(f"/jobs/{job_id}/kill", data=confirmed)
        page = await c.get(resp.headers["location"])
        assert "it has started another run" not in page.text, confirmed
        assert "Kill: 1 changed" in page.text
    assert (await p.get_job(job_id)).status == S.KILLED


async def test_a_lone_string_sensitive_fields_fix_keeps_the_default_names(processor: Any) -> None:
    """create_dashboard(sensitive_fields="iban") said "use ['iban']": a list replaces the
    defaults, so that fix would show password, token, api_key, ..."""
    p, _ = processor
    with pytest.raises(DashboardConfigError) as info:
        create_dashboard(p, auth=AUTH, sensitive_fields="iban")
    assert "[*DEFAULT_SENSITIVE_FIELDS, 'iban']" in str(info.value), str(info.value)


async def test_the_first_metrics_scrape_in_an_outage_answers_within_the_budget() -> None:
    """A dashboard's first /metrics builds its gauges with `metrics.for_database`, whose
    `Storage.open` asked buildInfo with no bound: in an outage it waited the client's server
    selection (30 s by default) before the scrape's budget (2 s) began, past Prometheus'
    scrape timeout (10 s), instead of answering `job_processor_scrape_error` 1."""
    import asyncio

    from pymongo import AsyncMongoClient

    from job_processor.storage.local_server import free_port
    from tests.ops.test_metrics import samples

    mongo: AsyncMongoClient[Any] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/x", tz_aware=True
    )
    try:
        async with client(create_dashboard(mongo["x"], auth=AUTH)) as c:
            try:
                resp = await asyncio.wait_for(c.get("/metrics"), timeout=10)
            except TimeoutError:
                raise AssertionError("/metrics did not answer within 10 s") from None
    finally:
        await mongo.close()
    assert resp.status_code == 200, resp.text[:300]
    assert samples(resp.text)[("job_processor_scrape_error", ())] == 1


async def test_the_first_metrics_scrape_in_an_outage_takes_one_budget_not_two() -> None:
    """The server's kind is asked within the first scrape's own budget: `for_database` spent a
    whole budget on it, then the scrape its own (about 4 s for a 2 s budget)."""
    import asyncio

    from pymongo import AsyncMongoClient

    from job_processor.storage.local_server import free_port
    from tests.ops.test_metrics import samples

    mongo: AsyncMongoClient[Any] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/x", tz_aware=True
    )
    loop = asyncio.get_running_loop()
    try:
        async with client(create_dashboard(mongo["x"], auth=AUTH)) as c:
            started = loop.time()
            resp = await asyncio.wait_for(c.get("/metrics"), timeout=10)
            took = loop.time() - started
    finally:
        await mongo.close()
    assert samples(resp.text)[("job_processor_scrape_error", ())] == 1
    assert took < 2.0 + 0.75, f"the first scrape took {took:.2f}s, over its 2 s budget"


async def test_a_duplicate_of_a_job_gone_meanwhile_lands_on_the_jobs_list(processor: Any) -> None:
    """83dd0bd sent an action on a job page whose job is gone to the jobs list with its
    message, but only for the verbs that report it skipped: a duplicate raises
    JobNotFoundError instead, and went back to the job's page, a 404 "Not found" under
    "Duplicate failed"."""

    p, _ = processor
    later = await due_tomorrow(p)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        csrf = token((await c.get(f"/jobs/{later.id}")).text)
        await p.storage.db["job_processor_jobs"].delete_one({"_id": ObjectId(later.id)})
        form = {"csrf_token": csrf, "next": f"/jobs/{later.id}"}
        resp = await c.post(f"/jobs/{later.id}/duplicate", data=form)
        assert resp.status_code == 303 and resp.headers["location"] == "/jobs"
        page = await c.get(resp.headers["location"])
        assert page.status_code == 200 and "Duplicate failed" in page.text
        assert f"no job with id &#39;{later.id}&#39;" in page.text
