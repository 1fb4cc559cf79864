"""`job-processor demo` (the README's first command) shows every step it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "job_processor", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_demo_on_the_given_server(mongo_url: str) -> None:
    out = run_demo(os.environ | {"MONGODB_URL": mongo_url})
    assert f"Using MONGODB_URL={mongo_url}" in out
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
        "emit returned once the sync subscriber had run (ran by then: audit",
        "email    (async)  finished",
        "invoice  (serial) finished",
        "ship     (serial) finished",
        "webhook           finished  runs=3 HTTP 503, 503, 204",
        "the receiver got 3 requests, webhook-id the same each time: True, signed: True",
    ):
        assert line in out, out
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
