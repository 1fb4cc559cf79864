"""Screenshots of the dashboard's main pages for the docs (docs/screenshots/*.png).

To run (needs Debian's chromium: apt-get install -y chromium):
    .venv/bin/python benchmarks/screenshots.py            # a throwaway nx-27017 server
    MONGODB_URL=mongodb://localhost:27017/shots .venv/bin/python benchmarks/screenshots.py

It starts a real JobProcessor with a few jobs, crons, event subscribers and a webhook endpoint
(a local HTTP receiver), lets jobs finish, fail, run and get killed, emits and replays events,
serves the dashboard mounted at /jobs with uvicorn and drives Chromium with Playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymongo import AsyncMongoClient  # noqa: E402

from job_processor import (  # noqa: E402
    AbortSignal,
    CronDef,
    Event,
    Job,
    JobDef,
    Subscriber,
    WebhookOptions,
    init_job_processor,
)
from job_processor.core.definitions import Backoff, Limit  # noqa: E402
from job_processor.dashboard import create_dashboard  # noqa: E402
from job_processor.events.webhooks import generate_secret  # noqa: E402
from job_processor.storage.local_server import local_server  # noqa: E402
from tests.dashboard.harness import (  # noqa: E402
    CHROMIUM_ARGS,
    INSTALL_HINT,
    chromium_path,
    host_app,
    serve,
    wait_until,
)
from tests.receiver import Receiver, Reply, receiving  # noqa: E402

PAGES = {
    "overview": "/jobs/",
    "jobs": "/jobs/jobs",
    "failed-job": None,  # filled in: the page of an errored job
    "crons": "/jobs/crons",
    "events": "/jobs/events",
    "event": None,  # filled in: an event with its deliveries, a webhook retried, a replay
}
#: With --all: the other pages too (to look at them; the docs show the four above).
MORE = {
    "workers": "/jobs/workers",
    "names": "/jobs/names",
    "audit": "/jobs/audit",
    "new-job": "/jobs/jobs/new?name=send-email",
    "running-job": None,  # filled in
}


async def send_email(job: Job, signal: AbortSignal) -> dict[str, Any]:
    await asyncio.sleep(0.02)
    if job.payload.get("to", "").endswith("@bounce.example"):
        raise ConnectionError(
            f"SMTP 550 mailbox unavailable for {job.payload['to']} "
            f"(login with password {job.payload.get('smtp_password')!r} accepted)"
        )
    return {"sent_to": job.payload["to"], "message_id": f"<{job.id[-8:]}@mail.example>"}


async def build_report(job: Job, signal: AbortSignal) -> dict[str, Any]:
    done = int((job.state or {}).get("pages_done", 0))
    while done < int(job.payload.get("pages", 5)):
        signal.raise_if_aborted()
        await asyncio.sleep(float(job.payload.get("page_seconds", 0.05)))
        done += 1
        await job.checkpoint({"pages_done": done, "last_page": f"p{done}"})
    return {"pages": done, "url": "https://reports.example/r/42.pdf"}


async def noop(job: Job, signal: AbortSignal) -> dict[str, Any]:
    return {"ok": True}


async def notify_customer(event: Event, signal: AbortSignal) -> dict[str, Any]:
    return {"sms_sent_to": event.payload.get("phone")}


async def update_crm(event: Event, signal: AbortSignal) -> None:
    raise ConnectionError(f"CRM timeout updating order {event.payload.get('order_id')}")


async def push_tracking(event: Event, signal: AbortSignal) -> dict[str, Any]:
    return {"tracking_url": f"https://track.example/{event.payload.get('order_id')}"}


SUBSCRIBERS: dict[str, Any] = {
    "order_shipped": [
        Subscriber("notify-customer", handler=notify_customer),
        Subscriber("update-crm", handler=update_crm, mode="serial", max_attempts=2),
        Subscriber("push-tracking", handler=push_tracking, mode="serial"),
    ],
    "invoice_paid": [Subscriber("notify-customer", handler=notify_customer)],
}


async def events(processor: Any, receiver: Receiver) -> str:
    """A few events; the one returned has a webhook answered 503 then 200, a serial chain
    stopped by a failing CRM, and a replay of one subscriber."""
    url = receiver.script("/hooks/erp", Reply(503, body=b"Service Unavailable"), Reply(200))
    await processor.webhooks.add(
        url=url, events=["order_shipped"], secret_ref="erp", description="ERP"
    )
    for i in range(6):
        await processor.emit("invoice_paid", {"invoice": f"INV-{2040 + i}", "amount": 120 + i})
    shown = await processor.emit(
        "order_shipped",
        {"order_id": "A-1042", "phone": "+33 6 12 34 56 78", "api_token": "tok_live_8f2c"},
        key="A-1042",
    )
    for i in range(3):
        await processor.emit("order_shipped", {"order_id": f"A-{1043 + i}", "phone": "+33 6"})

    async def ended() -> bool:
        event = await processor.get_event(shown.id)
        statuses = {d.target: d.status for d in event.deliveries}
        return set(statuses.values()) <= {"finished", "errored", "skipped"} and len(statuses) == 4

    await wait_until(ended, 30)
    await processor.replay_event(shown.id, subscribers=["notify-customer"])
    return str(shown.id)


async def fill(db: Any, receiver: Receiver) -> tuple[Any, str, str, str]:
    processor = await init_job_processor(
        db,
        subscribers=SUBSCRIBERS,
        webhook_secrets={"erp": generate_secret()},
        webhook_options=WebhookOptions(
            backoff=Backoff(kind="fixed", base_seconds=0.3, jitter=False)
        ),
        jobs={
            "send-email": JobDef(
                handler=send_email,
                on_job_exited=lambda job: asyncio.sleep(0),
                limit=Limit(key="smtp-provider", concurrency=3, rate=120, per_seconds=60),
            ),
            "build-report": JobDef(handler=build_report, resumable=True, max_attempts=3),
            "sync-crm": JobDef(handler=noop, tag="main"),
        },
        crons={
            "nightly-cleanup": CronDef(
                handler=noop, cron_string="0 3 * * *", timezone="Europe/Paris"
            ),
            "hourly-digest": CronDef(handler=noop, cron_string="0 * * * *"),
        },
        worker_tags=["web"],  # sync-crm (tag "main") has no worker here: a warning
        concurrency=4,
        poll_interval=0.2,
        heartbeat_interval=0.5,
        worker_timeout=3.0,
        instance_id="runner-1",
    )
    await processor.start()
    event = await events(processor, receiver)  # first: the jobs page shows the jobs on top
    failed = ""
    for i in range(24):
        to = f"user{i}@bounce.example" if i % 8 == 3 else f"user{i}@example.com"
        job = await processor.schedule_job(
            "send-email", {"to": to, "template": "welcome", "smtp_password": "hunter2"}
        )
        failed = job.id if to.endswith("bounce.example") else failed
    long = await processor.schedule_job("build-report", {"pages": 10_000, "page_seconds": 0.2})
    killed = await processor.schedule_job("build-report", {"pages": 10_000, "page_seconds": 0.2})
    await processor.schedule_job("build-report", {"pages": 4})
    for _ in range(3):
        await processor.trigger_cron("nightly-cleanup")
    await processor.trigger_cron("hourly-digest")
    for i in range(3):
        await processor.schedule_job("sync-crm", {"account": 1000 + i})
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    await processor.schedule_job("send-email", {"to": "later@example.com"}, scheduled_for=soon)

    async def settled() -> bool:
        status = await processor.get_status()
        k = await processor.get_job(killed.id)
        return status.queue["due"] <= 3 and k.status.value == "running"

    await wait_until(settled, 30)
    await processor.kill_job(killed.id)
    await wait_until(lambda: _ended(processor, killed.id), 15)
    await wait_until(lambda: _running(processor, long.id), 15)
    return processor, failed, long.id, event


async def _ended(processor: Any, job_id: str) -> bool:
    return bool((await processor.get_job(job_id)).status.value == "killed")


async def _running(processor: Any, job_id: str) -> bool:
    return bool((await processor.get_job(job_id)).status.value == "running")


async def shoot(url: str, out: Path, pages: dict[str, str | None], mobile: bool) -> None:
    from playwright.async_api import async_playwright

    exe = chromium_path()
    if exe is None:
        raise SystemExit(INSTALL_HINT)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(
            viewport={"width": 1360, "height": 860},
            http_credentials={"username": "admin", "password": "secret"},
            device_scale_factor=1,
        )
        page = await context.new_page()
        for name, path in pages.items():
            await page.goto(url + str(path))
            await page.wait_for_load_state("networkidle")
            target = out / f"{name}.png"
            await page.screenshot(path=str(target), full_page=True)
            print(f"wrote {target}")
        if mobile:
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.goto(url + "/jobs/")
            await page.screenshot(path=str(out / "mobile-overview.png"), full_page=True)
            print(f"wrote {out / 'mobile-overview.png'}")
        await browser.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--all", action="store_true", help="also the other pages, and a phone")
    args = parser.parse_args()
    out = Path(args.out)
    os.makedirs(out, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = os.environ.get("MONGODB_URL") or stack.enter_context(local_server()).url
        client: Any = AsyncMongoClient(url, tz_aware=True)
        db = client[f"jp_shots_{uuid.uuid4().hex[:8]}"]
        receiver = stack.enter_context(receiving())
        try:
            processor, failed, running, event = await fill(db, receiver)
            PAGES["failed-job"] = f"/jobs/jobs/{failed}"
            PAGES["event"] = f"/jobs/events/{event}"
            MORE["running-job"] = f"/jobs/jobs/{running}"
            pages = PAGES | (MORE if args.all else {})
            dashboard = create_dashboard(processor, auth=("admin", "secret"))
            async with serve(host_app(dashboard)) as base:
                await shoot(base, out, pages, args.all)
            await processor.stop()
        finally:
            await client.drop_database(db.name)
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
