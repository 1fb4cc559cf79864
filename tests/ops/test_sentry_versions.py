"""The Sentry tests again with sentry-sdk 3.x. The dev install has a 2.x (the tests in
test_sentry.py and the cron check-in tests run with it); a fresh `pip install sentry-sdk` gets a
3.x, whose API differs (no transactions: streamed spans with attributes), so the same tests run
in a second pytest process with a 3.x first on its path. The 3.x is installed once, beside this
interpreter's environment, from PyPI (as the dev install is): without it the test fails, saying
so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentry_sdk

ROOT = Path(__file__).resolve().parents[2]
OTHER = "sentry-sdk>=3,<4"
SELECTION = [
    "tests/ops/test_sentry.py",
    "tests/engine/test_cron_sentry_deploy.py",
    "tests/engine/test_crons.py",  # its check-in tests
]


def installed_3x() -> Path:
    target = Path(sys.prefix) / "sentry-sdk-3"
    if not (target / "sentry_sdk").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
        done = subprocess.run(
            [*pip, "--target", str(target), OTHER],
            capture_output=True,
            text=True,
            timeout=100,
        )
        assert done.returncode == 0, (
            f"could not install {OTHER} into {target} for this test (pip needs PyPI once):\n"
            + done.stderr[-3000:]
        )
    return target


@pytest.mark.timeout(300)  # the install, then a second pytest with its own test server
def test_the_sentry_tests_pass_with_sentry_sdk_3() -> None:
    assert sentry_sdk.VERSION.startswith("2."), "the dev install's 2.x: this test covers 3.x"
    env = os.environ | {
        "PYTHONPATH": str(installed_3x()),
        "JOB_PROCESSOR_TEST_SENTRY_MAJOR": "3",  # test_sentry.py checks that it runs with it
    }
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *SELECTION],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-2000:]
    last = ran.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last and "deselected" not in last, last
