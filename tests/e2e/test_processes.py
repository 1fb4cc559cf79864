"""Real worker processes (`job-processor run`), real SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from job_processor import JobProcessor, JobSpec, JobStatus, init_job_processor
from job_processor.core.runs import WORKER_SILENT
from tests.conftest import url_with_db
from tests.helpers import wait_for, wait_status

from .app import JOBS

S = JobStatus
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def kill_all(workers: list[Worker]) -> None:
    """The end of a test: the worker processes still running are killed, and all reaped."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(10)


@pytest.fixture
def spawn(mongo_url: str, db: Any, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(instance_id: str, **extra_env: str) -> Worker:
        log = tmp_path / f"{instance_id}-{len(workers)}.log"
        env = (
            os.environ
            | {
                "MONGODB_URL": url_with_db(mongo_url, db.name),
                "INSTANCE_ID": instance_id,
                "PYTHONUNBUFFERED": "1",
            }
            | extra_env
        )
        env.pop("JOB_PROCESSOR_WORKER_TAGS", None)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "job_processor", "run", "tests.e2e.app:make"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, log)
        workers.append(worker)
        return worker

    yield start
    kill_all(workers)


@pytest.fixture
async def client(db: Any) -> AsyncIterator[JobProcessor]:
    """This test process: schedules, kills and reads, never runs jobs."""
    yield await init_job_processor(db, jobs=JOBS, worker_timeout=2.0, heartbeat_interval=0.5)


async def wait_workers(client: JobProcessor, count: int, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len((await client.get_status()).workers) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{count} workers did not register")
        await asyncio.sleep(0.1)


async def wait_exit(worker: Worker, timeout: float = 15) -> int:
    for _ in range(int(timeout * 10)):
        if worker.proc.poll() is not None:
            return worker.proc.returncode
        await asyncio.sleep(0.1)
    raise AssertionError(f"worker did not exit:\n{worker.output()[-3000:]}")


async def test_tags_follow_instance_id(spawn: Callable[..., Worker], client: JobProcessor) -> None:
    r1, r2 = spawn("runner-1"), spawn("runner-2")
    await wait_workers(client, 2)
    mains = [await client.schedule_job("main-report") for _ in range(3)]
    others = [await client.schedule_job("anywhere") for _ in range(4)]
    for job in mains:
        done = await wait_status(client, job.id, S.FINISHED)
        assert done.result["instance_id"] == "runner-1"
    for job in others:
        await wait_status(client, job.id, S.FINISHED)
    status = await client.get_status()
    assert sorted(w.instance_id or "" for w in status.workers) == ["runner-1", "runner-2"]
    assert {tuple(w.tags or []) for w in status.workers} == {("main",), ("secondary",)}
    for w in (r1, r2):
        w.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(w) == 0, w.output()
    assert (await client.get_status()).workers == []


async def test_sigterm_pauses_resumable_and_another_worker_resumes(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    a = spawn("runner-2")
    job = await client.schedule_job("long-resumable", {"steps": 30})
    for _ in range(200):
        current = await client.get_job(job.id)
        if (current.state or {}).get("step", 0) >= 3:
            break
        await asyncio.sleep(0.05)
    a.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(a) == 0, a.output()
    paused = await client.get_job(job.id)
    assert paused.status == S.PAUSED, a.output()
    step = paused.state["step"] if paused.state else 0
    assert 3 <= step < 30
    b = spawn("runner-3")
    done = await wait_status(client, job.id, S.FINISHED, timeout=30)
    assert done.result["instance_id"] == "runner-3"
    assert done.result["resumed_from"] == step  # this run started from the checkpoint
    assert done.state is not None
    assert done.state["step"] == 30
    assert done.started_at == paused.started_at
    assert done.attempt == 2
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0


async def test_sigterm_exits_even_while_plain_handlers_and_hooks_are_stuck(
    spawn: Callable[..., Worker], client: JobProcessor, tmp_path: Path
) -> None:
    """A plain def that never returns, and a plain hook that outlives its timeout, keep their
    threads; SIGTERM still stops the worker within its grace period and the process exits."""
    hooks = tmp_path / "hooks.log"
    a = spawn("runner-2", E2E_HOOK_LOG=str(hooks), E2E_HOOK_HANG_ON="runner-2")
    hooked = await client.schedule_job("hooked")
    stuck = await client.schedule_job("stuck-plain")
    await wait_status(client, stuck.id, S.RUNNING)
    for _ in range(200):  # its hook (which hangs 60 s here) timed out after 2 s
        if (await client.get_job(hooked.id)).exit_hook == "failed":
            break
        await asyncio.sleep(0.05)
    assert (await client.get_job(hooked.id)).exit_hook_error == "timed out after 2s"
    started = asyncio.get_running_loop().time()
    a.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(a, timeout=10) == 0, a.output()
    assert asyncio.get_running_loop().time() - started < 8
    ended = await client.get_job(stuck.id)
    assert ended.status == S.PENDING, a.output()  # interrupted: it runs again from scratch
    assert "thread_left_running=True" in a.output()


async def test_sigkill_is_recovered_by_another_worker(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    a = spawn("runner-2")
    plain = await client.schedule_job("long-plain")
    resumable = await client.schedule_job("long-resumable", {"steps": 20})
    await wait_status(client, plain.id, S.RUNNING)
    await wait_status(client, resumable.id, S.RUNNING)
    for _ in range(200):  # until it has checkpointed a few steps
        if ((await client.get_job(resumable.id)).state or {}).get("step", 0) >= 3:
            break
        await asyncio.sleep(0.05)
    a.proc.send_signal(signal.SIGKILL)
    await wait_exit(a)
    assert (await client.get_job(plain.id)).status == S.RUNNING  # nobody knows yet
    b = spawn("runner-3")
    crashed = await wait_status(client, plain.id, S.ERRORED, timeout=30)
    assert crashed.error == WORKER_SILENT
    done = await wait_status(client, resumable.id, S.FINISHED, timeout=30)
    assert done.result["instance_id"] == "runner-3"
    assert done.result["resumed_from"] > 0  # continued from the checkpoint, not from zero
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0


async def test_progress_and_lines_flushed_before_a_sigkill_are_kept(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    """Another process sees a job's progress and log lines while it runs; after its worker is
    SIGKILLed, the lines already written stay, and the next run's lines follow them."""
    a = spawn("runner-2")
    job = await client.schedule_job("chatty", {"steps": 60})
    for _ in range(200):
        seen = await client.get_job(job.id)
        if len(seen.logs) >= 10 and seen.progress:
            break
        await asyncio.sleep(0.05)
    assert seen.status == S.RUNNING and seen.progress["done"] >= 10  # while it runs
    a.proc.send_signal(signal.SIGKILL)
    await wait_exit(a)
    kept = (await client.get_job(job.id)).logs
    assert len(kept) >= 10 and {x["run"] for x in kept} == {1}
    assert [x["fields"]["step"] for x in kept] == list(range(1, len(kept) + 1))
    b = spawn("runner-3")
    done = await wait_status(client, job.id, S.FINISHED, timeout=30)
    assert done.logs[: len(kept)] == kept  # the first run's lines, as they were
    second = [x for x in done.logs if x["run"] == 2]
    assert second[-1]["fields"] == {"step": 60, "instance_id": "runner-3"}
    assert done.progress["done"] == 60
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0


async def test_a_tenants_backlog_does_not_hold_back_another_tenant(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    """One worker process with 8 slots, a limit of 4 per tenant: 300 jobs of tenant A queued
    (0.3 s each: about 22 s of A's backlog), then 10 of tenant B. B's jobs all run while most
    of A's backlog is still queued, and the worker runs 4 of A and 4 of B at once (the
    handlers' own clocks; no wall-clock bound, which a loaded machine would break)."""
    a = spawn("runner-2", E2E_CONCURRENCY="8")
    await client.schedule_jobs([("tenant-work", {"tenant": "A"}) for _ in range(300)])
    await wait_workers(client, 1)
    await asyncio.sleep(1.0)  # A fills its 4 slots; the other 4 stay free
    b_jobs = await client.schedule_jobs([("tenant-work", {"tenant": "B"}) for _ in range(10)])
    done = [await wait_status(client, j.id, S.FINISHED, timeout=60) for j in b_jobs]
    a.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(a) == 0
    b_runs = [(j.result["t0"], j.result["t1"]) for j in done]
    finished_a = await client.list_jobs("tenant-work", "finished", limit=300)
    a_runs = [(j.result["t0"], j.result["t1"]) for j in finished_a if j.result["tenant"] == "A"]
    # none waited behind A: when B's last job started, more than half of A's had not started
    # (stopped by SIGTERM before they ran, or started later); in arrival order, all 300 would
    queued_a = 300 - sum(1 for t0, _ in a_runs if t0 <= max(t0 for t0, _ in b_runs))
    assert queued_a > 150, (queued_a, b_runs)

    def most_at_once(runs: list[tuple[float, float]], at: float) -> int:
        return sum(1 for t0, t1 in runs if t0 <= at < t1)

    instants = [t0 for t0, _ in a_runs + b_runs]
    assert max(most_at_once(a_runs, t) for t in instants) == 4  # never more than its limit
    assert max(most_at_once(b_runs, t) for t in instants) == 4
    both = max(most_at_once(a_runs, t) + most_at_once(b_runs, t) for t in instants)
    assert both == 8  # every slot busy: 4 of A beside 4 of B
    assert (await client.get_job(b_jobs[0].id)).payload == {"tenant": "B"}


@pytest.mark.timeout(300)  # about 30 s alone here; four times that beside other tests at -n 3
async def test_a_fan_in_of_1000_children_releases_its_parent_once(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    # a 2 s worker_timeout declares a busy worker dead on a loaded machine, and a child
    # recovered from it is errored (one attempt): its parent is then rightly skipped
    spawn("runner-2", E2E_CONCURRENCY="8", E2E_WORKER_TIMEOUT="20")
    spawn("runner-3", E2E_CONCURRENCY="8", E2E_WORKER_TIMEOUT="20")
    children = [JobSpec("anywhere", {"i": i}) for i in range(1000)]
    jobs = await client.schedule_jobs(
        [*children, JobSpec("anywhere", {"parent": 1}, after=children)]
    )
    parent = await wait_status(client, jobs[-1].id, S.FINISHED, timeout=270)
    assert parent.attempt == 1 and parent.waiting_on == 0  # released once
    assert set(parent.deps.values()) == {"finished"} and len(parent.deps) == 1000
    done = await client.get_jobs(parent.after)
    assert len(done) == 1000 and {j.status for j in done} == {S.FINISHED}
    assert {j.result["instance_id"] for j in done} == {"runner-2", "runner-3"}
    assert parent.run_started_at is not None
    assert parent.run_started_at >= max(j.ended_at for j in done if j.ended_at)


async def test_a_flow_across_processes_with_a_failed_and_a_killed_dependency(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    spawn("runner-2")
    refused = await client.schedule_job("refused", {"what": "the upload"})
    parents = {
        policy: await client.schedule_job(
            "anywhere", {"policy": policy}, after=[refused], on_dependency_failure=policy
        )
        for policy in ("skip", "run", "error")
    }
    assert (await wait_status(client, parents["skip"].id, S.SKIPPED)).failed_dependency == (
        refused.id
    )
    assert (await wait_status(client, parents["run"].id, S.FINISHED)).deps == {
        refused.id: "errored"
    }
    errored = await wait_status(client, parents["error"].id, S.ERRORED)
    assert (
        errored.error == f"dependency {refused.id} errored: not run (on_dependency_failure='error')"
    )
    blocked = await client.schedule_job("long-plain")
    after_blocked = await client.schedule_job("anywhere", after=[blocked])
    await wait_status(client, blocked.id, S.RUNNING)
    await client.kill_job(blocked.id)  # the worker process aborts it, its final write settles
    skipped = await wait_status(client, after_blocked.id, S.SKIPPED)
    assert skipped.deps == {blocked.id: "killed"}


async def test_a_hook_cut_by_sigkill_is_called_again_by_another_worker(
    spawn: Callable[..., Worker], client: JobProcessor, tmp_path: Path
) -> None:
    hook_log = tmp_path / "hooks.log"
    a = spawn("runner-2", E2E_HOOK_LOG=str(hook_log), E2E_HOOK_HANG_ON="runner-2")
    job = await client.schedule_job("hooked")
    for _ in range(200):  # until the hook has started in runner-2
        if hook_log.exists() and hook_log.read_text():
            break
        await asyncio.sleep(0.05)
    a.proc.send_signal(signal.SIGKILL)  # after the final write, during on_job_exited
    await wait_exit(a)
    cut = await client.get_job(job.id)
    assert (cut.status, cut.exit_hook) == (S.FINISHED, "owed")
    b = spawn("runner-3", E2E_HOOK_LOG=str(hook_log), E2E_HOOK_HANG_ON="runner-2")
    for _ in range(300):
        if (await client.get_job(job.id)).exit_hook == "done":
            break
        await asyncio.sleep(0.05)
    assert (await client.get_job(job.id)).exit_hook == "done", b.output()
    assert hook_log.read_text().splitlines() == [
        f"{job.id} finished runner-2",  # cut by the SIGKILL
        f"{job.id} finished runner-3",  # taken over: at least once
    ]
    assert "on_job_exited_recovered" in b.output()
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0


async def test_cluster_wide_limits_hold_across_worker_processes(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    workers = [spawn(f"runner-{i}", E2E_CONCURRENCY="8") for i in (1, 2, 3, 4)]
    await wait_workers(client, 4)
    limited = [await client.schedule_job("limited") for _ in range(24)]
    rated = [await client.schedule_job("rated", {"seconds": 0}) for _ in range(15)]
    done = [await wait_status(client, j.id, S.FINISHED, timeout=30) for j in limited + rated]
    for w in workers:
        w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        assert await wait_exit(w) == 0, w.output()
    spans = sorted((j.result["t0"], j.result["t1"]) for j in done[:24])
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3, spans  # 32 slots in 4 processes, never more than the limit at once
    starts = sorted(j.result["t0"] for j in done[24:])
    # at most 5 starts per second: any 6 consecutive starts span a second, less the time
    # between a slot being taken and its handler starting (two round trips: up to ~100 ms
    # under load, allowed twice: one start late, the other on time)
    late = 0.2
    assert all(b - a >= 1 - late for a, b in zip(starts, starts[5:], strict=False)), starts
    assert starts[-1] - starts[0] >= 2 - late, starts  # 15 starts at 5/s: three windows


async def test_a_limit_slot_held_by_a_sigkilled_worker_is_given_back_once(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    async def provider() -> dict[str, Any]:
        usage = {u["key"]: u for u in (await client.get_status()).limits}
        return usage["provider"]

    a = spawn("runner-2", E2E_CONCURRENCY="8")
    held = [await client.schedule_job("limited", {"seconds": 60}) for _ in range(3)]
    for job in held:
        await wait_status(client, job.id, S.RUNNING)
    assert (await provider())["running"] == 3  # the whole limit, in one process
    waiting = [await client.schedule_job("limited", {"seconds": 0.05}) for _ in range(3)]
    a.proc.send_signal(signal.SIGKILL)
    await wait_exit(a)
    assert [(await client.get_job(j.id)).status for j in waiting] == [S.PENDING] * 3
    b = spawn("runner-3", E2E_CONCURRENCY="8")
    for job in held:  # recovered by runner-3, with their slots in the same step
        crashed = await wait_status(client, job.id, S.ERRORED, timeout=30)
        assert crashed.error == WORKER_SILENT
    for job in waiting:  # the slots given back are used
        done = await wait_status(client, job.id, S.FINISHED, timeout=30)
        assert done.result["instance_id"] == "runner-3"
    usage = await provider()
    assert usage["running"] == 0, usage  # each slot given back exactly once: not below zero
    stored = await client.storage.limits.coll.find_one({"_id": "provider"})
    assert stored is not None and not stored.get("holders"), stored
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0


async def test_kill_reaches_the_process_running_the_job(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    a = spawn("runner-2")
    job = await client.schedule_job("long-plain")
    await wait_status(client, job.id, S.RUNNING)
    await client.kill_job(job.id)
    killed = await wait_status(client, job.id, S.KILLED, timeout=5)
    assert killed.worker_id is not None
    assert "job_abort_requested" in a.output()
    a.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(a) == 0


async def test_seconds_cron_across_worker_processes_runs_each_slot_once(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    workers = [spawn(f"runner-{i}", E2E_CRON="1") for i in (1, 2, 3)]
    await wait_workers(client, 3)

    async def finished_slots() -> int:
        return sum(
            t.status == JobStatus.FINISHED for t in await client.list_jobs("tick", limit=100)
        )

    deadline = asyncio.get_running_loop().time() + 40
    while await finished_slots() < 6:  # six consecutive seconds of slots
        assert asyncio.get_running_loop().time() < deadline, "cron slots did not run"
        await asyncio.sleep(0.2)
    for w in workers:
        w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        assert await wait_exit(w) == 0, w.output()
    tasks = sorted(await client.list_jobs("tick", limit=1000), key=lambda j: j.scheduled_for)
    slots = [t.scheduled_for for t in tasks]
    assert len(slots) >= 6
    assert len(slots) == len(set(slots)), "a slot ran twice"
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(g == dt.timedelta(seconds=1) for g in gaps), "a slot is missing"
    done = [t for t in tasks if t.status == JobStatus.FINISHED]
    assert len(done) >= len(tasks) - 3  # the stop may interrupt the last ones
    runners = {t.result["instance_id"] for t in done}
    assert len(runners) >= 2  # the replicas share the work


async def test_a_worker_whose_log_pipe_is_closed_keeps_working(
    mongo_url: str, db: Any, client: JobProcessor
) -> None:
    """`job-processor run app:make 2>&1 | head -3`: once `head` exits, every log line meets a
    closed pipe. The worker drops them and goes on claiming (its loops used to die on the
    first one while its heartbeat kept it looking healthy); SIGTERM still stops it cleanly."""
    env = os.environ | {
        "MONGODB_URL": url_with_db(mongo_url, db.name),
        "INSTANCE_ID": "runner-2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("JOB_PROCESSOR_WORKER_TAGS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "job_processor", "run", "tests.e2e.app:make"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        for _ in range(3):  # what `head -3` reads
            await asyncio.to_thread(proc.stdout.readline)
        proc.stdout.close()  # and exits
        await wait_workers(client, 1)
        jobs = [await client.schedule_job("anywhere", {"n": i}) for i in range(5)]
        for job in jobs:  # each one logs job_started and job_finished into the closed pipe
            assert (await wait_status(client, job.id, S.FINISHED, timeout=30)).status
        proc.send_signal(signal.SIGTERM)
        for _ in range(150):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert proc.returncode is not None, "the worker did not stop on SIGTERM"
        assert (await client.get_status()).workers == []  # it unregistered on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# Frozen (SIGSTOP) and killed workers: an outside audit found no real-process test of these
# promises of docs/guide.md and docs/flows.md.


async def step_reached(client: JobProcessor, job_id: str, step: int, attempt: int = 1) -> None:
    """Wait until the resumable job's checkpoint has reached `step` in that attempt."""

    deadline = asyncio.get_running_loop().time() + 30
    while True:
        job = await client.get_job(job_id)
        if job.attempt == attempt and (job.state or {}).get("step", 0) >= step:
            return
        assert asyncio.get_running_loop().time() < deadline, (job.attempt, job.state)
        await asyncio.sleep(0.05)  # paces the reads (bounded by the deadline)


async def test_a_frozen_worker_resumed_after_recovery_writes_nothing_over_it(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    """guide.md: a worker whose heartbeat stops (here its process is frozen, as a paused VM
    or a long GC would) is declared dead after worker_timeout and its jobs recovered; when it
    runs again it gives its runs up (job_lost) and writes nothing over what the recovery
    wrote."""
    a = spawn("runner-2")
    plain = await client.schedule_job("long-plain")
    resumable = await client.schedule_job("long-resumable", {"steps": 60})
    await wait_status(client, plain.id, S.RUNNING)
    await step_reached(client, resumable.id, 3)
    a.proc.send_signal(signal.SIGSTOP)
    b = spawn("runner-3")
    crashed = await wait_status(client, plain.id, S.ERRORED, timeout=30)
    assert crashed.error == WORKER_SILENT
    await step_reached(client, resumable.id, 1, attempt=2)  # resumed by the other worker
    a.proc.send_signal(signal.SIGCONT)
    # the frozen worker wakes up, finds its runs recovered and gives them up
    for job_id in (plain.id, resumable.id):
        await wait_for(
            lambda job_id=job_id: any(
                "job_lost" in line and job_id in line for line in a.output().splitlines()
            ),
            timeout=30,
        )
    # its next heartbeat says so (a blocked loop's check may give the runs up first)
    await wait_for(lambda: "worker_declared_dead" in a.output(), timeout=30)
    done = await wait_status(client, resumable.id, S.FINISHED, timeout=30)
    assert done.result["instance_id"] == "runner-3", done
    assert done.state is not None and done.state["step"] == 60, done.state
    after = await client.get_job(plain.id)
    assert (after.status, after.error) == (S.ERRORED, WORKER_SILENT)
    await wait_workers(client, 2)  # the woken worker registered again
    for w in (a, b):
        w.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(w) == 0, w.output()[-3000:]


async def test_a_sigkilled_dependency_releases_its_dependents_after_recovery(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    """flows.md: a job waiting for one whose worker is killed (SIGKILL) is released by the
    recovered end: skipped, run or errored by its on_dependency_failure; one waiting for a
    resumable job is released once that job finishes on the other worker."""
    a = spawn("runner-2")
    dep = await client.schedule_job("long-plain")
    resumable = await client.schedule_job("long-resumable", {"steps": 40})
    waiting = {
        policy: await client.schedule_job(
            "anywhere", {"policy": policy}, after=[dep], on_dependency_failure=policy
        )
        for policy in ("skip", "run", "error")
    }
    after_resumable = await client.schedule_job("anywhere", {"x": 1}, after=[resumable])
    await wait_status(client, dep.id, S.RUNNING)
    await step_reached(client, resumable.id, 1)
    a.proc.send_signal(signal.SIGKILL)
    await wait_exit(a)
    b = spawn("runner-3")
    assert (await wait_status(client, dep.id, S.ERRORED, timeout=30)).error == WORKER_SILENT
    skipped = await wait_status(client, waiting["skip"].id, S.SKIPPED, timeout=30)
    assert skipped.failed_dependency == dep.id
    ran = await wait_status(client, waiting["run"].id, S.FINISHED, timeout=30)
    assert ran.deps == {dep.id: "errored"}
    await wait_status(client, waiting["error"].id, S.ERRORED, timeout=30)
    await wait_status(client, resumable.id, S.FINISHED, timeout=30)
    done = await wait_status(client, after_resumable.id, S.FINISHED, timeout=30)
    assert done.deps == {resumable.id: "finished"}
    b.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(b) == 0


async def test_a_frozen_worker_resumed_writes_no_checkpoint_over_the_recovered_run(
    spawn: Callable[..., Worker], client: JobProcessor
) -> None:
    """The woken worker's handler is still in its loop: its next checkpoint must not land on
    the attempt the other worker runs now (the step read back would go backwards). A stray
    write lasts until the other worker's next checkpoint (0.1 s): the reads are made back to
    back from the wake-up until the woken worker has given the run up, and a little after."""
    a = spawn("runner-2")
    resumable = await client.schedule_job("long-resumable", {"steps": 80})
    await step_reached(client, resumable.id, 3)
    a.proc.send_signal(signal.SIGSTOP)
    b = spawn("runner-3")
    await step_reached(client, resumable.id, 10, attempt=2)  # past anything the frozen one holds
    a.proc.send_signal(signal.SIGCONT)
    steps: list[int] = []
    deadline = asyncio.get_running_loop().time() + 30
    lost = False
    while not lost:
        lost = any("job_lost" in line and resumable.id in line for line in a.output().splitlines())
        job = await client.get_job(resumable.id)
        if job.attempt == 2 and job.state:
            steps.append(job.state["step"])
        assert asyncio.get_running_loop().time() < deadline, "the woken worker lost no run"
    for _ in range(20):  # and a little after it (each read a round trip)
        job = await client.get_job(resumable.id)
        if job.attempt == 2 and job.state:
            steps.append(job.state["step"])
    assert steps == sorted(steps), steps
    await wait_status(client, resumable.id, S.FINISHED, timeout=30)
    for w in (a, b):
        w.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(w) == 0, w.output()[-3000:]
