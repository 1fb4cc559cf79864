"""docker-compose.production.yml, read as compose reads it (no Docker engine runs here): each
worker service runs a real app factory with arguments the CLI accepts, has `job-processor
health` as its healthcheck, and gets its tags from the service (plain compose does not expand
`{{.Task.Slot}}`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from job_processor.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]


def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.production.yml").read_text())
    return dict(compose["services"])


def test_each_worker_service_runs_an_app_factory_the_cli_accepts() -> None:
    workers = {
        k: v for k, v in services().items() if v.get("command", [None])[0] == "job-processor"
    }
    assert set(workers) == {"job-processor-main", "job-processor"}
    for name, service in workers.items():
        command = service["command"]
        args = build_parser().parse_args(command[1:])
        assert args.command == "run", name
        module, attr = args.target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), args.target
        assert args.metrics_port == 9100
        assert args.metrics_host == "0.0.0.0"  # given explicitly: the default is loopback
        check = service["healthcheck"]["test"]
        assert check[:3] == ["CMD", "job-processor", "health"], check
        assert build_parser().parse_args(check[2:]).command == "health"
        env = service["environment"]
        assert "replicaSet=" in env["MONGODB_URL"]  # change streams need a replica set
        assert "{{" not in env.get("INSTANCE_ID", ""), "plain compose does not expand templates"
        assert service["stop_grace_period"]  # SIGTERM, then time to pause resumable jobs


def test_main_jobs_have_exactly_one_worker_and_the_rest_are_replicated() -> None:
    s = services()
    main, rest = s["job-processor-main"], s["job-processor"]
    assert main["environment"]["JOB_PROCESSOR_WORKER_TAGS"] == "main"
    assert main["deploy"]["replicas"] == 1
    assert rest["environment"]["JOB_PROCESSOR_WORKER_TAGS"] != "main"
    assert rest["deploy"]["replicas"] >= 2
    assert s["mongodb"]["command"][:3] == ["mongod", "--replSet", "rs0"]


def test_each_worker_runs_under_an_init_so_an_early_sigterm_is_not_lost() -> None:
    """`job-processor run` was PID 1 of its container: the kernel drops a signal PID 1 has no
    handler for, so a SIGTERM in its first half second (Python still loading job-processor,
    documented as ending the process, exit 143) was lost, and the worker started and ran
    until Docker's SIGKILL, stop_grace_period later. An init (Docker's tini) is PID 1 and
    passes the signal on."""
    for name, service in services().items():
        if service.get("command", [None])[0] == "job-processor":
            assert service.get("init") is True, name
