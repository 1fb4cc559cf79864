"""`job-processor run` with an app that logs through a stdlib logger
(`init_job_processor(logger=logging.getLogger("myapp"))`): its lines carry a timestamp and the
level, and are JSON with JOB_PROCESSOR_LOG_FORMAT=json, as the structlog ones are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

# What `run` does before importing the app: configure_logging; then the app logs, through
# job-processor's EventLog (a job event) and directly (its own line).
SCRIPT = """
import logging
from job_processor.cli.run import configure_logging
from job_processor.core.log import EventLog
configure_logging("info")
log = logging.getLogger("myapp")
EventLog(log).warning("job_errored", job_id="j1", job_name="send-email", worker_id="w1")
log.info("job exited: %s", "send-email")
log.debug("not shown at info")
"""


def run_script(log_format: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOB_PROCESSOR_LOG_FORMAT"}
    if log_format:
        env["JOB_PROCESSOR_LOG_FORMAT"] = log_format
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_stdlib_lines_carry_a_timestamp_and_the_level() -> None:
    lines = run_script(None)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
    assert len(lines) == 2, lines
    assert re.fullmatch(
        stamp + r" \[warning  \] myapp: job_errored job_id='j1' job_name='send-email' "
        r"worker_id='w1'",
        lines[0],
    ), lines[0]
    assert re.fullmatch(stamp + r" \[info     \] myapp: job exited: send-email", lines[1])


def test_stdlib_lines_are_json_when_asked() -> None:
    event, own = (json.loads(line) for line in run_script("json"))
    assert event == {
        "job_id": "j1",
        "job_name": "send-email",
        "worker_id": "w1",
        "event": "job_errored",
        "level": "warning",
        "logger": "myapp",
        "timestamp": event["timestamp"],
    }
    assert own["event"] == "job exited: send-email"
    assert (own["level"], own["logger"]) == ("info", "myapp")
