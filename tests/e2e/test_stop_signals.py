"""Stopping `job-processor run` when MongoDB is gone, and by signals at the edges: a SIGTERM
during an outage stops within the lease (it waited for each step's driver timeout in turn, 60
to 90 s, past Docker's stop grace period); a second signal during the stop ends it at once
(exit 130); a SIGTERM while it starts is a clean exit (it killed the process: 143)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from job_processor import JobProcessor, JobStatus, init_job_processor
from job_processor.storage.local_server import LocalServer, start_local_server
from tests.helpers import wait_status

from .app import JOBS, make
from .test_processes import ROOT, Worker, kill_all, spawn, wait_exit, wait_workers  # noqa: F401

S = JobStatus
pytestmark = pytest.mark.e2e


@pytest.fixture
def own_server() -> Iterator[LocalServer]:
    """A server of this test's own, that it stops (the outage)."""
    data = Path(tempfile.mkdtemp(prefix="jp-stop-"))
    server = start_local_server(data)
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


def _start(url: str, tmp_path: Path, target: str = "tests.e2e.app:make", **env: str) -> Worker:
    log = tmp_path / f"worker-{time.monotonic_ns()}.log"
    environ = os.environ | {"MONGODB_URL": url, "INSTANCE_ID": "runner-1", "PYTHONUNBUFFERED": "1"}
    environ.pop("JOB_PROCESSOR_WORKER_TAGS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "job_processor", "run", target],
            cwd=ROOT,
            env=environ | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Worker(proc, log)


@pytest.fixture
def spawn_on(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(url: str, target: str = "tests.e2e.app:make", **env: str) -> Worker:
        workers.append(_start(url, tmp_path, target, **env))
        return workers[-1]

    yield start
    kill_all(workers)


@pytest.fixture
async def own_client(own_server: LocalServer) -> AsyncIterator[JobProcessor]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        own_server.url, tz_aware=True, serverSelectionTimeoutMS=20000
    )
    yield await init_job_processor(
        client["outage"], jobs=JOBS, worker_timeout=2.0, heartbeat_interval=0.5
    )
    await client.close()


async def _running_then_outage(
    own_server: LocalServer, own_client: JobProcessor, spawn_on: Callable[..., Worker]
) -> Worker:
    worker = spawn_on(own_server.url.rstrip("/") + "/outage")
    await wait_workers(own_client, 1)
    job = await own_client.schedule_job("long-resumable", {"steps": 600})
    await wait_status(own_client, job.id, S.RUNNING, timeout=20)
    own_server.stop()  # MongoDB gone
    return worker


async def test_a_sigterm_during_an_outage_stops_within_the_lease(
    own_server: LocalServer, own_client: JobProcessor, spawn_on: Callable[..., Worker]
) -> None:
    worker = await _running_then_outage(own_server, own_client, spawn_on)
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = await wait_exit(worker, 60)
    took = time.monotonic() - began
    assert code == 0 and took < 20, f"exit {code} after {took:.0f}s:\n{worker.output()[-3000:]}"


async def test_a_second_signal_during_the_stop_ends_it_at_once(
    own_server: LocalServer, own_client: JobProcessor, spawn_on: Callable[..., Worker]
) -> None:
    worker = await _running_then_outage(own_server, own_client, spawn_on)
    worker.proc.send_signal(signal.SIGINT)
    await _logged(worker, "worker_stopping")
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGINT)  # the operator presses Ctrl-C again
    code = await wait_exit(worker, 30)
    assert code == 130 and time.monotonic() - began < 10, worker.output()[-3000:]
    assert "worker_stop_forced" in worker.output()


async def test_a_sigterm_while_it_starts_is_a_clean_exit(
    tmp_path: Path, spawn_on: Callable[..., Worker], free_url: str
) -> None:
    marker = tmp_path / "imported"
    worker = spawn_on(free_url, E2E_IMPORTED=str(marker))  # init waits connect_timeout there
    deadline = asyncio.get_running_loop().time() + 20
    while not marker.exists():  # the app is imported: init_job_processor pings, waiting
        assert asyncio.get_running_loop().time() < deadline, worker.output()
        await asyncio.sleep(0.05)
    worker.proc.send_signal(signal.SIGTERM)
    code = await wait_exit(worker, 20)
    assert code == 0, f"exit {code}:\n{worker.output()[-1500:]}"
    assert "stopped before it started" in worker.output()


async def _logged(worker: Worker, event: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while event not in worker.output():
        assert asyncio.get_running_loop().time() < deadline, worker.output()[-3000:]
        await asyncio.sleep(0.05)


@pytest.fixture
def free_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"mongodb://127.0.0.1:{port}/x"


async def test_a_repeated_sigterm_never_ends_it_with_an_undocumented_code(
    spawn: Callable[..., Worker],  # noqa: F811
) -> None:
    """A supervisor that sends SIGTERM again and again: the first stops it, the others, while
    it stops and exits, are ignored (one after the stop's signal handlers were removed killed
    it by the signal: exit -15, none of the documented 0, 130, 1)."""
    worker = spawn("runner-1")
    await _logged(worker, "worker_started")
    while worker.proc.poll() is None:  # SIGTERM every few ms until it has exited
        worker.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.005)
    code = worker.proc.returncode
    assert code in (0, 130), f"exit {code}:\n{worker.output()[-1500:]}"


def _mark(variable: str) -> None:
    Path(os.environ[variable]).write_text(variable)


def _taken(variable: str) -> bool:
    """The file $variable names was there: it is removed."""
    try:
        Path(os.environ[variable]).unlink()
    except FileNotFoundError:
        return False
    return True


async def make_paused_after_init(ctx: Any) -> JobProcessor:
    """tests.e2e.app's processor, returned once the test says so (it stops the server first:
    init_job_processor's ping answered, start() then waits for a MongoDB gone); its start()
    writes $E2E_STARTING as it begins."""
    processor = await make(ctx)
    _mark("E2E_BUILT")
    while not _taken("E2E_GO"):
        await asyncio.sleep(0.02)
    start = processor.start

    async def starting() -> None:
        _mark("E2E_STARTING")
        await start()

    processor.start = starting  # type: ignore[method-assign]
    return processor


async def _starting_with_mongodb_gone(
    own_server: LocalServer, tmp_path: Path, spawn_on: Callable[..., Worker], query: str = ""
) -> Worker:
    """A `run` whose start() has begun, MongoDB gone since its init."""
    built, go, starting = tmp_path / "built", tmp_path / "go", tmp_path / "starting"
    url = own_server.url.rstrip("/") + "/startout" + query
    worker = spawn_on(
        url,
        "tests.e2e.test_stop_signals:make_paused_after_init",
        E2E_BUILT=str(built),
        E2E_GO=str(go),
        E2E_STARTING=str(starting),
    )
    deadline = asyncio.get_running_loop().time() + 30
    for marker in (built, starting):
        while not marker.exists():
            assert asyncio.get_running_loop().time() < deadline, worker.output()[-3000:]
            assert worker.proc.poll() is None, worker.output()[-3000:]
            await asyncio.sleep(0.02)
        if marker is built:
            own_server.stop()
            go.write_text("go")
    return worker


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGTERM, signal.SIGINT)])
async def test_signals_while_start_waits_for_an_unreachable_mongodb(
    own_server: LocalServer,
    tmp_path: Path,
    spawn_on: Callable[..., Worker],
    signals: tuple[signal.Signals, ...],
) -> None:
    """A SIGTERM while start() waits for MongoDB (the driver's 30 s for each command) stops it
    at once, nothing started: exit 0; a second signal with it (one already received while
    start() ran counts) is a forced stop: exit 130."""
    worker = await _starting_with_mongodb_gone(own_server, tmp_path, spawn_on)
    began = time.monotonic()
    # stopped while they are sent: both arrive before it handles either (a supervisor's
    # SIGTERM, then the operator's Ctrl-C), whatever the host's load
    worker.proc.send_signal(signal.SIGSTOP)
    for sig in signals:
        worker.proc.send_signal(sig)
    worker.proc.send_signal(signal.SIGCONT)
    code = await wait_exit(worker, 60)
    took = time.monotonic() - began
    expected = 130 if len(signals) > 1 else 0
    assert code == expected and took < 10, (
        f"exit {code} after {took:.0f}s (expected {expected} within 10 s):\n"
        f"{worker.output()[-2000:]}"
    )
    assert "Traceback" not in worker.output()
    assert ("worker_stop_forced" in worker.output()) == (len(signals) > 1)


async def test_a_start_that_cannot_reach_mongodb_exits_3_saying_so(
    own_server: LocalServer, tmp_path: Path, spawn_on: Callable[..., Worker]
) -> None:
    """MongoDB gone between init_job_processor's ping and start(), no signal: the start fails
    after the driver's server selection timeout (2 s here, 30 s by default), and `run` exits
    3, as for MongoDB unreachable at init, with one line saying so (it exited 1 with a
    traceback, or with no word at all when a thread of the loop's executor was still busy)."""
    query = "?serverSelectionTimeoutMS=2000"
    worker = await _starting_with_mongodb_gone(own_server, tmp_path, spawn_on, query)
    began = time.monotonic()
    code = await wait_exit(worker, 60)
    took, output = time.monotonic() - began, worker.output()
    assert code == 3 and took < 8, f"exit {code} after {took:.0f}s:\n{output[-3000:]}"
    assert "Traceback" not in output
    assert "error: cannot reach MongoDB at 127.0.0.1:" in output, output[-3000:]
    assert "to start the worker (connection refused" in output, output[-3000:]
