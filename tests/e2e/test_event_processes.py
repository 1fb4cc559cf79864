"""Events across processes: a publisher (this test) with no subscriber, worker processes that
declare them, a real HTTP receiver, and a worker SIGKILLed in the middle of a delivery."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from job_processor import JobProcessor, init_job_processor
from job_processor.core.runs import WORKER_SILENT
from job_processor.events.webhooks import generate_secret

from ..conftest import url_with_db
from ..receiver import Receiver, Reply, receiving
from .test_processes import ROOT, Worker, kill_all, wait_exit

pytestmark = pytest.mark.e2e
SECRET = generate_secret()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


@pytest.fixture
def spawn(mongo_url: str, db: Any, tmp_path: Path) -> Iterator[Callable[[str], Worker]]:
    workers: list[Worker] = []

    def start(instance_id: str) -> Worker:
        log = tmp_path / f"{instance_id}.log"
        env = os.environ | {
            "MONGODB_URL": url_with_db(mongo_url, db.name),
            "INSTANCE_ID": instance_id,
            "PYTHONUNBUFFERED": "1",
            "JOB_PROCESSOR_WEBHOOK_SECRETS": json.dumps({"partner": SECRET}),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "job_processor", "run", "tests.e2e.events_app:make"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        workers.append(Worker(proc, log))
        return workers[-1]

    yield start
    kill_all(workers)


@pytest.fixture
async def publisher(db: Any) -> AsyncIterator[JobProcessor]:
    """This process: a web app that emits and manages endpoints; no subscriber, never started."""
    yield await init_job_processor(
        db, webhook_secrets={"partner": SECRET}, worker_timeout=2.0, heartbeat_interval=0.5
    )


async def wait_event(p: JobProcessor, event_id: str, done: int, timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        event = await p.get_event(event_id)
        if sum(d.status == "finished" for d in event.deliveries) >= done:
            return event
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError([(d.target, d.status, d.error) for d in event.deliveries])
        await asyncio.sleep(0.1)


async def test_a_publisher_without_subscribers_and_worker_processes(
    spawn: Callable[[str], Worker], publisher: JobProcessor, receiver: Receiver
) -> None:
    worker = spawn("runner-1")
    for _ in range(100):  # the worker registers its three subscribers at start, one by one:
        if len(await publisher.list_subscribers()) == 3:  # an emit before the last would
            break  # target those registered (a chain without "ship": a flaky CI run)
        await asyncio.sleep(0.1)
    ep = await publisher.webhooks.add(
        url=receiver.url("/orders"), events=["order_placed"], secret_ref="partner"
    )
    event = await publisher.emit("order_placed", {"order": 42})
    done = await wait_event(publisher, event.id, 4)
    by = {d.target: d for d in done.deliveries}
    assert {t: by[t].status for t in ("invoice", "ship", "notify")} == dict.fromkeys(
        ("invoice", "ship", "notify"), "finished"
    )
    assert by["invoice"].result["pid"] == worker.proc.pid != os.getpid()
    assert by["invoice"].ended_at and by["ship"].created_at
    assert by["invoice"].ended_at <= by["ship"].created_at  # serial, in declaration order
    [request] = receiver.received("/orders")
    assert Webhook(SECRET).verify(request.body, request.headers)["data"] == {"order": 42}
    assert by[f"webhook:{ep.id}"].attempts[-1]["status_code"] == 200
    worker.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(worker) == 0, worker.output()


async def test_a_worker_killed_mid_delivery_is_retried_not_lost(
    spawn: Callable[[str], Worker], publisher: JobProcessor, receiver: Receiver
) -> None:
    gate = threading.Event()
    url = receiver.script("/slow", Reply(200, hold=gate), Reply(200))
    ep = await publisher.webhooks.add(url=url, events=["order_placed"], secret_ref="partner")
    a = spawn("runner-1")
    event = await publisher.emit("order_placed", {"order": 7})
    await receiver.wait("/slow", 1, timeout=20)  # runner-1 is sending it right now
    a.proc.send_signal(signal.SIGKILL)
    await wait_exit(a)
    gate.set()  # the answer goes nowhere: runner-1 is gone
    b = spawn("runner-2")
    done = await wait_event(publisher, event.id, 1)  # no subscriber was registered yet
    hook = next(d for d in done.deliveries if d.target == f"webhook:{ep.id}")
    assert hook.status == "finished"
    assert hook.attempt == 2
    assert hook.failures == 1
    job = await publisher.get_job(hook.job_id or "")
    assert job.history[0]["error"] == WORKER_SILENT
    first, second = receiver.received("/slow")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.id
    assert Webhook(SECRET).verify(second.body, second.headers)
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0, b.output()
