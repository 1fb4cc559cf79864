"""The `job-processor` commands that messages suggest (a warning's fix, a refusal's way out),
written so that each runs as printed when pasted into a shell, whatever the name it carries:
quoted for the shell, and never read as an option by the command's parser (a name that
starts with '-' goes after `--`, or is joined to its option: `--name=-x`)."""

from __future__ import annotations

import shlex


def command(verb: str, *names: str) -> str:
    """`job-processor VERB NAME...`: "job-processor names resume -- -x" for a name that starts
    with '-' (argparse takes `-x` for an option; after `--` it is an argument)."""
    shown = " ".join(shlex.quote(n) for n in names)
    dashes = "-- " if any(n.startswith("-") for n in names) else ""
    return f"job-processor {verb} {dashes}{shown}"


def option(flag: str, value: str) -> str:
    """`--name VALUE` as a command takes it: `--name=-x` for a value that starts with '-'
    (argparse takes `--name -x` for an option without its value)."""
    if value.startswith("-"):
        return f"{flag}={shlex.quote(value)}"
    return f"{flag} {shlex.quote(value)}"
