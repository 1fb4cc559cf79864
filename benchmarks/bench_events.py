"""MongoDB commands per emitted event and per delivery (subscribers, serial chains, webhooks).

To run:
    .venv/bin/python benchmarks/bench_events.py             # a throwaway nx-27017 server
    MONGODB_URL=mongodb://localhost:27017/?replicaSet=rs0 .venv/bin/python \
        benchmarks/bench_events.py

The publisher (a processor that declares no subscriber and is never started, like a web app)
and the worker use two clients, each with PyMongo command monitoring, so an emit's commands and
a delivery's commands are counted apart. Webhooks go to an HTTP receiver on 127.0.0.1 started
here. The worker's counts include its background loops (heartbeat, kill checks, recovery
sweep, change stream) over the phase, as bench.py's do.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Counter

from job_processor import AbortSignal, Event, JobProcessor, Subscriber, init_job_processor
from job_processor.storage.connect import shown_url
from job_processor.storage.local_server import local_server


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with local_server() as s:
        yield s.url


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def noop(event: Event, signal: AbortSignal) -> None:
    return None


SUBSCRIBERS = {
    "async_event": [Subscriber("a", handler=noop), Subscriber("b", handler=noop)],
    "serial_event": [
        Subscriber("first", handler=noop, mode="serial"),
        Subscriber("second", handler=noop, mode="serial"),
    ],
}


def per(counts: collections.Counter[str], n: int) -> str:
    total = sum(counts.values())
    by_name = ", ".join(f"{k}={v / n:.2f}" for k, v in sorted(counts.items()))
    return f"{total / n:.2f}  by name: {by_name}"


async def finished(publisher: JobProcessor, names: list[str]) -> int:
    coll = publisher.storage.jobs.coll
    return int(await coll.count_documents({"name": {"$in": names}, "status": "finished"}))


async def phase(
    label: str,
    publisher: JobProcessor,
    pub_counter: Counter,
    work_counter: Counter,
    event: str,
    names: list[str],
    per_event: int,
    n: int,
) -> None:
    already = await finished(publisher, names)
    pub_counter.take()
    work_counter.take()
    t0 = time.perf_counter()
    for i in range(n):
        await publisher.emit(event, {"i": i})
    emitted = pub_counter.take()
    while await finished(publisher, names) < already + n * per_event:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - t0
    pub_counter.take()  # the progress queries above
    worked = work_counter.take()
    print(f"{label}: {n} events, {n * per_event} deliveries in {elapsed:.2f} s")
    print(f"  publisher commands per emit: {per(emitted, n)}")
    print(f"  worker commands per delivery: {per(worked, n * per_event)}")


async def run(url: str, events: int, poll_interval: float) -> None:
    quiet = logging.getLogger("bench")
    quiet.setLevel(logging.WARNING)
    pub_counter, work_counter = Counter(), Counter()
    pub_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[pub_counter]
    )
    work_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[work_counter]
    )
    name = f"jp_bench_events_{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {
        "logger": quiet,
        "worker_timeout": 30.0,
        "heartbeat_interval": 5.0,
        "poll_interval": poll_interval,
    }
    try:
        with receiver() as hook_url:
            worker = await init_job_processor(
                work_client[name], subscribers=SUBSCRIBERS, concurrency=4, **settings
            )
            publisher = await init_job_processor(pub_client[name], **settings)
            await worker.start()
            print(f"server: {shown_url(url)}  events per phase: {events}")
            await phase(
                "async subscribers (2 per event)",
                publisher,
                pub_counter,
                work_counter,
                "async_event",
                ["async_event:a", "async_event:b"],
                2,
                events,
            )
            await phase(
                "serial subscribers (a chain of 2 per event)",
                publisher,
                pub_counter,
                work_counter,
                "serial_event",
                ["serial_event:first", "serial_event:second"],
                2,
                events,
            )
            await publisher.webhooks.add(url=hook_url, events=["hook_event"])
            await phase(
                "webhooks (1 endpoint, answered 204)",
                publisher,
                pub_counter,
                work_counter,
                "hook_event",
                ["webhook-delivery"],
                1,
                events,
            )
            await worker.stop()
    finally:
        await pub_client.drop_database(name)
        await pub_client.close()
        await work_client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    args = parser.parse_args()
    with server(os.environ.get("MONGODB_URL")) as url:
        asyncio.run(run(url, args.events, args.poll_interval))


if __name__ == "__main__":
    main()
