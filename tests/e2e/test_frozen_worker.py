"""A worker frozen past its lease (SIGSTOP: a long GC pause, a paused VM) with no other worker
to recover its runs: real processes, real signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from bson import ObjectId

from job_processor import JobProcessor, JobStatus
from tests.helpers import wait_for, wait_status

from .test_processes import Worker, client, spawn, wait_exit, wait_workers  # noqa: F401

S = JobStatus
pytestmark = pytest.mark.e2e


async def test_a_worker_frozen_past_its_lease_does_not_record_its_hook_under_the_id_it_gave_up(
    spawn: Callable[..., Worker],  # noqa: F811
    client: JobProcessor,  # noqa: F811
    tmp_path: Path,
) -> None:
    """guide.md: a worker whose lease ran out gives its runs up and writes nothing for them.
    A lone worker frozen past worker_timeout ended its own given-up run under the id it was
    giving up: its hook was recorded as owed by a dead worker, called by this worker, and
    called again by another worker's sweep. The run is now recovered once the worker has
    registered afresh, under its new id: the hook runs once."""
    hooks = tmp_path / "hooks.log"
    a = spawn("runner-2", E2E_HOOK_LOG=str(hooks), E2E_HOOK_HANG_ON="runner-2")
    job = await client.schedule_job("long-hooked")
    await wait_status(client, job.id, S.RUNNING)
    a.proc.send_signal(signal.SIGSTOP)
    # frozen past its lease (worker_timeout 2 s): the freeze's length, not a synchronisation
    await asyncio.sleep(3.5)
    a.proc.send_signal(signal.SIGCONT)
    await wait_for(lambda: hooks.exists() and bool(hooks.read_text()), timeout=30)
    assert (await client.get_job(job.id)).status == S.ERRORED
    raw = await client.storage.jobs.get(ObjectId(job.id))
    owner = (raw or {}).get("exit_hook_owner")
    live = {w.id for w in (await client.get_status()).workers}
    b = spawn("runner-3", E2E_HOOK_LOG=str(hooks), E2E_HOOK_HANG_ON="runner-2")
    await wait_workers(client, 2)
    # runner-2's hook hangs until its 8 s timeout, then is recorded failed: meanwhile
    # runner-3 sweeps several times (every worker_timeout / 2)
    deadline = asyncio.get_running_loop().time() + 30
    while (await client.get_job(job.id)).exit_hook not in ("failed", "done"):
        assert asyncio.get_running_loop().time() < deadline, "the hook never ended"
        await asyncio.sleep(0.05)
    lines = hooks.read_text().splitlines()
    assert lines == [f"{job.id} errored runner-2"], (owner, live, lines)
    assert owner in live, (owner, live)  # the id it registered afresh under
    for w in (a, b):
        w.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(w) == 0, w.output()[-3000:]
