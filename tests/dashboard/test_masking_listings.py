"""Listings mask what a job's own page masks (an outside review's findings, each failing before
its fix): the jobs list's payload column, a cron's failed task on the crons page (its own
`sensitive_fields` paths and the dashboard's names); and the audit page tells a job id from a
name of 24 characters."""

from __future__ import annotations

import re
from typing import Any

from job_processor import AbortSignal, CronDef, Job, JobDef, JobStatus, init_job_processor
from job_processor.dashboard import DEFAULT_SENSITIVE_FIELDS, create_dashboard
from tests.helpers import FAST, wait_status

from .harness import wait_until
from .test_http import AUTH, client, token

S = JobStatus


async def _ended(p: Any, job_id: str) -> None:
    async def errored() -> bool:
        return (await p.get_job(job_id)).status == S.ERRORED

    await wait_until(errored)


async def test_jobs_list_payload_masks_the_secrets_the_job_holds_elsewhere(db: Any) -> None:
    """docs/dashboard.md: "every value the job holds in a sensitive field is masked wherever else
    it appears: ... the rest of the payload". The job page and /api/jobs mask the session id the
    job's checkpoint holds (`session` is a default sensitive name) where the payload repeats it;
    the /jobs list shows it in clear, in the payload cell and its tooltip."""
    secret = "sess-8f3k2j9x7q"

    async def sync(job: Job, signal: AbortSignal) -> None:
        await job.checkpoint({"session": secret})
        raise RuntimeError("upstream answered 503")

    p = await init_job_processor(
        db, jobs={"sync": JobDef(handler=sync, resumable=True, max_attempts=1)}, **FAST
    )
    async with p:
        job = await p.schedule_job("sync", {"resume_from": secret, "to": "ada@example.com"})
        await _ended(p, job.id)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = (await c.get(f"/jobs/{job.id}")).text
        api_one = (await c.get(f"/api/jobs/{job.id}")).text
        api_list = (await c.get("/api/jobs")).text
        listing = (await c.get("/jobs")).text
    assert "ada@example.com" in page and "ada@example.com" in listing
    assert secret not in page and secret not in api_one and secret not in api_list
    assert secret not in listing  # fails: the row's payload (and its title) shows it


async def _failed_task(db: Any, cron: CronDef) -> tuple[Any, str]:
    p = await init_job_processor(db, jobs={}, crons={"monthly-charge": cron}, **FAST)
    async with p:
        task = await p.trigger_cron("monthly-charge")
        await _ended(p, task.id)
    return p, task.id


async def test_crons_page_hides_what_the_crons_own_sensitive_fields_hold(db: Any) -> None:
    """A CronDef with `sensitive_fields=("account.iban",)` (JobDef's own paths, "never shown by
    operator tools") whose task checkpoints the IBAN and fails quoting it: the worker's log, the
    task's job page and /api/jobs/{id} hide it; the Crons page's last-run tooltip shows it (so
    do get_status() and `job-processor status`, which use the same CronsAdmin.list_crons)."""
    iban = "DE89370400440532013000"

    async def charge(job: Job, signal: AbortSignal) -> None:
        await job.checkpoint({"account": {"iban": iban}})
        raise RuntimeError(f"account {iban} is closed")

    cron = CronDef(
        handler=charge, cron_string="0 3 1 * *", max_attempts=1, sensitive_fields=("account.iban",)
    )
    p, task_id = await _failed_task(db, cron)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        page = (await c.get(f"/jobs/{task_id}")).text
        api = (await c.get(f"/api/jobs/{task_id}")).text
        crons_page = (await c.get("/crons")).text
    assert "is closed" in page and iban not in page and iban not in api
    assert "is closed" in crons_page  # the tooltip of the last run quotes the error
    assert iban not in crons_page  # fails


async def test_crons_page_hides_what_the_dashboards_sensitive_fields_hold(db: Any) -> None:
    """The docs' own example, `sensitive_fields=[*DEFAULT_SENSITIVE_FIELDS, "iban"]`: the task's
    job page masks the IBAN its checkpoint holds where its error quotes it; the Crons page
    does not (it masks only the default names' values)."""
    iban = "DE44500105175407324931"

    async def charge(job: Job, signal: AbortSignal) -> None:
        await job.checkpoint({"iban": iban})
        raise RuntimeError(f"account {iban} is closed")

    p, task_id = await _failed_task(
        db, CronDef(handler=charge, cron_string="0 3 1 * *", max_attempts=1)
    )
    app = create_dashboard(p, auth=AUTH, sensitive_fields=[*DEFAULT_SENSITIVE_FIELDS, "iban"])
    async with client(app) as c:
        page = (await c.get(f"/jobs/{task_id}")).text
        api = (await c.get(f"/api/jobs/{task_id}")).text
        crons_page = (await c.get("/crons")).text
    assert "is closed" in page and iban not in page and iban not in api
    assert "is closed" in crons_page
    assert iban not in crons_page  # fails


async def test_audit_page_shows_a_24_character_name_whole_not_as_a_job_link(db: Any) -> None:
    """The Audit page lists an action's ids; pausing "send-monthly-invoices-v2" (24 characters)
    is shown as a job id: its last 8 characters, linked to /jobs/send-monthly-invoices-v2,
    which is no job (an error page). A name of any other length is shown whole."""
    name = "send-monthly-invoices-v2"
    assert len(name) == 24

    async def send(job: Job, signal: AbortSignal) -> None:
        return None

    p = await init_job_processor(db, jobs={name: JobDef(handler=send)}, **FAST)
    app = create_dashboard(p, auth=AUTH)
    async with p, client(app) as c:
        csrf = token((await c.get("/jobs")).text)
        resp = await c.post(f"/names/{name}/pause", data={"csrf_token": csrf, "next": "/names"})
        assert resp.status_code == 303
        audit = (await c.get("/audit")).text
        linked = re.search(rf'href="/jobs/{name}"', audit)
        target = (await c.get(f"/jobs/{name}")).status_code
    assert "name_paused" in audit
    assert target != 200  # no such job
    assert linked is None, "the paused name is linked as a job id"  # fails
    assert f">{name}<" in audit or f"{name} " in audit  # fails: only 'oices-v2' is shown


async def test_a_limit_key_filled_from_a_dashboard_sensitive_field_is_not_shown(db: Any) -> None:
    """A JobDef refuses a limit key filled from its own sensitive fields and the default
    names; a name only the dashboard masks (`iban` here, the docs' own example) is accepted,
    and the overview's limits and /api/jobs/{id} showed the IBAN in clear while the payload
    masked it."""
    import asyncio

    from job_processor import Limit

    iban = "DE89370400440532013000"
    started, release = asyncio.Event(), asyncio.Event()

    async def pay(job: Job, signal: AbortSignal) -> None:
        started.set()
        await release.wait()

    p = await init_job_processor(
        db,
        jobs={"pay": JobDef(handler=pay, limit=Limit(key="acct:{iban}", concurrency=1))},
        **FAST,
    )
    app = create_dashboard(p, auth=AUTH, sensitive_fields=[*DEFAULT_SENSITIVE_FIELDS, "iban"])
    async with p, client(app) as c:
        job = await p.schedule_job("pay", {"iban": iban})
        await asyncio.wait_for(started.wait(), 10)
        overview = (await c.get("/")).text
        api_overview = (await c.get("/api/overview")).text
        api = (await c.get(f"/api/jobs/{job.id}")).text
        metrics = await c.get("/metrics")  # its `key` label showed the IBAN
        release.set()
    assert '"iban"' in api  # the payload is listed, its value masked
    texts = {"overview": overview, "api_overview": api_overview, "api_job": api}
    texts["metrics"] = metrics.text
    assert [n for n, t in texts.items() if iban in t] == []
    assert "acct:••••••" in api_overview  # the limit is still listed, its value masked
    assert (
        'job_processor_limit_running{key="acct:••••••",template="acct:{iban}"} 1.0' in metrics.text
    )


async def holding(db: Any, jobs: dict[str, Any], **options: Any) -> Any:
    """A processor whose handlers hold their limit slots until released (`p.release`)."""
    import asyncio

    running: set[str] = set()
    release = asyncio.Event()

    async def hold(job: Job, signal: AbortSignal) -> None:
        running.add(job.id)
        await release.wait()

    defs = {name: JobDef(handler=hold, limit=limit) for name, limit in jobs.items()}
    p = await init_job_processor(db, jobs=defs, **FAST, **options)
    p.running, p.release = running, release  # type: ignore[attr-defined]
    return p


async def test_masked_limit_keys_of_every_shape_on_the_overview_and_a_job(db: Any) -> None:
    """The overview served 500 while a key with escaped braces was in use, showed a key of a
    template no definition names any more in clear, and a job's limit_key showed a value
    shorter than 4 characters or a float in clear, and masked a key of a plain field
    (`token-refresh:acme`)."""
    from job_processor import Limit

    masked = [*DEFAULT_SENSITIVE_FIELDS, "iban", "pin", "account_no"]
    old = await holding(db, {"pay": Limit(key="acct:{iban}", concurrency=5)})
    p = await holding(
        db,
        {
            "pay": Limit(key="account{{eu}}:{iban}", concurrency=5),  # renamed by a deploy
            "card": Limit(key="card:{pin}", concurrency=5),
            "acct": Limit(key="acct-no:{account_no}", concurrency=5),
            "refresh": Limit(key="token-refresh:{tenant_id}", concurrency=5),
        },
        concurrency=4,
    )
    iban = "DE89370400440532013000"
    app = create_dashboard(p, auth=AUTH, sensitive_fields=masked)
    async with old:
        # the old version's, holding its slot (taken before the new version starts: either
        # could claim a "pay" job, and the new one ran both while its "refresh" waited)
        await old.schedule_job("pay", {"iban": iban})
        await wait_until(lambda: len(old.running) == 1)
        async with p, client(app) as c:
            jobs = [
                await p.schedule_job("pay", {"iban": iban}),
                await p.schedule_job("card", {"pin": "042"}),
                await p.schedule_job("acct", {"account_no": 12345678.0}),
                await p.schedule_job("refresh", {"tenant_id": "acme"}),
            ]
            await wait_until(lambda: len(old.running) == 1 and len(p.running) == 4)
            pages = [await c.get("/"), await c.get("/api/overview")]
            keys = [(await c.get(f"/api/jobs/{j.id}")).json()["limit_key"] for j in jobs]
            old.release.set()
            p.release.set()
    assert [r.status_code for r in pages] == [200, 200]
    for page in pages:
        assert iban not in page.text and "card:042" not in page.text
        assert "acct-no:12345678" not in page.text
    assert keys == [
        "account{eu}:••••••",
        "card:••••••",
        "acct-no:••••••",
        "token-refresh:acme",
    ]


async def test_a_jobs_limit_key_masks_a_secret_the_job_holds_elsewhere(db: Any) -> None:
    """The payload field keying the limit repeats the session id the checkpoint holds: the
    job's payload masks it (every value the job holds in a sensitive field is masked wherever
    else it appears), and its limit_key must too."""
    from job_processor import Limit

    secret = "sess-8f3k2j9x7q"

    async def sync(job: Job, signal: AbortSignal) -> None:
        await job.checkpoint({"session": secret})
        raise RuntimeError("upstream answered 503")

    limit = Limit(key="resume:{resume_from}", concurrency=2)
    p = await init_job_processor(
        db,
        jobs={"sync": JobDef(handler=sync, resumable=True, max_attempts=1, limit=limit)},
        **FAST,
    )
    async with p:
        job = await p.schedule_job("sync", {"resume_from": secret})
        await wait_status(p, job.id, JobStatus.ERRORED)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        api_one = (await c.get(f"/api/jobs/{job.id}")).json()
        api_list = (await c.get("/api/jobs")).text
    assert api_one["payload"]["resume_from"] == "••••••"
    assert api_one["limit_key"] == "resume:••••••"
    assert secret not in api_list


async def test_a_secret_held_elsewhere_is_masked_in_a_key_that_escapes_it(db: Any) -> None:
    """In a key of several placeholders a value's separators are escaped
    (`sess\\:8f3k2j9x7q`): a secret the job holds elsewhere (its checkpoint) was looked for
    as it is, not found, and shown in clear in the job's limit_key."""
    from job_processor import Limit

    secret = "sess:8f3k2j9x7q"

    async def sync(job: Job, signal: AbortSignal) -> None:
        await job.checkpoint({"session": secret})
        raise RuntimeError("upstream answered 503")

    limit = Limit(key="resume:{region}:{resume_from}", concurrency=2)
    p = await init_job_processor(
        db,
        jobs={"sync": JobDef(handler=sync, resumable=True, max_attempts=1, limit=limit)},
        **FAST,
    )
    async with p:
        job = await p.schedule_job("sync", {"region": "eu", "resume_from": secret})
        await wait_status(p, job.id, JobStatus.ERRORED)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        api_one = (await c.get(f"/api/jobs/{job.id}")).json()
        page = (await c.get(f"/jobs/{job.id}")).text
    assert api_one["payload"]["resume_from"] == "••••••"
    assert api_one["limit_key"] == "resume:eu:••••••"
    assert "8f3k2j9x7q" not in page


async def test_a_masked_value_escaped_in_a_key_is_masked_where_it_is(db: Any) -> None:
    """An optional backslash before each character let a match start in the value before
    (`pay:4242-4242\\-4242\\-4242` shown `pay:••••••\\-4242`: the tenant hidden, the card's
    tail shown). The value is looked for as the key spells it."""
    from job_processor import Limit

    masked = [*DEFAULT_SENSITIVE_FIELDS, "card_no"]
    p = await holding(db, {"pay": Limit(key="pay:{tenant_id}-{card_no}", concurrency=5)})
    app = create_dashboard(p, auth=AUTH, sensitive_fields=masked)
    async with p, client(app) as c:
        job = await p.schedule_job("pay", {"tenant_id": "4242", "card_no": "4242-4242-4242"})
        await wait_until(lambda: len(p.running) == 1)
        key = (await c.get(f"/api/jobs/{job.id}")).json()["limit_key"]
        p.release.set()
    assert key == "pay:4242-••••••"


async def test_a_definitions_sensitive_path_is_hidden_in_the_limit_key(db: Any) -> None:
    """A JobDef's sensitive_fields path's value, repeated in a plain field that keys a limit:
    the payload showed "[redacted]", the limit key the number in clear (API and page)."""
    from job_processor import Limit

    number = "4111111111111111"

    async def pay(job: Job, signal: AbortSignal) -> None:
        raise RuntimeError("declined")

    definition = JobDef(
        handler=pay,
        max_attempts=1,
        sensitive_fields=("card.number",),
        limit=Limit(key="ref:{ref}", concurrency=2),
    )
    p = await init_job_processor(db, jobs={"pay": definition}, **FAST)
    async with p:
        job = await p.schedule_job("pay", {"card": {"number": number}, "ref": number})
        await wait_status(p, job.id, JobStatus.ERRORED)
    app = create_dashboard(p, auth=AUTH)
    async with client(app) as c:
        api_one = (await c.get(f"/api/jobs/{job.id}")).json()
        page = (await c.get(f"/jobs/{job.id}")).text
    assert api_one["payload"]["ref"] == "[redacted]"
    assert api_one["limit_key"] == "ref:[redacted]"
    assert number not in page


async def test_the_dashboards_metrics_keep_one_series_per_label_when_two_masked_keys_meet(
    db: Any,
) -> None:
    """Two tenants' keys `acct:{iban}` both masked to `acct:••••••` on /metrics: one sample
    per label set (a duplicate series is invalid exposition: Prometheus kept one), adding up
    both keys' running slots and capacity, as a folded row does."""
    from job_processor import Limit

    ibans = ["DE89370400440532013000", "FR1420041010050500013M02606"]
    p = await holding(db, {"pay": Limit(key="acct:{iban}", concurrency=1)}, concurrency=2)
    app = create_dashboard(p, auth=AUTH, sensitive_fields=[*DEFAULT_SENSITIVE_FIELDS, "iban"])
    async with p, client(app) as c:
        for iban in ibans:
            await p.schedule_job("pay", {"iban": iban})
        await wait_until(lambda: len(p.running) == 2)
        metrics = await c.get("/metrics")
        p.release.set()
    assert metrics.status_code == 200, metrics.text[:200]
    assert all(iban not in metrics.text for iban in ibans)
    samples = [
        line.rsplit(" ", 1)[0]
        for line in metrics.text.splitlines()
        if line.startswith("job_processor_limit_")
    ]
    duplicates = sorted({s for s in samples if samples.count(s) > 1})
    assert duplicates == [], duplicates
    assert (
        'job_processor_limit_running{key="acct:••••••",template="acct:{iban}"} 2.0' in metrics.text
    )
    assert (
        'job_processor_limit_capacity{key="acct:••••••",template="acct:{iban}"} 2.0' in metrics.text
    )
    assert 'job_processor_limit_keys{key="acct:••••••",template="acct:{iban}"} 2.0' in metrics.text
