"""What the dashboard tests (and benchmarks/screenshots.py) run against: a real JobProcessor
with a few jobs and a cron, and the dashboard served by uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from job_processor import AbortSignal, CronDef, Job, JobDef, JobProcessor, init_job_processor

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = (
    "Chromium is needed by the dashboard's browser tests and was not found (looked for "
    "$CHROMIUM, `chromium` on PATH and /usr/bin/chromium). Install Debian's package: "
    "apt-get update && apt-get install -y chromium (.ci/run does this)."
)
SKIP_HINT = (
    "browser tests skipped: no Chromium here; to run them, apt-get install -y chromium (or set "
    "CHROMIUM=/path/to/chromium). With CI set they fail instead."
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_chromium() -> str:
    """Chromium's path; without it the browser tests skip (one line says how to enable them),
    or fail under CI (CI=1), where Chromium is part of the setup."""
    exe = chromium_path()
    if exe is None:
        if in_ci():
            pytest.fail(INSTALL_HINT)
        pytest.skip(SKIP_HINT)
    return exe


def chromium_path() -> str | None:
    """$CHROMIUM ("none": as if there were none), `chromium` on PATH, or /usr/bin/chromium."""
    if os.environ.get("CHROMIUM") == "none":
        return None
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@dataclass
class Switches:
    """Test controls the handlers read: make email fail, hold slow jobs."""

    email_fails: bool = True
    hold: asyncio.Event | None = None
    """When set to an Event, emails wait for it before they are sent."""
    started: asyncio.Event = field(default_factory=asyncio.Event)


def job_defs(switches: Switches) -> tuple[dict[str, Any], dict[str, Any]]:
    async def send_email(job: Job, signal: AbortSignal) -> dict[str, Any]:
        if job.payload.get("fail") and switches.email_fails:
            password = job.payload.get("smtp_password", "")
            raise ConnectionError(f"SMTP server refused the login (password {password!r})")
        if switches.hold is not None:
            await switches.hold.wait()
        return {"sent_to": job.payload.get("to"), "message_id": f"<{job.id}@example.com>"}

    async def build_report(job: Job, signal: AbortSignal) -> dict[str, Any]:
        pages = int(job.payload.get("pages", 3))
        done = int((job.state or {}).get("pages_done", 0))
        switches.started.set()
        while done < pages:
            signal.raise_if_aborted()
            await asyncio.sleep(float(job.payload.get("page_seconds", 0.05)))
            done += 1
            await job.checkpoint({"pages_done": done})
        return {"pages": pages}

    async def cleanup(job: Job, signal: AbortSignal) -> dict[str, Any]:
        return {"removed": 3}

    async def on_exit(job: Job) -> None:
        return None

    jobs = {
        "send-email": JobDef(handler=send_email, max_attempts=1, on_job_exited=on_exit),
        "build-report": JobDef(handler=build_report, resumable=True, concurrency="exclusive"),
    }
    crons = {
        "nightly-cleanup": CronDef(
            handler=cleanup, cron_string="0 3 * * *", timezone="Europe/Paris"
        ),
    }
    return jobs, crons


async def make_processor(db: Any, switches: Switches, **kw: Any) -> JobProcessor:
    jobs, crons = job_defs(switches)
    settings: dict[str, Any] = {
        "poll_interval": 0.2,
        "heartbeat_interval": 0.5,
        "worker_timeout": 2.0,
        "shutdown_grace": 1.0,
        "concurrency": 4,
        "instance_id": "runner-1",
    }
    return await init_job_processor(db, jobs=jobs, crons=crons, **(settings | kw))


def host_app(dashboard: Any) -> Starlette:
    """An application that mounts the dashboard under /jobs, as the README shows."""

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("my app")

    return Starlette(routes=[Route("/", home), Mount("/jobs", dashboard)])


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in this event loop; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
