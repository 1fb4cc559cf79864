"""`job-processor demo`: jobs scheduled and run, one failing, one killed, one resumed after a
restart; an event delivered to its subscribers and to a webhook endpoint (a local receiver that
fails twice). Uses MONGODB_URL when set, otherwise a throwaway local nx-27017 server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .core.abort import AbortSignal
from .core.definitions import Backoff, JobDef, Subscriber
from .core.errors import DatabaseUnreachableError, InvalidArgumentError
from .core.models import Event, Job
from .core.status import JobStatus
from .engine.signals import STOP_OR_HANGUP, stop_on_signals, unless_set
from .events.webhooks import generate_secret
from .processor import JobProcessor, init_job_processor
from .storage.connect import check_reachable, close_database, open_database, shown_url
from .storage.local_server import (
    LocalServerError,
    LocalServerMissing,
    check_installed,
    local_server,
)

STEPS = 6
#: Seconds the demo waits for the server's first answer.
CONNECT_TIMEOUT = 5.0


def say(text: str) -> None:
    print(text, flush=True)


def say_error(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def show(job: Job) -> None:
    extra = ""
    if job.status == JobStatus.FINISHED:
        extra = f"result={job.result!r}"
    elif job.error:
        extra = f"error={job.error.splitlines()[0]!r}"
    if job.state:
        extra += f" checkpoint={job.state}"
    say(f"    {job.name:<16} {job.status.value:<9} runs={job.attempt} {extra}")


async def send_email(job: Job, signal: AbortSignal) -> dict[str, Any]:
    await asyncio.sleep(0.2)
    return {"sent_to": job.payload["to"]}


async def flaky_report(job: Job, signal: AbortSignal) -> None:
    await asyncio.sleep(0.1)
    raise ConnectionError("report provider answered 503")


async def webhook(job: Job, signal: AbortSignal) -> str:
    if job.failures < 2:  # the third-party endpoint is flaky: the first two attempts fail
        raise TimeoutError("webhook endpoint timed out")
    return "delivered"


async def tick(job: Job, signal: AbortSignal) -> str:
    return job.scheduled_for.strftime("%H:%M:%S")


async def long_import(job: Job, signal: AbortSignal) -> None:
    await signal.wait()  # a well-behaved handler returns soon after the signal
    signal.raise_if_aborted()


async def reindex(job: Job, signal: AbortSignal) -> dict[str, int]:
    done = (job.state or {}).get("done", 0)
    while done < STEPS:
        signal.raise_if_aborted()  # on shutdown: stop here, the checkpoint is saved
        await asyncio.sleep(0.3)
        done += 1
        await job.checkpoint({"done": done})
    return {"indexed_batches": done}


exits: list[str] = []


def on_exit(job: Job) -> None:
    exits.append(f"{job.name}:{job.status.value}")


JOBS = {
    "send-email": JobDef(handler=send_email, on_job_exited=on_exit),
    "flaky-report": JobDef(handler=flaky_report, on_job_exited=on_exit),
    "long-import": JobDef(handler=long_import, on_job_exited=on_exit),
    "webhook": JobDef(
        handler=webhook,
        on_job_exited=on_exit,
        max_attempts=3,
        backoff=Backoff(kind="fixed", base_seconds=0.3, jitter=False),
    ),
    "reindex": JobDef(handler=reindex, resumable=True, on_job_exited=on_exit),
}


reactions: list[str] = []


def react(name: str, delay: float = 0.1) -> Any:
    async def handler(event: Event, signal: AbortSignal) -> str:
        await asyncio.sleep(delay)
        reactions.append(name)
        return f"{name} done for order {event.payload['order']}"

    return handler


SUBSCRIBERS = {
    "order_placed": [
        Subscriber("email", handler=react("email", 0.3)),  # async: emit does not wait
        Subscriber("audit", handler=react("audit"), mode="sync"),  # emit waits for it
        Subscriber("invoice", handler=react("invoice"), mode="serial"),  # then ship, in order
        Subscriber("ship", handler=react("ship"), mode="serial"),
    ]
}
SECRET = generate_secret()


class Receiver:
    """A local webhook receiver: answers 503 twice, then 204."""

    def __init__(self) -> None:
        self.statuses = [503, 503]
        self.got: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.got.append({k.lower(): v for k, v in self.headers.items()})
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/orders"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def _processor(db: Any) -> JobProcessor:
    return await init_job_processor(
        db,
        jobs=JOBS,
        crons={"tick": {"cron_string": "* * * * * *", "handler": tick, "checkin_margin": 0.5}},
        subscribers=SUBSCRIBERS,
        webhook_secrets={"partner": SECRET},
        webhook_options={"backoff": {"kind": "fixed", "base_seconds": 0.3, "jitter": False}},
        concurrency=4,
        poll_interval=0.5,
        heartbeat_interval=1,
        worker_timeout=5,
        shutdown_grace=2,
    )


async def _wait(processor: JobProcessor, job_id: str, *statuses: JobStatus) -> Job:
    for _ in range(200):
        job = await processor.get_job(job_id)
        if job.status in statuses:
            return job
        await asyncio.sleep(0.1)
    raise TimeoutError(f"job {job_id} did not reach {statuses}")


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    check_installed()  # before saying a server starts
    say("No MONGODB_URL set: starting a throwaway local server (nx-27017, MongoDB wire protocol")
    say("over SQLite; for trying things out only, production uses MongoDB).")
    with local_server() as server:
        say(f"  listening on {server.url}")
        yield server.url


async def run_demo(url: str | None) -> int:
    """0 once every step ran; 1 when the local server cannot start, 2 for a MONGODB_URL that is
    not a MongoDB URL or nx-27017 not installed, 3 when the server does not answer (one line on
    stderr each)."""
    try:
        with _server(url) as server_url:
            try:
                server = open_database(server_url, CONNECT_TIMEOUT)
            except InvalidArgumentError as exc:  # not a MongoDB URL: never printed
                say_error(str(exc))
                return 2
            if url:
                say(f"Using MONGODB_URL={shown_url(url)}")
            db = server.client[f"job_processor_demo_{uuid.uuid4().hex[:8]}"]
            try:
                await check_reachable(db, CONNECT_TIMEOUT, refused_is_final=True)
                say(f"In a throwaway database on it, {db.name} (dropped at the end).\n")
                try:
                    await _demo(db)
                finally:
                    await server.client.drop_database(db.name)
            finally:
                await close_database(server)
    except LocalServerMissing as exc:
        say_error(f"{exc} (or set MONGODB_URL to a MongoDB server)")
        return 2
    except LocalServerError as exc:
        say_error(str(exc))
        return 1
    except DatabaseUnreachableError as exc:
        where = str(exc).split(";")[0]
        say_error(f"{where}; check MONGODB_URL, or unset it to use a local server")
        return 3
    return 0


async def _demo(db: Any) -> None:
    processor = await _processor(db)
    say("1. A worker starts (concurrency 4) and jobs are scheduled:")
    await processor.start()
    email = await processor.schedule_job("send-email", {"to": "ada@example.com"})
    report = await processor.schedule_job("flaky-report", {"month": "2026-11"})
    imp = await processor.schedule_job("long-import", {"file": "big.csv"})
    idx = await processor.schedule_job("reindex", {})
    for job in (email, report, imp, idx):
        say(f"    scheduled {job.name:<14} id={job.id}")

    hook = await processor.schedule_job("webhook", {"url": "https://example.com/hook"})
    say(f"    scheduled {hook.name:<14} id={hook.id} (3 attempts, fixed backoff)")

    say("\n2. send-email finishes, flaky-report fails (the error is kept on the job),")
    say("   webhook fails twice and succeeds on its third attempt:")
    show(await _wait(processor, email.id, JobStatus.FINISHED))
    show(await _wait(processor, report.id, JobStatus.ERRORED))
    delivered = await _wait(processor, hook.id, JobStatus.FINISHED)
    show(delivered)
    for h in delivered.history:
        say(f"      attempt {h['attempt']}: {h['status']:<8} {h['error'] or ''}".rstrip())

    say("\n3. long-import is killed while running (kill_job works from any process):")
    await _wait(processor, imp.id, JobStatus.RUNNING)
    await processor.kill_job(imp.id)
    show(await _wait(processor, imp.id, JobStatus.KILLED))

    say("\n4. reindex checkpoints its progress; the worker is restarted in the middle:")
    for _ in range(100):
        current = await processor.get_job(idx.id)
        if (current.state or {}).get("done", 0) >= 2:
            break
        await asyncio.sleep(0.1)
    await processor.stop()  # what SIGTERM does: abort signal "shutdown", then pause
    paused = await processor.get_job(idx.id)
    show(paused)

    say("\n5. A new worker process starts and resumes reindex from its checkpoint:")
    processor2 = await _processor(db)
    await processor2.start()
    done = await _wait(processor2, idx.id, JobStatus.FINISHED)
    show(done)
    same = "same" if done.started_at == paused.started_at else "different"
    say(f"    started_at kept across the restart: {same} ({done.started_at:%H:%M:%S.%f})")

    say("\n6. on_job_exited ran once per terminal exit (never for the pause or a retry):")
    ended = [email, report, hook, imp, idx]  # each hook runs right after its final write
    for _ in range(100):
        seen = [await processor2.get_job(j.id) for j in ended]
        if all(f"{j.name}:{j.status.value}" in exits for j in seen):
            break
        await asyncio.sleep(0.05)
    say("    " + ", ".join(sorted(exits)))

    say("\n7. Meanwhile the every-second cron 'tick' ran on both workers (3 s more now):")
    await asyncio.sleep(3)
    ticks = [j for j in await processor2.list_jobs("tick", limit=100) if j.trigger == "schedule"]
    slots = sorted(j.scheduled_for for j in ticks)
    finished = sum(j.status == JobStatus.FINISHED for j in ticks)
    say(
        f"    {len(slots)} slots, {len(set(slots))} distinct (one task per slot), "
        f"{finished} finished so far (it goes on during step 8)"
    )
    await _events(processor2)
    await processor2.stop()
    status = await processor2.get_status()
    say("\nStatus (jobs by name and status):")
    for name, counts in status.jobs.items():
        say(f"    {name:<22} {counts}")


async def _events(processor: JobProcessor) -> None:
    say("\n8. An event with four subscribers (async, sync, two serial) and a webhook endpoint")
    say("   (a local receiver that answers 503 twice, then 204):")
    with Receiver() as receiver:
        endpoint = await processor.webhooks.add(
            url=receiver.url, events=["order_placed"], secret_ref="partner"
        )
        event = await processor.emit("order_placed", {"order": 1001})
        say(
            f"    emitted order_placed id={event.id}; emit returned once the sync subscriber had "
            f"run (ran by then: {', '.join(reactions)})"
        )
        for _ in range(200):
            shown = await processor.get_event(event.id)
            if all(d.status == JobStatus.FINISHED for d in shown.deliveries):
                break
            await asyncio.sleep(0.1)
        for d in shown.deliveries:
            mode = f"({d.mode})" if d.mode else ""
            codes = ", ".join(str(a["status_code"]) for a in d.attempts)
            extra = f"HTTP {codes}" if d.kind == "webhook" else repr(d.result)
            target = "webhook" if d.kind == "webhook" else d.target
            say(f"    {target:<8} {mode:<8} {d.status:<9} runs={d.attempt} {extra}")
        say(f"    subscribers ran in this order: {', '.join(reactions)}")
        ids = {h["webhook-id"] for h in receiver.got}
        signed = all(h.get("webhook-signature", "").startswith("v1,") for h in receiver.got)
        say(
            f"    the receiver got {len(receiver.got)} requests, webhook-id the same each time: "
            f"{ids == {event.id}}, signed: {signed} (Standard Webhooks)"
        )
        await processor.webhooks.remove(endpoint.id)


async def command(args: Any) -> int:
    """`job-processor demo` (given to the command line by the entry point). SIGTERM, SIGINT or
    SIGHUP (its terminal closed) stops it (exit 130), its throwaway server with it: by default
    the signal would kill the process and leave the server, a session of its own, running."""
    stop = asyncio.Event()
    with stop_on_signals(stop, STOP_OR_HANGUP, ignore_after=True):
        demo = asyncio.create_task(run_demo(os.environ.get("MONGODB_URL")))
        if await unless_set(demo, stop):
            return demo.result()
    say_error("demo stopped (SIGTERM, SIGINT or SIGHUP)")
    return 130
