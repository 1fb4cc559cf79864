"""`job-processor demo` (the README's first command) shows every step it promises."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(env: dict[str, str]) -> str:
    done = demo_process(env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def demo_process(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "job_processor", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_on_the_given_server(mongo_url: str) -> None:
    out = run_demo(os.environ | {"MONGODB_URL": mongo_url})
    assert "Using MONGODB_URL=" in out
    assert "In a throwaway database on it, job_processor_demo_" in out
    for line in (
        "send-email       finished",
        "flaky-report     errored",
        "webhook          finished  runs=3",
        "long-import      killed",
        "reindex          paused",
        "reindex          finished  runs=2",
        "started_at kept across the restart: same",
        "flaky-report:errored, long-import:killed, reindex:finished, send-email:finished, "
        "webhook:finished",
    ):
        assert line in out, out
    for line in (
        "email    (async)  finished",
        "invoice  (serial) finished",
        "ship     (serial) finished",
        "webhook           finished  runs=3 HTTP 503, 503, 204",
        "the receiver got 3 requests, webhook-id the same each time: True, signed: True",
    ):
        assert line in out, out
    emitted = next(line for line in out.splitlines() if "emit returned once the sync" in line)
    ran = emitted.split("(ran by then: ", 1)[1].rstrip(")").split(", ")
    assert "audit" in ran, emitted  # the sync one; serial or async ones may have run already
    order = next(line for line in out.splitlines() if "subscribers ran in this order" in line)
    assert order.index("invoice") < order.index("ship"), order
    slots_line = next(line for line in out.splitlines() if "distinct (one task per slot)" in line)
    total, distinct = slots_line.split()[0], slots_line.split()[2]
    assert total == distinct


def test_demo_starts_its_own_server_when_none_is_given() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URL"}
    out = run_demo(env)
    assert "No MONGODB_URL set: starting a throwaway local server" in out
    assert "reindex          finished  runs=2" in out


def test_demo_on_a_server_that_does_not_answer_says_so_in_one_line() -> None:
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"mongodb://ada:s3cret-pw@127.0.0.1:{port}/x"
    done = demo_process(os.environ | {"MONGODB_URL": url})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert f"Using MONGODB_URL=mongodb://ada:****@127.0.0.1:{port}/x" in done.stdout
    assert done.stderr.splitlines() == [
        f"error: cannot reach MongoDB at 127.0.0.1:{port} (connection refused: nothing "
        "listens on that port); check MONGODB_URL, or unset it to use a local server"
    ]  # at once: a refused connection is not waited out

    done = demo_process(os.environ | {"MONGODB_URL": "http://localhost:27017"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: MONGODB_URL is not a MongoDB URL"), done.stderr


def test_a_sigterm_stops_the_demo_and_its_throwaway_server(tmp_path: Path) -> None:
    """SIGTERM killed the demo at once, by default, and left the throwaway nx-27017 it had
    started (a session of its own) running. It now stops, the server with it: exit 130; a
    SIGTERM repeated meanwhile is ignored."""
    import re
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URL"} | {"PYTHONUNBUFFERED": "1"}
    out = tmp_path / "demo.log"
    with out.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "job_processor", "demo"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (
            said := re.search(r"listening on mongodb://127\.0\.0\.1:(\d+)", out.read_text())
        ):
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        port = int(said[1])
        while proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        assert proc.returncode == 130, (proc.returncode, out.read_text()[-2000:])
        assert "demo stopped" in out.read_text()
        deadline = time.monotonic() + 10
        while True:  # the server it started is gone: nothing listens on its port
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, f"its server still listens on {port}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
