"""The dashboard tests' shared fixture: a started processor of the harness's jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from job_processor import JobProcessor

from .harness import Switches, make_processor


@pytest.fixture
async def processor(db: Any) -> AsyncIterator[tuple[JobProcessor, Switches]]:
    """The harness's processor, started, and the switches its handlers obey."""
    switches = Switches()
    started = await make_processor(db, switches)
    async with started:
        yield started, switches
