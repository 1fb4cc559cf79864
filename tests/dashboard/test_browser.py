"""The dashboard in a real browser: Playwright driving Debian's Chromium against uvicorn, a real
started JobProcessor and the test server. Without Chromium they are skipped with one line
saying how to enable them; with CI set, Chromium missing is a failure."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from job_processor import (
    AbortSignal,
    Event,
    InvalidArgumentError,
    JobProcessor,
    JobStatus,
    Subscriber,
)
from job_processor.admin import Admin
from job_processor.dashboard import create_dashboard

from .conftest import AUTH, signed_in
from .harness import (
    SKIP_HINT,
    Switches,
    chromium_path,
    host_app,
    in_ci,
    make_processor,
    serve,
    wait_until,
)

if chromium_path() is None and not in_ci():  # one line for the whole module, says how to enable
    pytest.skip(SKIP_HINT, allow_module_level=True)

S = JobStatus


async def status_is(p: JobProcessor, job_id: str, status: JobStatus) -> bool:
    return (await p.get_job(job_id)).status == status


async def emitted_and_delivered(p: JobProcessor) -> Event:
    """A "shipped" event emitted, once its one delivery has finished."""
    event = await p.emit("shipped", {"shipment_id": "s1"})

    async def delivered() -> bool:
        return [d.status for d in (await p.get_event(event.id)).deliveries] == ["finished"]

    await wait_until(delivered)
    return event


async def failed_email(p: JobProcessor) -> str:
    job = await p.schedule_job("send-email", {"to": "ada@example.com", "fail": True})
    await wait_until(lambda: status_is(p, job.id, S.ERRORED))
    return job.id


async def test_log_in_filter_retry_a_failed_job_and_watch_it_finish_then_trigger_a_cron(
    browser: Browser, processor: Any
) -> None:
    p, switches = processor
    ok = await p.run_job("send-email", {"to": "grace@example.com"})
    failed = await failed_email(p)
    app = host_app(create_dashboard(p, auth=AUTH, refresh_seconds=0.3))
    async with serve(app) as base:
        # refused without credentials, and with wrong ones (the browser gives up on the page)
        anonymous = await (await browser.new_context()).new_page()
        refused = await anonymous.request.get(f"{base}/jobs/")
        assert refused.status == 401 and "Log in" in await refused.text()
        assert refused.headers["www-authenticate"].startswith("Basic")
        wrong = await browser.new_context(http_credentials={"username": "admin", "password": "x"})
        bad = await wrong.new_page()
        response = await bad.goto(f"{base}/jobs/")
        assert response is not None and response.status == 401
        await expect(bad.get_by_role("heading", name="Not signed in")).to_be_visible()
        await expect(bad.get_by_role("heading", name="Queues")).to_have_count(0)

        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/")
        await expect(page.get_by_role("heading", name="Queues")).to_be_visible()
        row = page.locator("tr", has=page.get_by_role("link", name="send-email", exact=True))
        await expect(row.locator("a.n.s-errored-text")).to_have_text("1")
        await expect(page.get_by_text("runner-1")).to_be_visible()  # the worker's INSTANCE_ID

        # filter the jobs list down to the failed one
        await page.get_by_role("navigation").get_by_role("link", name="Jobs").click()
        await page.locator("#filters").get_by_label("Status").select_option("errored")
        await page.get_by_role("button", name="Filter").click()
        await expect(page).to_have_url(re.compile(r"status=errored"))
        rows = page.locator("table.jobs tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("SMTP server refused the login")
        assert ok.id[-8:] not in await page.locator("table.jobs").inner_text()

        # open it: the error with its traceback, the payload, the run history
        await rows.first.get_by_role("link", name="send-email").click()
        await expect(page).to_have_url(f"{base}/jobs/jobs/{failed}")
        await expect(page.locator("#job-status")).to_have_text("errored")
        await expect(page.locator("pre.error").first).to_contain_text("Traceback")
        await expect(page.locator("pre.json").first).to_contain_text("ada@example.com")

        # the mail server is fixed: retry, and watch the job finish without a reload
        switches.email_fails = False
        switches.hold = asyncio.Event()
        await page.get_by_role("button", name="Retry").click()
        await expect(page.locator("#flash")).to_contain_text("Retry: 1 changed")
        await expect(page.locator("#job-status")).to_have_text(re.compile("pending|running"))
        await page.evaluate("window.__not_reloaded = true")
        switches.hold.set()
        await expect(page.locator("#job-status")).to_have_text("finished")
        assert await page.evaluate("window.__not_reloaded === true")
        await expect(page.locator("pre.json").nth(1)).to_contain_text("ada@example.com")

        # trigger a cron; its run appears on the crons page as it finishes
        await page.get_by_role("navigation").get_by_role("link", name="Crons").click()
        cron = page.locator("tr", has=page.get_by_role("link", name="nightly-cleanup"))
        await expect(cron.locator("a.run")).to_have_count(0)
        await cron.get_by_role("button", name="Trigger now").click()
        await expect(page.locator("#flash")).to_contain_text("Trigger cron: 1 changed")
        await expect(cron.locator("a.run.s-finished")).to_have_count(1)
        tasks = await p.list_jobs(name="nightly-cleanup")
        assert [(t.trigger, t.status) for t in tasks] == [("manual", S.FINISHED)]


async def test_kill_a_running_job_after_confirming(browser: Browser, processor: Any) -> None:
    p, _ = processor
    job = await p.schedule_job("build-report", {"pages": 100_000, "page_seconds": 0.05})
    await wait_until(lambda: status_is(p, job.id, S.RUNNING))
    app = host_app(create_dashboard(p, auth=AUTH, refresh_seconds=0.3))
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/jobs/{job.id}")
        await expect(page.locator("#job-status")).to_have_text("running")
        await page.get_by_role("button", name="Kill…").click()
        await expect(page.get_by_role("heading", name=f"Kill job {job.id}?")).to_be_visible()
        await page.get_by_role("button", name="Kill job").click()
        await expect(page.locator("#flash")).to_contain_text("Kill: 1 changed")
        await expect(page.locator("#job-status")).to_have_text("killed")
        await expect(page.get_by_role("button", name="Retry")).to_be_visible()
    killed = await p.get_job(job.id)
    assert killed.status == S.KILLED
    assert (killed.state or {}).get("pages_done", 0) > 0
    entries = await p.storage.audit.recent(5)
    assert entries[0]["action"] == "jobs_killed" and entries[0]["actor"].startswith("admin ")


async def test_read_only_mode_shows_no_action_and_refuses_posts(
    browser: Browser, processor: Any
) -> None:
    p, _ = processor
    failed = await failed_email(p)
    app = host_app(create_dashboard(p, auth=AUTH, read_only=True))
    async with serve(app) as base:
        page = await signed_in(browser)
        for path in ("/jobs/", "/jobs/jobs", f"/jobs/jobs/{failed}", "/jobs/crons", "/jobs/names"):
            await page.goto(base + path)
            await expect(page.locator(".pill.ro")).to_have_text("read-only")
            await expect(page.locator("form[method=post]")).to_have_count(0)
            actions = page.locator("button", has_text=re.compile("Retry|Kill|Trigger"))
            await expect(actions).to_have_count(0)
        await page.goto(f"{base}/jobs/jobs/{failed}")
        await expect(page.locator("#job-status")).to_have_text("errored")
        csrf = next(c["value"] for c in await page.context.cookies() if "csrf" in c["name"])
        response = await page.request.post(
            f"{base}/jobs/jobs/{failed}/retry", form={"csrf_token": csrf}
        )
        assert response.status == 403
        assert "read-only" in await response.text()
    assert (await p.get_job(failed)).status == S.ERRORED


async def test_retry_with_javascript_disabled(browser: Browser, processor: Any) -> None:
    p, switches = processor
    failed = await failed_email(p)
    app = host_app(create_dashboard(p, auth=AUTH))
    async with serve(app) as base:
        page = await signed_in(browser, java_script_enabled=False)
        await page.goto(f"{base}/jobs/jobs?status=errored")
        await expect(page.locator("#live-toggle")).to_be_hidden()  # no script ran
        rows = page.locator("table.jobs tbody tr")
        await expect(rows).to_have_count(1)
        switches.email_fails = False
        # select it and use the bulk "Retry" (a plain form: no script involved)
        await rows.first.get_by_role("checkbox").check()
        await page.locator("#bulk").get_by_role("button", name="Retry").click()
        await expect(page.locator("#flash")).to_contain_text("Retry: 1 changed")
        await wait_until(lambda: status_is(p, failed, S.FINISHED))
        await page.goto(f"{base}/jobs/jobs/{failed}")
        await expect(page.locator("#job-status")).to_have_text("finished")


async def test_replay_an_event_after_confirming_and_watch_the_new_delivery_finish(
    browser: Browser, db: Any
) -> None:
    gate = asyncio.Event()

    async def send_email(event: Event, signal: AbortSignal) -> None:
        if event.delivery is not None and event.delivery.replay_id is not None:
            await gate.wait()  # the replay waits, so the page shows it pending, then finished

    subscribers = {"shipped": [Subscriber("send-email", handler=send_email)]}
    p = await make_processor(db, Switches(), subscribers=subscribers)
    async with p:
        event = await emitted_and_delivered(p)
        app = host_app(create_dashboard(p, auth=AUTH, refresh_seconds=0.3))
        async with serve(app) as base:
            page = await signed_in(browser)
            await page.goto(f"{base}/jobs/events")
            await page.get_by_role("link", name="shipped").first.click()
            await expect(page).to_have_url(f"{base}/jobs/events/{event.id}")
            rows = page.locator("table.deliveries > tbody > tr[data-target]")
            await expect(rows).to_have_count(1)
            await page.get_by_role("button", name="Replay all…").click()
            await expect(
                page.get_by_role("heading", name=re.compile("Replay event"))
            ).to_be_visible()
            assert (await p.get_event(event.id)).replays == 0  # nothing before confirming
            await page.get_by_role("button", name="Replay to all").click()
            await expect(page.locator("#flash")).to_contain_text("Replay: 1 new delivery")
            replay = page.locator("table.deliveries tr.replay")
            await expect(replay).to_have_count(1)
            await expect(replay.locator(".badge")).to_have_text(re.compile("pending|running"))
            await page.evaluate("window.__not_reloaded = true")
            gate.set()
            await expect(replay.locator(".badge")).to_have_text("finished")
            assert await page.evaluate("window.__not_reloaded === true")
            await replay.get_by_role("link").last.click()  # the delivery's job page
            await expect(page.locator("#job-status")).to_have_text("finished")
    after = await p.get_event(event.id)
    assert [d.replay_id is not None for d in after.deliveries] == [False, True]


async def test_the_jobs_table_fits_a_1400_pixel_window(browser: Browser, processor: Any) -> None:
    import datetime as dt

    from job_processor.core import documents as D

    p, _ = processor
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    long = {"to": "a-rather-long-address@example.com", "subject": "x" * 80}
    error = "ConnectionError: " + "the SMTP relay at smtp.example.com:587 refused the login " * 3
    for i in range(4):
        when = now - dt.timedelta(hours=30 + i, minutes=17)
        doc = D.new_job(
            "generate-monthly-customer-report", long, now=when, tag="reports-eu-west", key=f"k{i}"
        ) | {"type": "cron_task" if i % 2 else "simple", "trigger": "schedule"}
        doc |= {"status": "errored", "attempt": 12, "failures": 3, "max_attempts": 3}
        doc |= {"ended_at": when + dt.timedelta(minutes=42), "worker_id": "host-1234-" + "f" * 24}
        doc |= {"output": {"result": None, "error": error, "duration_ms": 2_512_345}}
        doc.pop("claim_name")
        await p.storage.jobs.coll.insert_one(doc)
    async with serve(create_dashboard(p, auth=AUTH)) as base:
        page = await signed_in(browser, viewport={"width": 1400, "height": 900})
        await page.goto(f"{base}/jobs")
        await expect(page.locator("table.jobs tbody tr")).to_have_count(4)
        widths = await page.evaluate(
            """() => ({page: document.documentElement.scrollWidth, window: window.innerWidth,
                table: document.querySelector('table.jobs').getBoundingClientRect().right})"""
        )
        assert widths["page"] <= widths["window"], widths  # no horizontal scrolling
        assert widths["table"] <= widths["window"], widths


async def test_a_page_of_another_origin_cannot_frame_the_dashboard(
    browser: Browser, processor: Any
) -> None:
    """Clickjacking: a page on another port of the same host (or a sibling subdomain) is
    same-site, so the browser sends the dashboard's SameSite cookies into a frame of it and a
    lured click on Delete… then Delete job would go through. The dashboard refuses to be framed
    by another origin; its own app may still frame it."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Mount, Route

    p, _ = processor
    failed = await failed_email(p)

    def framing(src: str) -> HTMLResponse:
        frame = f'<iframe src="{src}" onload="document.title = \'loaded\'" width=1200 height=700>'
        return HTMLResponse(f"<title>loading</title><h1>Win a prize</h1>{frame}")

    dashboard = create_dashboard(p, auth=AUTH)
    own = Starlette(
        routes=[
            Route("/framed", lambda r: framing(f"/jobs/jobs/{failed}")),
            Mount("/jobs", dashboard),
        ]
    )
    async with serve(own) as base:
        other = Starlette(routes=[Route("/", lambda r: framing(f"{base}/jobs/jobs/{failed}"))])
        async with serve(other) as attacker:
            page = await signed_in(browser)
            await page.goto(f"{base}/jobs/jobs/{failed}")  # signed in: the cookies are set
            await page.goto(f"{attacker}/")
            framed = page.frame_locator("iframe")
            await expect(page).to_have_title("loaded")  # the frame's load ended (refused)
            await expect(framed.get_by_role("button", name="Delete…")).to_have_count(0)
            await page.goto(f"{base}/framed")  # the app's own page may frame it
            await expect(page).to_have_title("loaded")
            await expect(framed.get_by_role("button", name="Delete…")).to_be_visible()
    assert (await p.get_job(failed)).status == S.ERRORED  # nothing was deleted


async def test_markup_in_job_fields_is_shown_as_text_and_never_runs(
    browser: Browser, processor: Any
) -> None:
    """Payloads, results, errors, log lines, progress messages, dedup keys and tags come from
    users and handlers: each is text on every page (no dialog opens), live refresh included."""
    import json

    from job_processor.storage import object_id

    p, _ = processor
    x = '"><img src=x onerror=alert(1)><script>alert(2)</script>'  # cut from 60 in lists
    job = await p.schedule_job("send-email", {"to": x, "url": "javascript:alert(4)"}, key=x)
    line = {"at": {"$date": "2026-01-01T00:00:00"}, "run": 1, "level": "info", "message": x}
    await p.storage.jobs.coll.update_one(
        {"_id": object_id(job.id)},
        {
            "$set": {
                "status": "paused",
                "tag": x,
                "output": {"result": {"html": x}, "error": f"RuntimeError: {x}"},
                "progress": {"done": 1, "total": 2, "fraction": 0.5, "message": x},
                "logs": [json.dumps(line)],
            }
        },
    )
    dialogs: list[str] = []
    async with serve(create_dashboard(p, auth=AUTH, refresh_seconds=0.3)) as base:
        page = await signed_in(browser)

        async def opened(dialog: Any) -> None:
            dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", opened)
        for path in ("/jobs", f"/jobs/{job.id}"):
            await page.goto(f"{base}{path}")
            await expect(page.get_by_text(x).first).to_be_visible()
            await page.wait_for_timeout(800)  # a few live refreshes swap the parts in place
        assert await page.locator("img[src=x], main script").count() == 0
    assert dialogs == []


async def test_a_live_page_stops_refreshing_once_its_login_is_refused(
    browser: Browser, processor: Any
) -> None:
    """The password changed while a tab refreshes itself: it says so and stops, instead of
    sending a failed login every few seconds (which would lock its address out)."""
    p, _ = processor
    dashboard = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(host_app(dashboard)) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/")
        live = page.locator("#live-toggle .live-text")
        await expect(live).to_have_text("Live")
        throttle = dashboard.state.dashboard.auth.throttle
        dashboard.state.dashboard.auth._password = b"rotated-password"
        await expect(live).to_have_text("Signed out: reload")
        failed = sum(len(f) for f in throttle._failures.values())
        await page.wait_for_timeout(1500)  # five refresh periods
        assert sum(len(f) for f in throttle._failures.values()) == failed  # none since
        assert failed <= 2  # the refused refresh (the browser may send it once more itself)


async def test_a_delivery_job_page_offers_no_duplicate_and_the_admin_refuses_one(
    browser: Browser, db: Any
) -> None:
    """A delivery is one job per (event, target) and a new delivery comes only from a replay
    (recorded on the event): its job page offers no Duplicate, and a duplicate asked for by
    other means (the CLI, a crafted POST) is refused naming the replay."""
    calls: list[Any] = []

    async def notify(event: Event, signal: AbortSignal) -> None:
        calls.append(event.delivery)

    subscribers = {"shipped": [Subscriber("notify", handler=notify)]}
    p = await make_processor(db, Switches(), subscribers=subscribers)
    async with p:
        event = await emitted_and_delivered(p)
        [delivery] = (await p.get_event(event.id)).deliveries
        assert delivery.job_id is not None
        job = await p.get_job(delivery.job_id)
        async with serve(create_dashboard(p, auth=AUTH)) as base:
            page = await signed_in(browser)
            await page.goto(f"{base}/jobs/{job.id}")
            await expect(page.locator("#job-status")).to_have_text("finished")
            await expect(page.get_by_role("button", name="Delete…")).to_be_visible()
            await expect(page.get_by_role("button", name="Duplicate")).to_have_count(0)
            with pytest.raises(InvalidArgumentError, match=r"event delivery: .*replay the event"):
                await Admin(p.storage.db).duplicate(job.id)
        assert [j.id for j in await p.list_jobs(name=job.name)] == [job.id]
        assert len(calls) == 1
        after = await p.get_event(event.id)
        assert after.replays == 0 and len(after.deliveries) == 1


async def test_the_filter_form_keeps_every_filter_the_list_applies(
    browser: Browser, processor: Any
) -> None:
    """A list reached by a link (`?after=...Z`, the CLI's `since=`, `limit=1000`) shows those
    filters in its form: changing another field and pressing Filter keeps them (a
    datetime-local input cannot hold "Z" or an offset, and the page-size choices have no 1000)."""
    from urllib.parse import parse_qs, urlsplit

    p, _ = processor
    await failed_email(p)
    async with serve(create_dashboard(p, auth=AUTH, refresh_seconds=0)) as base:
        page = await signed_in(browser)
        for path, field, kept in (
            ("jobs?after=2020-01-01T00:00:00Z", "after", "2020-01-01T00:00"),
            ("jobs?since=2020-01-01T01:00:00%2B01:00", "after", "2020-01-01T00:00"),
            ("jobs?after=2020-01-01", "after", "2020-01-01T00:00"),
            ("jobs?limit=1000", "limit", "1000"),
        ):
            await page.goto(f"{base}/{path}")
            await expect(page.locator("table.jobs tbody tr")).to_have_count(1)
            await page.locator("#filters").get_by_label("Status").select_option("errored")
            await page.get_by_role("button", name="Filter").click()
            await expect(page).to_have_url(re.compile(r"status=errored"))
            got = parse_qs(urlsplit(page.url).query).get(field, [""])[0]
            assert got.startswith(kept), (path, page.url)
        await page.goto(f"{base}/events?since=2020-01-01T00:00:00Z&limit=500")
        await expect(page.locator("#filters input[name=since]")).to_have_value("2020-01-01T00:00")
        await expect(page.locator("#filters select[name=limit]")).to_have_value("500")


async def test_a_list_with_a_refused_filter_is_not_live_and_never_says_offline(
    browser: Browser, processor: Any
) -> None:
    """The server answers (400: the filter is wrong, the page says why): the page does not
    refresh itself, so its Live label never claims the dashboard is unreachable."""
    p, _ = processor
    async with serve(create_dashboard(p, auth=AUTH, refresh_seconds=0.3)) as base:
        page = await signed_in(browser)
        for path, said in (("jobs?status=bogus", "Cannot list jobs"), ("events?limit=x", "")):
            await page.goto(f"{base}/{path}")
            if said:
                await expect(page.get_by_text(said)).to_be_visible()
            await expect(page.locator("body[data-refresh]")).to_have_count(0)
        await page.goto(f"{base}/jobs")  # a good list is live
        await expect(page.locator("body[data-refresh]")).to_have_count(1)


async def test_a_listed_job_with_a_text_id_offers_no_link_nor_checkbox(
    browser: Browser, processor: Any
) -> None:
    """Another program's bare insert whose `_id` is text is listed; its link led to a 400 and
    its checkbox, under "select all", made the whole bulk Retry fail ("'ext-1' is not a job
    id"), the ObjectId jobs selected beside it not retried."""
    p, _ = processor
    failed = await failed_email(p)
    await p.storage.jobs.coll.insert_one(
        {"_id": "ext-1", "name": "send-email", "status": "errored", "payload": {}}
    )
    async with serve(create_dashboard(p, auth=AUTH, refresh_seconds=0)) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs?status=errored")
        rows = page.locator("table.jobs tbody tr")
        await expect(rows).to_have_count(2)
        foreign = rows.filter(has_text="ext-1")
        await expect(foreign.locator("a")).to_have_count(0)
        await expect(foreign.locator("input[type=checkbox]")).to_have_count(0)
        # no date recorded (no created_at, a text _id, no due_ms): "—", not "20794 d ago"
        await expect(foreign).not_to_contain_text("ago")
        await expect(foreign).to_contain_text("—")
        await expect(foreign).not_to_contain_text("due")  # ended: no due time, no end recorded
        await page.get_by_label("select all").check()
        await page.locator("#bulk").get_by_role("button", name="Retry").click()
        await expect(page.locator("#flash")).to_be_visible()
        flash = await page.locator("#flash").inner_text()
        # the ObjectId job retried (it may have run and failed again since: not its status)
        assert "Retry failed" not in flash and "1 changed" in flash and failed in flash, flash


async def test_select_all_is_offered_only_where_it_works(browser: Browser, db: Any) -> None:
    """ "With JavaScript off every page and action works the same": the header's "select all"
    box is ticked by the script only; with JavaScript off it ticked itself, and the bulk Run
    now that followed said "Select at least one job first". It is shown by the script."""
    from job_processor import Job, JobDef, init_job_processor

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started
    ids = [(await p.schedule_job("n", {"i": i}, delay=3600)).id for i in range(3)]
    async with serve(create_dashboard(p, auth=AUTH, refresh_seconds=0)) as base:
        page = await signed_in(browser, java_script_enabled=False)
        await page.goto(f"{base}/jobs")
        await expect(page.locator("table.jobs input[name=ids]")).to_have_count(3)
        assert not await page.get_by_label("select all").is_visible()
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs")
        await page.get_by_label("select all").check()
        await page.locator("#bulk").get_by_role("button", name="Run now").click()
        await expect(page.locator("#flash")).to_contain_text("Run now: 3 changed")
        assert all(j.scheduled_for <= p.clock.now() for j in await p.get_jobs(ids))


@pytest.mark.parametrize("path", ["/", "/names", "/jobs?name={name}", "/jobs/{id}"])
async def test_a_300_character_job_name_does_not_widen_the_pages(
    browser: Browser, db: Any, path: str
) -> None:
    """Names have no length limit: a 300-character name made the job page 4,340 px wide at
    1,400, the overview's and the filtered list's tables pushed their counts and buttons far
    to the right."""
    from job_processor import Job, JobDef, init_job_processor

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    name = "reports." + "n" * 292
    p = await init_job_processor(db, jobs={name: JobDef(handler=noop)})
    job = await p.schedule_job(name, {"x": 1}, delay=3600)
    async with serve(create_dashboard(p, auth=AUTH, refresh_seconds=0)) as base:
        page = await signed_in(browser, viewport={"width": 1400, "height": 900})
        await page.goto(base + path.format(name=name, id=job.id))
        widths = await page.evaluate(
            """() => ({page: document.documentElement.scrollWidth, window: window.innerWidth,
                tables: [...document.querySelectorAll('.table-wrap')].map(
                    w => w.scrollWidth - w.clientWidth)})"""
        )
        assert widths["page"] <= widths["window"], widths  # no horizontal scrolling
        assert all(extra <= 0 for extra in widths["tables"]), widths  # nor inside a table


async def test_an_action_s_message_survives_the_login_challenge_of_the_page_it_leads_to(
    browser: Browser, db: Any
) -> None:
    """A browser sends its basic-auth credentials unasked only below the path it first logged
    in at: a job page opened from a link, its job deleted, led to /jobs, where the browser
    first got the 401 challenge. That page took the action's message (and dropped its
    cookie), and the page shown after the login said nothing of the delete."""
    from job_processor import Job, JobDef, init_job_processor

    async def noop(job: Job, signal: AbortSignal) -> None:
        return None

    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    job = await p.schedule_job("n", {"i": 1})
    await p.kill_job(job.id)
    async with serve(host_app(create_dashboard(p, auth=AUTH, refresh_seconds=0))) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/jobs/{job.id}")  # the first page: a link to the job
        await page.get_by_role("button", name="Delete…").click()
        await page.get_by_role("button", name="Delete job").click()
        await expect(page).to_have_url(f"{base}/jobs/jobs")
        await expect(page.locator("#flash")).to_contain_text("Delete: 1 changed")


async def test_a_names_new_job_link_opens_the_form_and_lands_on_the_new_jobs_live_page(
    browser: Browser, processor: Any
) -> None:
    """The pages that read no query parameter refuse one (/jobs/new reads `name`): the links
    and redirects the dashboard builds to them still open them, live."""
    p, switches = processor
    switches.hold = asyncio.Event()
    app = host_app(create_dashboard(p, auth=AUTH, refresh_seconds=0.3))
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/names")
        row = page.locator("tr", has=page.get_by_text("send-email", exact=True))
        await row.get_by_role("link", name="New job").click()
        await expect(page).to_have_url(f"{base}/jobs/jobs/new?name=send-email")
        await expect(page.get_by_label("Name")).to_have_value("send-email")
        await page.get_by_label("Payload").fill('{"to": "ada@example.com"}')
        await page.get_by_role("button", name="Create job").click()
        await expect(page.locator("#flash")).to_contain_text("New job: 1 changed")
        await expect(page.locator("#job-status")).to_have_text(re.compile("pending|running"))
        switches.hold.set()
        await expect(page.locator("#job-status")).to_have_text("finished")  # live, not refused
        refused = await page.request.get(f"{base}/jobs/?name=send-email")
        assert refused.status == 400 and "reads no parameter" in await refused.text()
