"""Progress and log lines, pure: what is stored for a report and a line, and what a handler
unit test records with JobHarness."""

from __future__ import annotations

import datetime as dt
import json
import logging
from fractions import Fraction
from typing import Any

import pytest

from job_processor import InvalidArgumentError
from job_processor.core import documents as D
from job_processor.core.notes import (
    LINE_BYTES,
    LOG_LIMIT,
    log_line,
    merged,
    notes_update,
    progress_of,
)
from job_processor.testing import JobHarness

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_progress_has_its_fraction_and_refuses_nonsense() -> None:
    assert progress_of(3, 12, "users", NOW) == {
        "done": 3,
        "total": 12,
        "fraction": 0.25,
        "message": "users",
        "at": NOW,
    }
    assert progress_of(40, None, None, NOW)["fraction"] is None  # a count without a total
    assert progress_of(15, 10, None, NOW)["fraction"] == 1.0
    odd = ((-1, 10), ("3", 10), (3, -1), (True, 10), (float("nan"), None), (2**63, None))
    for done, total in (*odd, (1, float("inf")), (float("inf"), None)):
        with pytest.raises(ValueError, match="report_progress"):
            progress_of(done, total, None, NOW)
    assert progress_of(0, 0, "empty input", NOW)["fraction"] == 1.0  # nothing to do: done
    half = progress_of(Fraction(1, 2), 1, None, NOW)  # any real number (numpy's too)
    assert half["done"] == 0.5 and type(half["done"]) is float and half["fraction"] == 0.5


def test_a_line_is_at_most_2_kb_and_its_fields_are_shown_as_json() -> None:
    line = log_line(2, "warning", "x" * 10_000, {"when": NOW, "ids": (1, 2), "obj": object}, NOW)
    assert line["run"] == 2 and line["level"] == "warning"
    assert len(json.dumps(line, default=str).encode()) <= LINE_BYTES
    assert line["message"].endswith("…")
    assert line["fields"]["when"] == "2030-01-01T00:00:00Z" and line["fields"]["ids"] == [1, 2]
    huge = log_line(1, "info", "ok", {"blob": "y" * 5000}, NOW)
    assert len(json.dumps(huge, default=str).encode()) <= LINE_BYTES and huge["message"] == "ok"
    assert log_line(1, "loud", "m", {}, NOW)["level"] == "info"


def test_the_update_keeps_the_last_lines_and_merges_into_another_write() -> None:
    lines = [log_line(1, "info", f"line {i}", {}, NOW) for i in range(3)]
    update = notes_update(progress_of(1, 2, None, NOW), lines)
    assert update["$push"]["logs"] == {"$each": lines, "$slice": -LOG_LIMIT}
    final = merged({"$set": {"status": "finished"}, "$unset": {"claim_name": ""}}, update)
    assert final["$set"]["status"] == "finished" and "progress" in final["$set"]
    assert "$push" in final and "$unset" in final
    assert notes_update(None, []) == {}
    before = {"logs": [log_line(1, "info", f"old {i}", {}, NOW) for i in range(LOG_LIMIT)]}
    after = D.applied(before, update)
    assert len(after["logs"]) == LOG_LIMIT and after["logs"][-1]["message"] == "line 2"


async def test_the_harness_records_progress_and_lines() -> None:
    async def reindex(job: Any, signal: Any) -> None:
        log = job.logger.bind(index="users")
        for batch in range(3):
            await job.report_progress(batch + 1, 3, f"batch {batch + 1}")
            log.info("indexed", batch=batch)
        job.log("done")
        try:
            raise ValueError("disk full")
        except ValueError:
            job.logger.exception("cleanup failed")

    harness = JobHarness(attempt=2)
    await harness.run(reindex)
    assert [p["done"] for p in harness.progress_reports] == [1, 2, 3]
    assert harness.job.progress is not None and harness.job.progress["fraction"] == 1.0
    assert [(x["level"], x["message"]) for x in harness.log_lines] == [
        ("info", "indexed"),
        ("info", "indexed"),
        ("info", "indexed"),
        ("info", "done"),
        ("error", "cleanup failed"),
    ]
    assert harness.log_lines[0]["fields"] == {"index": "users", "batch": 0}
    assert harness.log_lines[-1]["fields"] == {"exception": "ValueError: disk full"}
    assert {x["run"] for x in harness.log_lines} == {2}
    with pytest.raises(InvalidArgumentError, match="total must be a finite number >= 0"):
        await harness.job.report_progress(1, -1)


async def test_any_field_name_is_a_field_and_a_stdlib_level_is_understood() -> None:
    async def handler(job: Any, signal: Any) -> None:
        job.log("sent", level=3, event="signup", message="hi")
        job.logger.info("ok", event="e")
        job.logger.log(logging.WARNING, "slow", level="x")

    harness = JobHarness()
    await harness.run(handler)
    assert [(x["level"], x["message"], x["fields"]) for x in harness.log_lines] == [
        ("info", "sent", {"level": 3, "event": "signup", "message": "hi"}),
        ("info", "ok", {"event": "e"}),
        ("warning", "slow", {"level": "x"}),
    ]


async def test_stdlib_style_arguments_are_formatted_into_the_message() -> None:
    """`job.logger.info("rows %s", 40)` (the stdlib's way) raised TypeError and failed the
    run; arguments the message does not fit are kept after it."""

    async def handler(job: Any, signal: Any) -> None:
        job.logger.info("rows %s of %d", "a", 40, batch=3)
        job.log("by %(who)s", {"who": "name"})
        job.logger.warning("no placeholder", 1, 2)
        job.logger.log(logging.ERROR, "%d bad", "x")
        try:
            raise ValueError("boom")
        except ValueError:
            job.logger.exception("failed at %s", "step 2")

    harness = JobHarness()
    await harness.run(handler)
    assert [(x["level"], x["message"]) for x in harness.log_lines] == [
        ("info", "rows a of 40"),
        ("info", "by name"),
        ("warning", "no placeholder 1 2"),
        ("error", "%d bad x"),
        ("error", "failed at step 2"),
    ]
    assert harness.log_lines[0]["fields"] == {"batch": 3}


async def test_a_level_name_in_any_case_or_an_alias_keeps_its_level() -> None:
    """ "WARNING" (stdlib's name, logging.getLevelName(30)) and "warn" were stored as info."""

    async def handler(job: Any, signal: Any) -> None:
        job.logger.log(logging.getLevelName(logging.WARNING), "by stdlib name")
        job.logger.log("ERROR", "upper case")
        job.logger.log("warn", "alias")
        job.logger.log("Fatal", "alias")
        job.logger.log(logging.getLevelName(25), "a custom stdlib level, by its name")
        job.logger.log("trace", "a name no level has: kept as info, the run goes on")
        with pytest.raises(InvalidArgumentError, match=r"job log level 2.5: use a name"):
            job.logger.log(2.5, "not a level")  # type: ignore[arg-type]

    logging.addLevelName(25, "NOTICE")
    harness = JobHarness()
    await harness.run(handler)
    levels = [x["level"] for x in harness.log_lines]
    assert levels == ["warning", "error", "warning", "critical", "info", "info"]


async def test_the_harness_gives_a_parent_its_dependencies_and_a_resumed_progress() -> None:
    async def total(job: Any, signal: Any) -> int:
        parts = await job.dependencies()
        await job.report_progress(len(parts), len(parts))
        return sum(p.result or 0 for p in parts if p.status == "finished")

    parts = [
        JobHarness.ended("part", result=3),
        JobHarness.ended("part", status="errored", error="boom"),
    ]
    harness = JobHarness(dependencies=parts, progress={"done": 1, "total": 2})
    assert harness.job.progress is not None  # as report_progress stored it
    assert {k: harness.job.progress[k] for k in ("done", "total", "fraction")} == {
        "done": 1,
        "total": 2,
        "fraction": 0.5,
    }
    assert harness.job.deps == {parts[0].id: "finished", parts[1].id: "errored"}
    assert await harness.run(total) == 3
    assert harness.progress_reports[-1]["fraction"] == 1.0


@pytest.mark.parametrize(
    "fields",
    [{"ids": list(range(200))}, {"flags": [0] * 310}, {"rows": [[]] * 200}],
    ids=["ids", "zeros", "empty-lists"],
)
def test_a_line_is_at_most_2_kb_as_mongodb_stores_it(fields: dict[str, Any]) -> None:
    """The cap was measured as JSON: BSON stores each list item with its index as a key, so
    these lines were stored at 2.8 to 3.7 KB (guide: "each at most 2 KB")."""
    import bson

    from job_processor.core.notes import LINE_BYTES

    line = log_line(1, "info", "m" * 5000, fields, dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert len(bson.encode(line)) <= LINE_BYTES
    assert len(json.dumps(line, default=str).encode()) <= LINE_BYTES


@pytest.mark.parametrize("blob", ["😀" * 1000, "é" * 3000], ids=["emoji", "accents"])
def test_folded_non_ascii_fields_keep_the_line_under_2_kb_and_its_message(blob: str) -> None:
    """Folded fields were cut at 512 characters, not bytes: 512 emoji left no room for the
    message (cut to '…') and the line went past 2 KB."""
    import bson

    line = log_line(1, "info", "hello world", {"blob": blob}, NOW)
    assert line["message"] == "hello world"
    assert len(bson.encode(line)) <= LINE_BYTES
    assert len(json.dumps(line, default=str).encode()) <= LINE_BYTES


def test_folded_ascii_fields_with_newlines_are_cut_to_512_characters_as_documented() -> None:
    """guide.md: fields over about 1 KB become one text, "their JSON cut to 512 characters":
    a traceback (plain ASCII, with newlines) keeps them all; only text that takes over 1 KB
    escaped (emoji) keeps fewer."""
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\n' * 40
    line = log_line(1, "info", "failed", {"traceback": traceback}, NOW)
    folded = line["fields"]["fields"]
    assert folded.endswith("…") and len(folded) == 512 + 1
    emoji = log_line(1, "info", "failed", {"e": "😀" * 1000}, NOW)["fields"]["fields"]
    assert 1 < len(emoji) < 512


@pytest.mark.parametrize(
    "message",
    ["é" * 700, "Ошибка соединения с базой данных. " * 60, "数据库连接失败，正在重试。" * 100],  # noqa: RUF001
)
def test_a_long_non_ascii_message_is_cut_to_fit_not_to_nothing(message: str) -> None:
    """A message over the line's 2 KB is cut to fit: a non-ASCII one (6 bytes a character
    escaped in JSON) was cut by the bytes over, as characters: to "…" alone."""
    line = log_line(1, "error", message, {}, NOW)
    assert len(json.dumps(line, default=str).encode()) <= LINE_BYTES
    assert line["cut"] is True and line["message"].endswith("…")
    kept = line["message"][:-1]
    assert message.startswith(kept)
    assert len(kept) >= 200, f"only {len(kept)} characters kept: {line['message']!r}"


def test_progress_past_64_bits_says_why_it_is_refused() -> None:
    """2**63 is a number >= 0: the message names the 64-bit bound it is over."""
    with pytest.raises(ValueError, match="within 64 bits"):
        progress_of(2**63, None, None, NOW)


def test_a_total_whose_float_is_zero_reads_as_nothing_to_do_not_a_zero_division() -> None:
    """A positive total no float holds (Fraction(1, 10**400), stored as 0.0) passed the checks,
    then report_progress divided by its float and raised ZeroDivisionError, failing the handler
    with an error naming neither the call nor the argument. What is stored, 0.0, reads as done."""
    progress = progress_of(1, Fraction(1, 10**400), None, NOW)
    assert progress["total"] == 0.0 and progress["fraction"] == 1.0


async def test_a_custom_stdlib_level_name_is_read_in_any_case() -> None:
    """guide.md: `log(level, message)` takes a level name in any case, custom stdlib names
    included. "ALERT" (addLevelName(35, ...)) was a warning, "alert" and "Alert" info."""
    logging.addLevelName(35, "ALERT")

    async def handler(job: Any, signal: Any) -> None:
        job.logger.log("ALERT", "upper")
        job.logger.log("alert", "lower")
        job.logger.log("Alert", "title")

    harness = JobHarness()
    await harness.run(handler)
    assert [x["level"] for x in harness.log_lines] == ["warning", "warning", "warning"]


def test_a_decimal_progress_is_stored_as_the_number_it_is() -> None:
    """guide.md: `done` and `total` are any finite real numbers. Decimal("5") (an amount in
    billing code) was refused: "done must be a finite number >= 0 ..., got Decimal('5')"."""
    from decimal import Decimal

    shown = progress_of(Decimal("5"), Decimal("12.5"), None, NOW)
    assert (shown["done"], shown["total"], shown["fraction"]) == (5, 12.5, 0.4)
    assert type(shown["done"]) is int and type(shown["total"]) is float
    for bad in (Decimal("NaN"), Decimal("Infinity"), Decimal("-1")):
        with pytest.raises(ValueError, match="done must be a finite number"):
            progress_of(bad, None, None, NOW)


async def test_a_log_field_with_an_integer_of_5000_digits_never_fails_the_call() -> None:
    """guide.md: integers over 64 bits are kept as text, "a log call never fails a run". One
    over 4,300 digits (Python's limit for int-to-str) made job.log() raise ValueError ("Exceeds
    the limit (4300 digits) ..."), failing the handler; it is kept as `<int>`."""
    harness = JobHarness({})

    async def handler(job: Any, signal: Any) -> str:
        job.log("computed", modulus=10**5000, nested={"n": [10**5000]})
        return "ok"

    assert await harness.run(handler) == "ok"
    (line,) = harness.log_lines
    assert line["fields"] == {"modulus": "<int>", "nested": {"n": ["<int>"]}}


def test_progress_of_5000_digits_says_it_is_over_64_bits() -> None:
    """Its message quoted the value: repr() of an integer over 4,300 digits raised ValueError,
    and report_progress said "Exceeds the limit (4300 digits) for integer string conversion;
    use sys.set_int_max_str_digits() to increase the limit" (a limit raised would not help)."""
    for done, total in ((10**5000, None), (1, 10**5000)):
        with pytest.raises(ValueError, match=r"within 64 bits.*got an integer of 16610 bits"):
            progress_of(done, total, None, NOW)
