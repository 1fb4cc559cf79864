"""The benchmark script runs and prints every figure (the figures themselves are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench.py",
            "--jobs",
            "20",
            "--idle-seconds",
            "1",
            "--pickups",
            "3",
        ],
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": mongo_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for figure in (
        "throughput:",
        "worker commands per job:",
        "worker CPU per job:",
        "idle worker:",
        "pickup latency (job from another process",
        "pickup latency (in-process wake-up)",
    ):
        assert figure in out, out


def run_benchmark(mongo_url: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": mongo_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_event_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = run_benchmark(
        mongo_url, "benchmarks/bench_events.py", "--events", "5", "--poll-interval", "0.2"
    )
    assert out.count("publisher commands per emit:") == 3, out
    assert out.count("worker commands per delivery:") == 3, out


def test_operator_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = run_benchmark(mongo_url, "benchmarks/ops_bench.py", "--jobs", "300", "--runs", "1")
    for figure in ("jobs page 2 (cursor)", "overview (15 min)", "metrics scrape"):
        assert figure in out, out


def test_scale_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = run_benchmark(mongo_url, "benchmarks/bench_scale.py", "--jobs", "40")
    assert "concurrency  1:" in out and "concurrency  8:" in out, out
    assert "most running at once 3" in out, out  # the limit holds even in the smoke run
    assert "retention keep_finished=100 after a burst of 40: 40 -> 40 documents" in out, out


def test_producer_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = run_benchmark(
        mongo_url,
        "benchmarks/bench_producers.py",
        "--jobs",
        "50",
        "--singles",
        "10",
        "--wait-seconds",
        "1.5",
    )
    for figure in ("schedule_jobs", "schedule_job ", "raw insert_many", "JobClient", "wait_for"):
        assert figure in out, out


def test_lean_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = run_benchmark(
        mongo_url, "benchmarks/bench_lean.py", "--jobs", "20", "--idle-seconds", "1"
    )
    for figure in ("minimal queue", "bytes", "worker CPU", "idle worker"):  # server CPU: local
        assert figure in out, out


def test_flows_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = run_benchmark(
        mongo_url,
        "benchmarks/bench_flows.py",
        "--children",
        "20",
        "--seconds",
        "1.5",
        "--limited-jobs",
        "12",
    )
    for figure in ("progress + log lines", "flow of 1 parent and 20 children", "tenant limit"):
        assert figure in out, out


def test_a_benchmark_never_prints_the_password_of_mongodb_url() -> None:
    """The README invites `MONGODB_URL` "to use yours" (a real server, with credentials): the
    benchmarks printed it whole as their first line."""
    url = "mongodb://bob:s3cret-pw@127.0.0.1:1/?serverSelectionTimeoutMS=300"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_scale.py", "--jobs", "10"],
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0  # nothing listens there
    assert "s3cret-pw" not in done.stdout + done.stderr, done.stdout
    assert "server: mongodb://bob:****@127.0.0.1:1/" in done.stdout, done.stdout
