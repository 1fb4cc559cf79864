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
