"""EventLog never lets a line that cannot be written stop the caller (no server)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from job_processor.core.log import EventLog

pytestmark = pytest.mark.drops_log_lines


class Closed:
    """A structlog-style logger whose output is a closed pipe (`run ... | head`)."""

    def __getattr__(self, level: str) -> Any:
        def write(event: str, **fields: Any) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        return write


def test_a_line_that_cannot_be_written_is_dropped_and_counted() -> None:
    log = EventLog(Closed())
    before = EventLog.dropped
    log.info("job_finished", job_id="j1")
    log.exception("processor_loop_crashed", worker_id="w1")
    assert EventLog.dropped == before + 2


def test_a_stdlib_logger_whose_filter_raises_is_dropped_too() -> None:
    logger = logging.getLogger("test.event_log.raising")

    def broken(record: logging.LogRecord) -> bool:
        raise ValueError("a bug in the application's filter")

    logger.addFilter(broken)
    before = EventLog.dropped
    EventLog(logger).warning("job_errored", job_id="j1")
    assert EventLog.dropped == before + 1


class _LevelCheckRaises(logging.Logger):
    """A stdlib logger that raises where it is asked its level (a broken subclass)."""

    def isEnabledFor(self, level: int) -> bool:
        raise RuntimeError("logging backend down")


@pytest.mark.drops_log_lines
def test_a_stdlib_logger_whose_level_check_raises_is_dropped_too() -> None:
    log = EventLog(_LevelCheckRaises("test.event_log.level_check"))
    before = EventLog.dropped
    log.info("job_finished", job_id="j1")  # raised RuntimeError out of EventLog
    assert EventLog.dropped == before + 1


def test_an_adapter_around_a_structlog_logger_is_refused_at_once() -> None:
    """It has every level method, and had no isEnabledFor to answer the first line."""
    import structlog

    from job_processor import InvalidDefinitionError
    from job_processor.core.log import make_log

    with pytest.raises(InvalidDefinitionError, match="LoggerAdapter must wrap a logging"):
        make_log(logging.LoggerAdapter(structlog.get_logger()))  # type: ignore[arg-type]
    make_log(logging.LoggerAdapter(logging.getLogger("ok"), {"app": "x"}))
