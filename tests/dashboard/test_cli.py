"""`job-processor dashboard` as a user runs it: from MONGODB_URL alone, as its own process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from job_processor.storage.local_server import free_port

from ..conftest import url_with_db
from .harness import Switches, make_processor

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "job_processor"]


def dashboard(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`job-processor dashboard ARGS` as its own process, its output read by the test."""
    return subprocess.Popen(
        [*CLI, "dashboard", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_refuses_a_public_host_without_auth_and_bad_credentials_syntax() -> None:
    env = os.environ | {"MONGODB_URL": "mongodb://127.0.0.1:9/x"}
    env.pop("JOB_PROCESSOR_DASHBOARD_AUTH", None)
    out = subprocess.run(
        [*CLI, "dashboard", "--host", "0.0.0.0"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "refusing to serve the dashboard on '0.0.0.0' without authentication" in out.stderr
    assert "--no-auth" in out.stderr
    out = subprocess.run(
        [*CLI, "dashboard", "--host", "0.0.0.0", "--no-auth"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--allowed-hosts" in out.stderr  # which names to answer
    out = subprocess.run(
        [*CLI, "dashboard", "--auth", "admin"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "USER:PASSWORD" in out.stderr


def test_an_unreachable_mongodb_url_fails_at_start_with_the_reason() -> None:
    env = os.environ | {"MONGODB_URL": "mongodb://127.0.0.1:1/x"}
    env.pop("JOB_PROCESSOR_DASHBOARD_AUTH", None)
    out = subprocess.run(
        [*CLI, "dashboard", "--port", str(free_port()), "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 3, out
    assert out.stderr == (  # at once (not after the 60 s it may wait): nothing listens there
        "error: cannot reach MongoDB at 127.0.0.1:1 (connection refused: nothing listens on "
        "that port); check MONGODB_URL and that the server is running\n"
    )
    assert "job-processor dashboard on" not in out.stdout  # never said it serves


async def test_serves_the_dashboard_from_mongodb_url_with_basic_auth(
    db: Any, mongo_url: str
) -> None:
    processor = await make_processor(db, Switches())
    async with processor:  # a worker registers its names and heartbeats
        port = free_port()
        env = os.environ | {
            "MONGODB_URL": url_with_db(mongo_url, db.name),
            "JOB_PROCESSOR_DASHBOARD_AUTH": "ops:pa55word",
        }
        proc = dashboard(env, "--port", str(port), "--allowed-hosts", "127.0.0.1,jobs.internal")
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=5) as c:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        health = await c.get("/healthz")
                        break
                    except httpx.TransportError:
                        assert proc.poll() is None, proc.communicate()
                        assert time.monotonic() < deadline, "the dashboard never answered"
                        await asyncio.sleep(0.05)
                assert health.status_code == 200 and health.json()["ok"] is True
                assert (await c.get("/")).status_code == 401
                page = await c.get("/", auth=("ops", "pa55word"))
                assert page.status_code == 200
                assert "send-email" in page.text and "runner-1" in page.text
                creds = ("ops", "pa55word")
                named = await c.get("/", auth=creds, headers={"host": "jobs.internal:8080"})
                assert named.status_code == 200  # --allowed-hosts
                rebound = await c.get("/", auth=creds, headers={"host": "evil.example"})
                assert rebound.status_code == 400 and "Invalid Host header" in rebound.text
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a graceful stop, exit 0, as run and server
            out, err = proc.communicate(timeout=10)
        assert f"job-processor dashboard on http://127.0.0.1:{port}/ (database " in out
        assert ", login ops)" in out  # the user, never the password
        assert proc.returncode == 0 and "job-processor dashboard: stopped" in out, err
        assert "Traceback" not in err
        assert "pa55word" not in out + err


def dashboard_on_a_busy_port(url: str, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`job-processor dashboard --port P ARGS` with P taken by another program."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = os.environ | {"MONGODB_URL": url}
    env.pop("JOB_PROCESSOR_DASHBOARD_AUTH", None)
    try:
        out = subprocess.run(
            [*CLI, "dashboard", "--port", str(port), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        taken.close()
    return out, port


def test_a_busy_port_fails_at_start_with_the_fix_never_printing_a_dead_url(
    mongo_url: str,
) -> None:
    out, port = dashboard_on_a_busy_port(url_with_db(mongo_url, "jp_busy_port"))
    assert out.returncode == 2, out
    said = re.fullmatch(
        rf"error: 127\.0\.0\.1:{port} is already in use by another program: pick another port, "
        r"e\.g\. job-processor dashboard --port (\d+) \(free now\)\n",
        out.stderr,
    )
    assert said is not None, out.stderr
    assert int(said[1]) > port  # checked free when it was said
    assert "job-processor dashboard on" not in out.stdout


def test_a_busy_port_is_said_before_mongodb_is_reached() -> None:
    """The port was bound only once MongoDB had answered: with MongoDB unreachable too, the
    dashboard said "cannot reach MongoDB" (exit 3, after up to --timeout in an outage), and
    the busy port only on the next try, as `run --metrics-port` did before fd8b825."""
    out, port = dashboard_on_a_busy_port("mongodb://127.0.0.1:1/x", "--timeout", "60")
    assert out.returncode == 2, out
    assert f"127.0.0.1:{port} is already in use by another program" in out.stderr, out.stderr
    assert "cannot reach MongoDB" not in out.stderr


def test_port_0_serves_on_a_free_port_and_prints_it(mongo_url: str) -> None:
    env = os.environ | {"MONGODB_URL": url_with_db(mongo_url, "jp_port_zero")}
    env.pop("JOB_PROCESSOR_DASHBOARD_AUTH", None)
    proc = dashboard(env, "--port", "0")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the socket is bound
        said = re.match(r"job-processor dashboard on http://127\.0\.0\.1:(\d+)/ ", first)
        assert first.rstrip().endswith(", no login: loopback only)"), first
        assert said is not None and int(said[1]) > 0, first + proc.stderr.read()
        health = httpx.get(f"http://127.0.0.1:{said[1]}/healthz", timeout=10)
        assert health.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


async def test_sensitive_fields_adds_to_the_default_ones(db: Any, mongo_url: str) -> None:
    """`--sensitive-fields iban` replaced the default names: the job's password was shown
    (`jobs show` masks it); an empty value turned masking off. Names are added; none, refused."""
    processor = await make_processor(db, Switches())
    job = await processor.schedule_job(
        "send-email", {"to": "a@b.c", "password": "hunter22secret", "iban": "DE89370400440532"}
    )
    env = os.environ | {"MONGODB_URL": url_with_db(mongo_url, db.name)}
    env.pop("JOB_PROCESSOR_DASHBOARD_AUTH", None)
    proc = dashboard(env, "--port", "0", "--sensitive-fields", "iban")
    try:
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        said = re.match(r"job-processor dashboard on (http://127\.0\.0\.1:\d+)/ ", first)
        assert said is not None, first
        async with httpx.AsyncClient() as c:
            page = await c.get(f"{said[1]}/jobs/{job.id}", timeout=10)
        assert page.status_code == 200
        assert "hunter22secret" not in page.text and "DE89370400440532" not in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.communicate, timeout=10)
    out = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "dashboard", "--sensitive-fields", " , "],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "--sensitive-fields names no field" in out.stderr, out


async def test_the_url_printed_with_a_root_path_opens_the_dashboard(scratch_url: str) -> None:
    """With --root-path /jobs it printed http://HOST:PORT/jobs/, which that socket answers
    with a redirect to /jobs/jobs and "'jobs' is not a job id": the prefix is the proxy's."""
    env = os.environ | {"MONGODB_URL": scratch_url}
    env.pop("JOB_PROCESSOR_DASHBOARD_AUTH", None)
    proc = dashboard(env, "--port", "0", "--root-path", "/jobs")
    try:
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        said = re.match(r"job-processor dashboard on (http://127\.0\.0\.1:\d+/\S*) ", first)
        assert said is not None, first
        assert "/jobs/ through the proxy that strips it" in first
        async with httpx.AsyncClient(follow_redirects=True) as c:
            page = await c.get(said[1], timeout=10)
        assert page.status_code == 200, (said[1], str(page.url), page.status_code)
        assert "is not a job id" not in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.communicate, timeout=10)
