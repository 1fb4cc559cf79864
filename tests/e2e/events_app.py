"""The app the event end-to-end tests serve: `job-processor run tests.e2e.events_app:make`.
Webhook secrets come from JOB_PROCESSOR_WEBHOOK_SECRETS (set by the test)."""

from __future__ import annotations

import os
from typing import Any

from job_processor import AbortSignal, Event, JobProcessor, Subscriber, init_job_processor
from job_processor.cli import RunContext


async def record(event: Event, signal: AbortSignal) -> dict[str, Any]:
    return {"pid": os.getpid(), "instance_id": os.environ.get("INSTANCE_ID")}


SUBSCRIBERS = {
    "order_placed": [
        Subscriber("invoice", handler=record, mode="serial"),
        Subscriber("ship", handler=record, mode="serial"),
        Subscriber("notify", handler=record),
    ]
}


async def make(ctx: RunContext) -> JobProcessor:
    return await init_job_processor(
        ctx.db,
        subscribers=SUBSCRIBERS,
        webhook_options={
            "backoff": {"kind": "fixed", "base_seconds": 0.2, "jitter": False},
            "timeout": 10,
        },
        concurrency=2,
        poll_interval=0.2,
        heartbeat_interval=0.5,
        worker_timeout=2.0,
        shutdown_grace=1.0,
    )
