"""The dashboard tests' shared fixtures: a started processor of the harness's jobs, and a
Chromium driven by Playwright (with `signed_in`, a page that logs in)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from job_processor import JobProcessor

from .harness import CHROMIUM_ARGS, Switches, make_processor, require_chromium

AUTH = ("admin", "s3cret-pw")


@pytest.fixture
async def processor(db: Any) -> AsyncIterator[tuple[JobProcessor, Switches]]:
    """The harness's processor, started, and the switches its handlers obey."""
    switches = Switches()
    started = await make_processor(db, switches)
    async with started:
        yield started, switches


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    exe = require_chromium()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


async def signed_in(browser: Browser, **kw: Any) -> Page:
    """A page whose context sends the test credentials (AUTH), 10 s per step."""
    context = await browser.new_context(
        http_credentials={"username": AUTH[0], "password": AUTH[1]}, **kw
    )
    context.set_default_timeout(10_000)
    return await context.new_page()
