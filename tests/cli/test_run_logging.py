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


def run_script(log_format: str | None, script: str = SCRIPT) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOB_PROCESSOR_LOG_FORMAT"}
    if log_format:
        env["JOB_PROCESSOR_LOG_FORMAT"] = log_format
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
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


ADAPTER_SCRIPT = """
import logging
from job_processor.cli.run import configure_logging
from job_processor.core.log import EventLog
configure_logging("info")
log = logging.LoggerAdapter(logging.getLogger("myapp"), {"service": "billing"})
EventLog(log).warning("job_errored", job_id="j1")
logging.getLogger("myapp").info("order %s", 7, extra={"order_id": 7})
"""


def test_an_adapters_extra_and_a_lines_own_extra_are_in_the_lines() -> None:
    """A `logging.LoggerAdapter` given as the logger (the guide: its own `extra` is merged
    in), and `extra=` on the app's own lines: `run`'s lines dropped them, in both formats,
    where structlog's bound context (`.bind(service=...)`) is rendered: the context a
    LoggerAdapter is for (which service, which tenant) was lost from every line."""
    event, own = (json.loads(line) for line in run_script("json", ADAPTER_SCRIPT))
    assert (event["event"], event["job_id"], event.get("service")) == (
        "job_errored",
        "j1",
        "billing",
    ), event
    assert (own["event"], own.get("order_id")) == ("order 7", 7), own
    assert set(event) == {"job_id", "service", "event", "level", "logger", "timestamp"}
    event_line, own_line = run_script(None, ADAPTER_SCRIPT)
    assert event_line.endswith("myapp: job_errored job_id='j1' service='billing'"), event_line
    assert own_line.endswith("myapp: order 7 order_id=7"), own_line
