"""`events list` pages past --limit as `jobs list` does: `--cursor` takes the next-page cursor
that the previous page printed on stderr (`--json` keeps its bare list on stdout), in a
stable order (emitted_at desc, then id desc) even when events share their time. It had no
way past --limit."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from job_processor import AbortSignal, Job, JobDef, init_job_processor
from job_processor.core.clock import FakeClock
from tests.conftest import url_with_db
from tests.forked_cli import Run, run_cli


async def cli(url: str, *args: str) -> Run:
    return await run_cli(*args, env={"MONGODB_URL": url})


def _more(run: Run) -> str | None:
    """The cursor a page printed ("more: add --cursor TOKEN", or past the first page "more: in
    place of this page's cursor, --cursor TOKEN"), if any."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("more: ")]
    return lines[0].split()[-1] if lines else None


async def _idle(job: Job, signal: AbortSignal) -> None:
    return None


def _follow(argv: list[str], run: Run) -> list[str] | None:
    """The next page's command, made as the printed line says (None: no more)."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("more: ")]
    if not lines:
        return None
    words = lines[0].split()
    token = words[-1]
    assert words[-2] == "--cursor", lines[0]
    if words[1] == "add":
        return [*argv, "--cursor", token]
    assert lines[0].startswith("more: in place of this page's cursor, --cursor "), lines[0]
    at = argv.index("--cursor")
    return [*argv[: at + 1], token, *argv[at + 2 :]]


async def test_the_printed_next_page_runs_as_said_past_the_second_page(
    db: Any, mongo_url: str
) -> None:
    """A page read with --cursor said "more: add --cursor TOKEN": added as said, the command
    had two (`--cursor was given 2 times`, exit 2). Past the first page the line says the
    cursor goes in place of the one given; followed as said, each page runs, to the last."""
    url = url_with_db(mongo_url, db.name)
    processor = await init_job_processor(db, jobs={"send": JobDef(handler=_idle)})
    for n in range(5):
        await processor.emit("shipped", {"n": n})
        await processor.schedule_job("send", {"n": n}, delay=3600)
    for argv in (["events", "list", "--limit", "2"], ["jobs", "list", "--limit", "2"]):
        pages: list[list[str]] = []
        next_argv: list[str] | None = argv
        while next_argv is not None and len(pages) < 10:
            page = await cli(url, *next_argv)
            assert page.returncode == 0, (next_argv, page.stderr)
            pages.append(page.stdout.splitlines()[1:])
            next_argv = _follow(next_argv, page)
        assert [len(rows) for rows in pages] == [2, 2, 1], (argv, pages)


async def test_events_list_pages_with_a_cursor(db: Any, mongo_url: str) -> None:
    url = url_with_db(mongo_url, db.name)
    clock = FakeClock(dt.datetime(2030, 1, 31, 9, 0, 0, 500000, tzinfo=dt.UTC))
    processor = await init_job_processor(db, clock=clock)
    first = [(await processor.emit("shipped", {"n": n})).id for n in range(2)]
    clock.advance(1.5)  # a newer one, between them
    newer = (await processor.emit("shipped", {"n": 2})).id
    clock.advance(-1.5)  # then back: five events at the same time, in all
    same = first + [(await processor.emit("shipped", {"n": n})).id for n in range(3, 6)]
    expected = [newer, *sorted(same, reverse=True)]  # emitted_at desc, then id desc
    seen: list[str] = []  # text pages of 2, each following the printed cursor
    args = ["events", "list", "--limit", "2"]
    cursor: str | None = None
    for _ in range(10):
        page = await cli(url, *args, *(["--cursor", cursor] if cursor else []))
        assert page.returncode == 0, page.stderr
        rows = page.stdout.splitlines()[1:]
        seen += [row.split()[0] for row in rows if row != "(none)"]
        cursor = _more(page)
        if cursor is None:
            break
    assert seen == expected

    seen = []  # JSON pages of 4: the events on stdout, the next page's cursor on stderr
    cursor = None
    for _ in range(10):
        page = await cli(
            url, *args[:2], "--limit", "4", "--json", *(["--cursor", cursor] if cursor else [])
        )
        assert page.returncode == 0, page.stderr
        data = json.loads(page.stdout)
        seen += [e["id"] for e in data]  # a list, as before paging
        cursor = _more(page)
        if cursor is None:
            break
    assert seen == expected

    bad = await cli(url, "events", "list", "--cursor", "nope")
    assert bad.returncode == 2 and "is not a cursor of an events listing" in bad.stderr, bad.stderr

    most = await cli(url, "events", "list", "--limit", "10000", "--json")  # the most, as before
    assert most.returncode == 0 and len(json.loads(most.stdout)) == 6, most.stderr
