"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from job_processor import JobStatus
from job_processor.cli import RunContext


async def test_tagged_workers_example(db: Any, mongo_url: str) -> None:
    from examples import tagged_workers

    assert tagged_workers.tags_for("runner-1") == ["main"]
    assert tagged_workers.tags_for("runner-2") == ["secondary"]
    ctx = RunContext(mongodb_url=mongo_url, db=db, instance_id="runner-1", worker_tags=None)
    processor = await tagged_workers.make(ctx)
    assert "rebuild-search-index" in processor.worker.names
    done = await processor.run_job("rebuild-search-index", {"batches": 3})
    assert done.status == JobStatus.FINISHED
    assert done.result == {"batches": 3}
    other = await tagged_workers.make(
        RunContext(mongodb_url=mongo_url, db=db, instance_id="runner-2", worker_tags=None)
    )
    assert "rebuild-search-index" not in other.worker.names


def test_web_service_example(scratch_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from examples import web_service

    monkeypatch.setenv("MONGODB_URL", scratch_url)
    monkeypatch.setenv("DASHBOARD_PASSWORD", "pa55word")
    with TestClient(web_service.app) as client:
        resp = client.post("/emails", params={"to": "ada@example.com"})
        assert resp.status_code == 202
        job_id = resp.json()["job_id"]
        for _ in range(100):
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] == "finished":
                break
            time.sleep(0.05)
        assert job["status"] == "finished"
        assert job["output"]["result"] == {"sent_to": "ada@example.com"}
        assert client.post("/emails").status_code == 400  # no ?to=
        assert client.get("/jobs/nope").status_code == 404
        assert client.get("/dashboard/").status_code == 401  # mounted, behind its auth
        page = client.get("/dashboard/jobs", auth=("admin", "pa55word"))
        assert page.status_code == 200
        assert job_id in page.text and 'href="/dashboard/' in page.text  # links stay under it


@pytest.fixture
def report_workers(scratch_url: str, tmp_path: Any) -> Any:
    """`job-processor run examples.report_jobs:make` on a fresh database: the async workers
    behind the Django and Flask examples, in a process of their own."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = scratch_url  # dropped after the test (a real server is shared)
    root = Path(__file__).resolve().parents[1]
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "job_processor", "run", "examples.report_jobs:make"],
            cwd=root,
            env=os.environ | {"MONGODB_URL": url},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield url
    proc.terminate()
    proc.wait(15)


def poll(get: Any, url: str) -> Any:
    """The poll view as a browser's script uses it: long polls until the job has ended."""
    for _ in range(20):
        resp = get(url)
        if resp.status_code == 200:
            return resp
        assert resp.status_code == 202
    raise AssertionError("the report never ended")


def test_flask_example_enqueues_and_polls(
    report_workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples import flask_app

    monkeypatch.setenv("MONGODB_URL", report_workers)
    monkeypatch.setattr(flask_app, "_client", None)
    web = flask_app.app.test_client()
    try:
        check_flask(web)
    finally:
        if flask_app._client is not None:
            flask_app._client.database.client.close()


def check_flask(web: Any) -> None:
    bad = web.post("/reports", json={"customer": "acme", "rows": "many"})
    assert bad.status_code == 400 and "field 'rows'" in bad.get_json()["error"]
    garbled = web.post("/reports", data="not json", content_type="text/plain")
    assert garbled.status_code == 400 and "JSON object" in garbled.get_json()["error"]
    made = web.post("/reports", json={"customer": "acme", "rows": 40})
    assert made.status_code == 202
    body = poll(web.get, made.get_json()["status_url"] + "?wait=2").get_json()
    assert body["status"] == "finished"
    assert body["result"] == {"customer": "acme", "rows": 40, "file": "acme.csv"}
    failed = web.post("/reports", json={"customer": "nobody", "rows": 1}).get_json()
    body = poll(web.get, failed["status_url"] + "?wait=2").get_json()
    assert body["status"] == "errored" and "no customer named 'nobody'" in body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]  # not the worker's
    assert web.get("/reports/0123456789abcdef01234567").status_code == 404
    for wait in ("abc", "-1", "31"):
        bad_wait = web.get(f"{failed['status_url']}?wait={wait}")
        assert bad_wait.status_code == 400 and "wait must be" in bad_wait.get_json()["error"]


def test_django_example_enqueues_and_polls(
    report_workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
    monkeypatch.setenv("MONGODB_URL", report_workers)
    import django
    from django.conf import settings
    from django.test import Client

    django.setup()
    monkeypatch.setattr(settings, "MONGODB_URL", os.environ["MONGODB_URL"])
    from examples.django_app import jobs

    monkeypatch.setattr(jobs, "_client", None)
    try:
        check_django(Client())
    finally:
        if jobs._client is not None:
            jobs._client.database.client.close()


def check_django(web: Any) -> None:
    bad = web.post("/reports", data='{"customer": "acme"}', content_type="application/json")
    assert bad.status_code == 400 and "field 'rows'" in bad.json()["error"]
    made = web.post(
        "/reports", data='{"customer": "acme", "rows": 7}', content_type="application/json"
    )
    assert made.status_code == 202
    body = poll(web.get, made.json()["status_url"] + "?wait=2").json()
    assert body == {
        "id": made.json()["id"],
        "status": "finished",
        "result": {"customer": "acme", "rows": 7, "file": "acme.csv"},
    }
    assert web.get(made.json()["status_url"] + "?wait=abc").status_code == 400


WSGI_REQUEST = """
import io, json, sys
from wsgiref.util import setup_testing_defaults
from examples.django_app.wsgi import application  # what gunicorn imports

body = json.dumps({"customer": "acme", "rows": 2}).encode()
environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/reports", "CONTENT_TYPE": "application/json",
           "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
setup_testing_defaults(environ)
status = []
out = b"".join(application(environ, lambda s, headers, exc=None: status.append(s)))
print(status[0], out.decode())
"""


def test_the_django_example_has_the_wsgi_module_gunicorn_serves(report_workers: str) -> None:
    """`gunicorn examples.django_app.wsgi`, as settings.py says (there was no wsgi module: a
    newcomer had to write one to deploy the example): only MONGODB_URL set."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", WSGI_REQUEST],
        cwd=Path(__file__).resolve().parents[1],
        env=env | {"MONGODB_URL": report_workers},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("202 Accepted") and '"status_url"' in done.stdout


def test_the_documented_django_command_finds_the_example(tmp_path: Path) -> None:
    """`python -m django ...` from the repository's root, as examples/django_app/settings.py
    says (django-admin would not find the `examples` package)."""
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "examples.django_app.settings",
        "MONGODB_URL": "mongodb://127.0.0.1:1/job_processor",  # `check` connects to nothing
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


def doc_snippet(doc: str, heading: str) -> str:
    """The first python block after `heading` in `doc` (a path from the repository's root)."""
    import re

    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    found = re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S)
    assert found is not None, f"no python block after {heading!r} in {doc}"
    return found.group(1)


@pytest.mark.parametrize(
    ("doc", "heading"),
    [("README.md", "## From any code"), ("docs/producers.md", "## The synchronous client")],
)
def test_the_documented_sync_client_snippet_runs_as_is(
    report_workers: str, doc: str, heading: str
) -> None:
    """Pasted into `.venv/bin/python` at the repository's root, beside the report workers
    (producers.md's named a `url` and a `myapp` that nothing defined)."""
    done = subprocess.run(
        [sys.executable, "-"],
        input=doc_snippet(doc, heading),
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ | {"MONGODB_URL": report_workers},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "'file': 'acme.csv'" in done.stdout
