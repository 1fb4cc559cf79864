"""The `job-processor` command (and `python -m job_processor`): the command line of
`job_processor.cli`, with the demo, which is built on the public API above it."""

from __future__ import annotations

from collections.abc import Sequence

from . import demo
from .cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    """The process's entry point: it exits with the code returned (a signal repeated as it
    stops is ignored until then)."""
    return cli_main(argv, commands={"demo": demo.command}, exiting=True)


if __name__ == "__main__":
    raise SystemExit(main())
