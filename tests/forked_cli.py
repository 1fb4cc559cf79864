"""`job-processor` commands run as real processes, forked from one interpreter that has already
imported the package.

Each command is its own process, as `python -m job_processor ARGS` is: its own environment and
working directory, its own MongoDB client, its own exit code, stdout and stderr (real file
descriptors). What is saved is the interpreter's start and the imports (about half a second of
CPU per command, most of what the CLI tests cost): a long-lived helper process (a "zygote")
imports `job_processor.__main__` once, then forks a child per command, which runs
`job_processor.__main__.main(args)` exactly as the console script does.

The console script itself (`python -m job_processor`) is still started for real by the demo,
the dashboard CLI and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ZYGOTE = r"""
import json, os, sys, traceback
import job_processor.__main__ as entry

def run(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.argv = ["job-processor", *req["argv"]]
    try:
        return entry.main(req["argv"])
    except SystemExit as exc:  # what the interpreter does with it
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(req)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    sys.stdout.flush()
"""


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


class Zygote:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            atexit.register(self._proc.kill)
        return self._proc

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Run:
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None
            request = {
                "argv": args,
                "env": env,
                "cwd": str(cwd),
                "stdout": str(out),
                "stderr": str(err),
            }
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            timer = threading.Timer(timeout, proc.kill)  # a hung command fails the test
            timer.start()
            try:
                line = proc.stdout.readline()
            finally:
                timer.cancel()
            if not line:
                raise TimeoutError(f"job-processor {' '.join(args)}: no answer in {timeout}s")
            code = int(json.loads(line)["returncode"])
            return Run(code, out.read_text(), err.read_text())


_ZYGOTE = Zygote()


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> Run:
    """`job-processor ARGS` in a process of its own, with this environment (added to ours)."""
    full_env = dict(os.environ) | (env or {})
    return await asyncio.to_thread(_ZYGOTE.run, list(args), full_env, cwd, timeout)
