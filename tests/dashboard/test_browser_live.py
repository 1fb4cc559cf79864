"""Live pages in a real browser once their data changed elsewhere: new rows on a list (its
pager follows the rows it shows), an event replayed from the CLI, a job deleted while its page
is open. Skipped without Chromium like the other browser tests (a failure with CI set)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from job_processor import AbortSignal, Event, Job, JobDef, Subscriber, init_job_processor
from job_processor.dashboard import create_dashboard
from job_processor.ops.admin import Admin

from .conftest import AUTH, signed_in
from .harness import SKIP_HINT, chromium_path, in_ci, serve

if chromium_path() is None and not in_ci():
    pytest.skip(SKIP_HINT, allow_module_level=True)


async def noop(job: Job, signal: AbortSignal) -> None:
    return None


async def on_shipped(event: Event, signal: AbortSignal) -> None:
    return None


async def values(page: Page, selector: str, attr: str) -> list[str]:
    found: list[str] = await page.locator(selector).evaluate_all(
        f"els => els.map(e => e.getAttribute('{attr}'))"
    )
    return found


async def test_the_jobs_next_page_after_a_live_refresh_skips_no_job(
    db: Any, browser: Browser
) -> None:
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started: pending
    old = [(await p.schedule_job("n", {"i": i})).id for i in range(40)]
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs?limit=20")
        boxes = page.locator("table.jobs input[name=ids]")
        await expect(boxes).to_have_count(20)
        new = [(await p.schedule_job("n", {"new": i})).id for i in range(5)]
        await expect(boxes.first).to_have_attribute("value", new[-1])  # the refresh shows them
        first_page = await values(page, "table.jobs input[name=ids]", "value")
        assert first_page == [*reversed(new), *reversed(old)][:20]
        await pause_live(page)  # no refresh replaces the link as it is clicked
        await page.get_by_role("link", name="Next page »").click()  # as the refresh built it
        await expect(page).to_have_url(re.compile("cursor="))
        await expect(boxes).to_have_count(20)
        second_page = await values(page, "table.jobs input[name=ids]", "value")
        assert second_page == list(reversed(old))[15:35]  # from the first one pushed off


async def test_the_events_older_page_after_a_live_refresh_skips_no_event(
    db: Any, browser: Browser
) -> None:
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    old = [(await p.emit("shipped", {"i": i})).id for i in range(40)]
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    links = "table.events tbody tr td:first-child a"
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/events?limit=20")
        await expect(page.locator(links)).to_have_count(20)
        new = [(await p.emit("shipped", {"new": i})).id for i in range(5)]
        await expect(page.locator(links).first).to_have_attribute("href", f"/events/{new[-1]}")
        await pause_live(page)  # no refresh replaces the link as it is clicked
        await page.get_by_role("link", name="Older »").click()
        await expect(page).to_have_url(re.compile("before="))
        await expect(page.locator(links)).to_have_count(20)
        second_page = [h.rsplit("/", 1)[1] for h in await values(page, links, "href")]
        assert second_page == list(reversed(old))[15:35]


async def test_an_event_page_says_it_was_replayed_elsewhere(db: Any, browser: Browser) -> None:
    p = await init_job_processor(  # not started: deliveries stay pending
        db,
        jobs={"n": JobDef(handler=noop)},
        subscribers={"shipped": [Subscriber("mail", handler=on_shipped)]},
    )
    event = await p.emit("shipped", {"order": 1})
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/events/{event.id}")
        replays = page.locator("dt:text-is('Replays') + dd")
        await expect(replays).to_have_text("none")
        # a colleague replays it from the CLI (job-processor events replay) meanwhile
        await (await Admin.open(db, p.storage.prefix)).replay_event(event.id, actor="cli")
        await expect(page.locator("table.deliveries > tbody > tr[data-target]")).to_have_count(2)
        await expect(replays).to_contain_text("1, last")
        await expect(page.locator("#event-summary")).to_contain_text("replayed 1\u00d7")


async def test_a_job_page_whose_job_was_deleted_says_so_and_offers_no_action(
    db: Any, browser: Browser
) -> None:
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    job = await p.schedule_job("n", {"i": 1})
    await p.kill_job(job.id)
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/{job.id}")
        await expect(page.locator("#job-status")).to_have_text("killed")
        await expect(page.get_by_role("button", name=re.compile("Retry"))).to_be_visible()
        await (await Admin.open(db, p.storage.prefix)).delete([job.id], actor="cli")
        await expect(page.locator("#live-toggle")).to_contain_text("Gone")
        await expect(page.locator("main")).to_contain_text(f"no job with id '{job.id}'")
        # its Live button does nothing now (a click made it say "Paused", then "Live", while
        # the page never refreshed again)
        await page.locator("#live-toggle").click()
        await expect(page.locator("#live-toggle .live-text")).to_have_text("Gone")
        await expect(page.get_by_role("button", name=re.compile("Retry"))).to_have_count(0)


async def test_a_clicked_checkbox_does_not_stop_the_live_refresh(db: Any, browser: Browser) -> None:
    """Selected checkboxes are kept across refreshes and only typing in a field holds the swap;
    a checkbox just clicked keeps the focus, and was taken for typing: the list froze (still
    saying Live) until the user clicked elsewhere."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started: pending
    first = await p.schedule_job("n", {"i": 0})
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs")
        boxes = page.locator("table.jobs input[name=ids]")
        await expect(boxes).to_have_count(1)
        await boxes.first.check()  # selected, as before Retry / Kill
        new = await p.schedule_job("n", {"i": 1})
        await expect(boxes).to_have_count(2)  # the refresh shows the new job
        await expect(boxes.first).to_have_attribute("value", new.id)
        await expect(page.locator(f"input[name=ids][value='{first.id}']")).to_be_checked()


async def test_an_opened_error_stays_open_across_a_live_refresh(
    browser: Browser, processor: Any
) -> None:
    """A run's error is folded in a <details>: opened to read its traceback, the next refresh
    (every refresh_seconds, an ended job's page too) folded it again."""
    from .harness import wait_until
    from .test_http import failed_email

    p, _ = processor
    failed = await failed_email(p)
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/{failed}")
        details = page.locator("#job-live details").first
        await details.locator("summary").click()
        await expect(details).to_have_attribute("open", "")
        before = await page.evaluate("document.body.getAttribute('data-refreshed')")

        async def refreshed() -> bool:
            now = await page.evaluate("document.body.getAttribute('data-refreshed')")
            return now is not None and now != before

        await wait_until(refreshed)
        await expect(details).to_have_attribute("open", "", timeout=1000)


async def refreshed_once(page: Page) -> None:
    """Wait (10 s at most) until the live script has swapped the page's live parts again."""
    before = await page.evaluate("document.body.getAttribute('data-refreshed')")
    await page.wait_for_function(
        "before => { const now = document.body.getAttribute('data-refreshed');"
        " return now !== null && now !== before; }",
        arg=before,
        timeout=10_000,
    )


async def test_a_scrolled_payload_keeps_its_scroll_position_across_a_live_refresh(
    db: Any, browser: Browser
) -> None:
    """ "Scroll position ... kept": a payload, result or error longer than 420 px scrolls inside
    its box; every refresh (an ended job's page too) put it back at the top."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    job = await p.schedule_job("n", {f"field_{i}": i for i in range(200)}, delay=3600)
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/{job.id}")
        payload = page.locator("#job-live pre.json").first
        await expect(payload).to_contain_text("field_199")
        await pause_live(page)  # a refresh under way would replace the box as it is scrolled
        await payload.evaluate("e => { e.scrollTop = 600; }")
        assert await payload.evaluate("e => e.scrollTop") == 600
        await page.locator("#live-toggle").click()  # live again: the refreshes keep it
        await expect(page.locator("#live-toggle .live-text")).to_have_text("Live")
        await refreshed_once(page)
        assert await page.locator("#job-live pre.json").first.evaluate("e => e.scrollTop") == 600


async def test_selected_jobs_stay_selected_when_a_live_refresh_pushes_them_off_the_page(
    db: Any, browser: Browser
) -> None:
    """ "Selected checkboxes ... are kept": select all 20 jobs of the first page; 5 jobs created
    meanwhile push 5 of them off it at the next refresh: their selection vanished with their
    rows (the header box still ticked), and Run now acted on 15."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started
    old = [(await p.schedule_job("n", {"i": i}, delay=3600)).id for i in range(20)]
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs?limit=20")
        await expect(page.locator("table.jobs input[name=ids]")).to_have_count(20)
        await page.get_by_label("select all").check()
        await expect(page.locator("table.jobs input[name=ids]:checked")).to_have_count(20)
        new = [(await p.schedule_job("n", {"new": i}, delay=3600)).id for i in range(5)]
        await refreshed_once(page)
        await refreshed_once(page)
        await page.locator("#bulk").get_by_role("button", name="Run now").click()
        await expect(page.locator("#flash")).to_contain_text("Run now:")
        due_now = [j.id for j in await p.get_jobs(old + new) if j.scheduled_for <= p.clock.now()]
        assert sorted(due_now) == sorted(old), await page.locator("#flash").inner_text()


async def test_unselecting_all_also_unselects_the_jobs_a_refresh_pushed_off_the_page(
    db: Any, browser: Browser
) -> None:
    """A selection carried past a refresh is dropped with "select all" unticked: a bulk action
    then acts on nothing the user still sees as selected."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})  # not started
    for i in range(20):
        await p.schedule_job("n", {"i": i}, delay=3600)
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs?limit=20")
        await page.get_by_label("select all").check()
        for i in range(5):
            await p.schedule_job("n", {"new": i}, delay=3600)
        await refreshed_once(page)
        await refreshed_once(page)
        assert await page.locator("input[data-carried]").count() == 5
        await page.get_by_label("select all").uncheck()
        await page.locator("#bulk").get_by_role("button", name="Run now").click()
        await expect(page.locator("#flash")).to_contain_text("Select at least one job first")


async def test_a_live_page_stops_refreshing_once_its_auth_callable_refuses(
    db: Any, browser: Browser
) -> None:
    """A callable `auth` that no longer allows the user (a session that expired) answers 403:
    the tab said "Offline", as if the server were down, and went on asking every period."""
    allowed = {"now": True}

    def staff_only(request: Any) -> str | bool:
        return "ada" if allowed["now"] else False

    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    app = create_dashboard(p, auth=staff_only, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{base}/jobs")
        live = page.locator("#live-toggle .live-text")
        await expect(live).to_have_text("Live")
        allowed["now"] = False
        await expect(live).to_have_text("Signed out: reload")


async def test_a_delete_confirmed_once_the_job_is_gone_lands_on_the_jobs_list(
    db: Any, browser: Browser
) -> None:
    """A delete confirmed on a confirmation page left open while the job was deleted elsewhere
    (or confirmed twice: Enter pressed again on its focused button): it went back to the job's
    page, a 404 "Not found" under "Delete: nothing changed", as if the delete had failed."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    job = await p.schedule_job("n", {"i": 1})
    await p.kill_job(job.id)
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        page = await signed_in(browser)
        await page.goto(f"{base}/jobs/{job.id}")
        await page.get_by_role("button", name="Delete…").click()
        await expect(page.get_by_role("heading", name=f"Delete job {job.id}?")).to_be_visible()
        await (await Admin.open(db, p.storage.prefix)).delete([job.id], actor="cli")
        async with page.expect_navigation() as went:
            await page.get_by_role("button", name="Delete job").click()
        response = await went.value
        assert response is not None and response.status == 200
        await expect(page).to_have_url(f"{base}/jobs")
        await expect(page.locator("#flash")).to_contain_text(f"{job.id}: not found")
        await expect(page.get_by_role("heading", name="Not found")).to_have_count(0)


async def test_a_live_refresh_in_another_tab_does_not_take_an_action_s_message(
    db: Any, browser: Browser
) -> None:
    """An action's message waits in a cookie for the page its redirect leads to; a live page
    open in another tab that refreshed in between read it (and dropped its cookie) though a
    refresh never shows it: the action's own page then said nothing of what it did."""
    p = await init_job_processor(db, jobs={"n": JobDef(handler=noop)})
    job = await p.schedule_job("n", {"i": 1}, delay=3600)
    app = create_dashboard(p, auth=AUTH, refresh_seconds=0.3)
    async with serve(app) as base:
        watching = await signed_in(browser)
        await watching.goto(f"{base}/jobs")
        acting = await watching.context.new_page()
        await acting.goto(f"{base}/jobs/{job.id}")
        token = await acting.locator("input[name=csrf_token]").first.input_value()
        sent = await acting.request.post(  # the form's POST, its redirect not followed yet
            f"{base}/jobs/{job.id}/run-now",
            form={"csrf_token": token, "next": f"/jobs/{job.id}"},
            headers={"origin": base},
            max_redirects=0,
        )
        assert sent.status == 303
        await refreshed_once(watching)
        await acting.goto(f"{base}/jobs/{job.id}")
        await expect(acting.locator("#flash")).to_contain_text("Run now: 1 changed")


async def pause_live(page: Any) -> None:
    """Live refreshes paused (the page as the last one left it): a click on a link is not
    lost to a refresh replacing it at that moment (a loaded machine)."""
    await page.locator("#live-toggle").click()
    await expect(page.locator("#live-toggle .live-text")).to_have_text("Paused")
