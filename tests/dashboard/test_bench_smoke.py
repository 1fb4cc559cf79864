"""benchmarks/bench_dashboard.py runs and prints its figures (a small N: the figures for
100,000 jobs are in docs/dashboard.md; they are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_benchmark_prints_its_figures(mongo_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_dashboard.py", "--jobs", "300", "--runs", "1"],
        cwd=ROOT,
        env=os.environ | {"MONGODB_URL": mongo_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "300 job documents inserted" in out
    for figure in ("overview:", "jobs page:", "next page:", "filtered page:", "metrics scrape:"):
        assert figure in out, out
    assert "what the indexes guarantee on MongoDB:" in out
