"""What only a real MongoDB can show: every query a worker or a user runs often is served by an
index, with no COLLSCAN and no blocking SORT stage. These run when JOB_PROCESSOR_TEST_MONGODB_URL
is set (and are reported as skipped, with this reason, on the nx-27017 test server, which has no
query planner). The queries are built by the storage code itself, never retyped here."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from job_processor.core import documents as D
from job_processor.core import event_documents as E
from job_processor.core import foreign as FD
from job_processor.core.status import JobStatus
from job_processor.storage import CLAIM_SORT, JobQuery, Storage
from job_processor.storage.compat import DEPENDENTS_COUNTED_PARTS, HOOK_NOT_OWED_PARTS
from job_processor.storage.events import DATED, NUMBER, OTHER, TEXT
from job_processor.storage.job_crons import missed_tasks, pending_tasks_of
from job_processor.storage.job_flows import expiry_pending, with_expiry

from ..conftest import REAL_SERVER

if not REAL_SERVER:  # one line in the report for the whole tier, not one per test
    pytest.skip(
        "the index-plan tier needs a real MongoDB: set JOB_PROCESSOR_TEST_MONGODB_URL "
        "(nx-27017, even at that URL, has no query planner)",
        allow_module_level=True,
    )
S = JobStatus
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def stages(plan: Any, key: str = "stage") -> list[str]:
    """Every stage name (or every value of `key`, e.g. "indexName") in an explain plan, rejected
    plans left out. Classic (`winningPlan: {stage, inputStage(s)}`) and slot-based
    (`winningPlan: {queryPlan: {...}, slotBasedPlan: {...}}`) formats alike, and a mongos's
    (`winningPlan: {stage: SHARD_MERGE, shards: [{winningPlan: ...}]}`)."""
    found: list[str] = []
    if isinstance(plan, dict):
        for k, value in plan.items():
            if k == key and isinstance(value, str):
                found.append(value)
            elif k != "rejectedPlans":
                found += stages(value, key)
    elif isinstance(plan, list):
        for value in plan:
            found += stages(value, key)
    return found


def winning_plans(explained: dict[str, Any]) -> list[Any]:
    """The winning plans of an explain: find, findAndModify, delete and an aggregate pushed down
    whole (`queryPlanner` at the top, as with slot-based execution), or an aggregate whose
    first stage is a `$cursor` (the classic engine: `stages[0].$cursor.queryPlanner`)."""
    plans = []
    if "queryPlanner" in explained:
        plans.append(explained["queryPlanner"].get("winningPlan"))
    for stage in explained.get("stages") or []:
        cursor = stage.get("$cursor") if isinstance(stage, dict) else None
        if cursor and "queryPlanner" in cursor:
            plans.append(cursor["queryPlanner"].get("winningPlan"))
    assert plans and all(plans), explained
    return plans


def assert_indexed(explained: dict[str, Any]) -> list[str]:
    winning = stages(winning_plans(explained))
    assert winning, explained
    assert "COLLSCAN" not in winning, winning
    assert "SORT" not in winning, f"blocking sort: {winning}"
    return winning


@pytest.fixture
async def storage(db: Any) -> Storage:
    s = await Storage.open(db)
    await s.ensure_indexes()
    names = [f"job-{i}" for i in range(150)]
    docs = [D.new_job(names[i % 150], {}, now=NOW, priority=i % 3) for i in range(600)]
    await s.jobs.coll.insert_many(docs)
    return s


@pytest.mark.parametrize("n_names", [2, 150])
async def test_the_claim_uses_the_claim_index_and_needs_no_sort(
    db: Any, storage: Storage, n_names: int
) -> None:
    names = [f"job-{i}" for i in range(n_names)]
    plan = await db.command(
        "explain",
        {
            "findAndModify": storage.jobs.name,
            "query": D.claim_filter(names, NOW),
            "sort": dict(CLAIM_SORT),
            "update": D.claim_update("w", NOW),
        },
        verbosity="queryPlanner",
    )
    winning = assert_indexed(plan)
    used = set(stages(winning_plans(plan), "indexName"))
    assert used == {"claim_name_1_priority_-1_due_ms_1__id_1"}, winning


@pytest.mark.parametrize(
    ("name", "status"),
    [(None, None), (None, S.ERRORED), ("job-3", None), ("job-3", S.PENDING)],
)
async def test_listings_are_index_backed(
    storage: Storage, name: str | None, status: JobStatus | None
) -> None:
    assert_indexed(await storage.jobs.find_cursor(name, status, 50).explain())


async def test_a_workers_running_jobs_and_owed_hooks_are_index_backed(storage: Storage) -> None:
    assert_indexed(await storage.jobs.running_on_cursor("w").explain())
    assert_indexed(await storage.jobs.owed_hooks_cursor(NOW).explain())
    assert_indexed(await storage.jobs.unknown_hooks_cursor({"a", "b"}).explain())
    # per-value limits: the due jobs of keys not known to be full, in claim order
    names = ["job-1", "job-2"]
    assert_indexed(await storage.jobs.due_by_key_cursor(names, NOW, ["t:a"], 8).explain())
    assert_indexed(await storage.jobs.due_names_cursor(names, NOW, 8).explain())  # limits' order
    assert_indexed(await storage.deliveries.own_for_event_cursor(str(ObjectId()), 3).explain())
    # flows: the jobs waiting on a dependency that ended; the sweep's ended jobs with
    # dependents not seen settled, and its slow pass over waiting jobs in `_id` order
    assert_indexed(await storage.jobs.waiting_on_cursor(ObjectId()).explain())
    assert_indexed(await storage.jobs.flow_attention_cursor().explain())  # every $or branch
    assert_indexed(await storage.jobs.uncounted_cursor([ObjectId(), ObjectId()]).explain())
    assert_indexed(await storage.jobs.ended_by_cursor([str(ObjectId()), str(ObjectId())]).explain())
    assert_indexed(await storage.jobs.stale_waiting_cursor(ObjectId()).explain())
    # the sweep's one query: every $or branch on an index (running, owed hooks, flows, bare)
    assert_indexed(await storage.jobs.attention_cursor(NOW, NOW, NOW).explain())


async def test_the_strays_pass_and_the_untargeted_events_are_index_backed(
    storage: Storage,
) -> None:
    assert_indexed(await storage.jobs.bare_cursor(NOW).explain())  # bare inserts to adopt
    assert_indexed(await storage.events.untargeted_cursor(NOW).explain())  # status warnings


async def test_counts_by_name_is_a_covered_index_scan(db: Any, storage: Storage) -> None:
    plan = await db.command(
        "explain",
        {
            "aggregate": storage.jobs.name,
            "pipeline": storage.jobs.counts_pipeline(S.PENDING),
            "cursor": {},
        },
        verbosity="queryPlanner",
    )
    winning = assert_indexed(plan)
    assert {"IXSCAN", "DISTINCT_SCAN", "COUNT_SCAN"} & set(winning), winning


async def test_the_stored_tags_are_a_distinct_scan_of_the_tag_index(
    db: Any, storage: Storage
) -> None:
    """An unknown tag's did-you-mean reads the stored jobs' tags (Admin.list_jobs(tag=)): one
    index seek per tag, never a job."""
    for i in range(20):
        await storage.jobs.insert(D.new_job("email", {}, now=NOW, tag=f"t{i % 3}"))
    assert await storage.job_admin.stored_tags(10) == {"t0", "t1", "t2"}
    plan = await db.command(
        "explain",
        {
            "aggregate": storage.jobs.name,
            "pipeline": storage.job_admin.tags_pipeline(10),
            "cursor": {},
        },
        verbosity="executionStats",
    )
    assert "DISTINCT_SCAN" in assert_indexed(plan)
    assert set(docs_examined(plan)) == {0}, plan


async def test_writes_use_majority(storage: Storage) -> None:
    assert storage.jobs.coll.write_concern.document == {"w": "majority"}


# ---- operator listings and numbers (job_processor.admin) -----------------------------------

WHEN = NOW - dt.timedelta(hours=1)


@pytest.mark.parametrize(
    "query",
    [
        JobQuery(),
        JobQuery(status=S.ERRORED),
        JobQuery(name="job-3"),
        JobQuery(name="job-3", status=S.PENDING),
        JobQuery(tag="main"),
        JobQuery(key="k"),
        JobQuery(created_after=WHEN, created_before=NOW),
        JobQuery(status=S.ERRORED, created_after=WHEN),
        JobQuery(name="job-3", tag="main"),
    ],
)
@pytest.mark.parametrize("after", [None, (NOW, ObjectId())])
async def test_admin_pages_are_index_backed(storage: Storage, query: JobQuery, after: Any) -> None:
    assert_indexed(await storage.job_admin.page_cursor(query, after).limit(51).explain())
    if after is None and query.created_after is None and query.created_before is None:
        # the pages past the dated jobs: those without a creation time, by _id
        for bound in ({"$lte": ObjectId("f" * 24)}, {"$type": "string"}, {"$type": "number"}):
            assert_indexed(await storage.job_admin.undated_cursor(query, bound).explain())


@pytest.mark.parametrize(
    "query", [JobQuery(status=S.ERRORED), JobQuery(name="job-3", status=S.KILLED)]
)
async def test_a_bulk_retrys_pass_over_the_jobs_no_page_reached_is_index_backed(
    storage: Storage, query: JobQuery
) -> None:
    """retry_many's second pass (`JobAdminStore.untried`): the filter's index, no sort."""
    tried = [ObjectId() for _ in range(3)]
    winning = assert_indexed(await storage.job_admin.untried_cursor(query, tried, 500).explain())
    assert "IXSCAN" in winning, winning


async def test_ended_jobs_by_time_are_a_covered_index_scan(storage: Storage) -> None:
    plan = await storage.job_admin.ended_cursor(S.FINISHED, WHEN, 100).explain()
    winning = assert_indexed(plan)
    assert "FETCH" not in winning, winning


@pytest.mark.parametrize("before", [None, NOW])  # without and with the retention floor
@pytest.mark.parametrize("statuses", [[S.FINISHED, S.SKIPPED], [S.ERRORED, S.KILLED]])
async def test_count_trimming_is_index_backed(
    storage: Storage, statuses: list[JobStatus], before: Any
) -> None:
    query = storage.jobs.trim_query("job-1", statuses, before)
    assert_indexed(await storage.jobs.trim_cursor(query, 100, 500).explain())


async def test_purge_is_index_backed(db: Any, storage: Storage) -> None:
    """Both of a purge's deletes (`JobAdminStore.purge`: the ended jobs owing no hook, in two
    filters), by status alone and by status and name."""
    for name in (None, "job-3"):
        ended = storage.job_admin.ended_query(S.FINISHED, NOW, name)
        for not_owed in HOOK_NOT_OWED_PARTS:
            for counted in DEPENDENTS_COUNTED_PARTS:
                q = ended | not_owed | counted
                plan = await db.command(
                    "explain",
                    {"delete": storage.jobs.name, "deletes": [{"q": q, "limit": 0}]},
                    verbosity="queryPlanner",
                )
                assert_indexed(plan)


async def test_expiry_writes_and_a_removed_crons_pending_tasks_are_index_backed(
    db: Any, storage: Storage
) -> None:
    """`with_expiry`'s updates (the jobs held back, then the others: a `$nor` on MongoDB) over
    missed cron tasks and jobs whose retention is pending; a removed cron's pending tasks, read
    and then deleted by id (`delete_pending_tasks_of`)."""
    ids = [ObjectId(), ObjectId()]
    later = NOW + dt.timedelta(days=1)
    assert storage.profile.nor_ok  # MongoDB negates a filter on a missing field exactly
    for query in (missed_tasks(NOW) | {"name": "job-1"}, expiry_pending(ids)):
        pairs = with_expiry(query, {"$set": {"seen": True}}, later, storage.profile)
        assert len(pairs) == 2, pairs
        for q, u in pairs:
            plan = await db.command(
                "explain",
                {"update": storage.jobs.name, "updates": [{"q": q, "u": u, "multi": True}]},
                verbosity="queryPlanner",
            )
            assert_indexed(plan)
    pending = pending_tasks_of(["job-1", "job-2"])
    assert_indexed(await storage.jobs.coll.find(pending, {"_id": 1}).explain())
    plan = await db.command(
        "explain",
        {
            "delete": storage.jobs.name,
            "deletes": [{"q": pending | {"_id": {"$in": ids}}, "limit": 0}],
        },
        verbosity="queryPlanner",
    )
    assert_indexed(plan)


async def test_a_purges_counts_of_the_jobs_it_leaves_are_index_backed(storage: Storage) -> None:
    """What a purge reports it left: jobs whose hook is owed, jobs whose dependents have not
    all counted their end."""
    for name in (None, "job-3"):
        admin = storage.job_admin
        assert_indexed(await admin.owing_hooks_cursor(S.FINISHED, NOW, name).explain())
        assert_indexed(await admin.uncounted_dependencies_cursor(S.ERRORED, NOW, name).explain())


async def test_the_probe_for_a_quiet_names_due_job_uses_the_claim_index(storage: Storage) -> None:
    """A busy worker's look for a due webhook delivery, once per poll_interval."""
    assert "IXSCAN" in assert_indexed(await storage.jobs.any_due_cursor(["job-1"], NOW).explain())


async def test_the_full_keys_of_a_per_value_limit_are_index_backed(storage: Storage) -> None:
    """Read at each claim of a per-value limit (one document per active tenant)."""
    for concurrency, now_ms in ((2, None), (None, 1_000), (2, 1_000)):
        cursor = storage.limits.full_of_template_cursor("tenant:{tenant}", concurrency, now_ms)
        assert "IXSCAN" in assert_indexed(await cursor.explain())


async def test_due_jobs_per_name_use_the_claim_index(db: Any, storage: Storage) -> None:
    plan = await db.command(
        "explain",
        {
            "aggregate": storage.jobs.name,
            "pipeline": storage.job_admin.due_pipeline([f"job-{i}" for i in range(150)], NOW),
            "cursor": {},
        },
        verbosity="queryPlanner",
    )
    assert "IXSCAN" in assert_indexed(plan)


def docs_examined(explained: dict[str, Any]) -> list[int]:
    """`totalDocsExamined` of an aggregate's explain at executionStats verbosity: at the top
    (pushed down whole, slot-based) or in its `$cursor` stage (the classic engine)."""
    stats = [explained.get("executionStats")]
    for stage in explained.get("stages") or []:
        cursor = stage.get("$cursor") if isinstance(stage, dict) else None
        if cursor:
            stats.append(cursor.get("executionStats"))
    found = [int(s["totalDocsExamined"]) for s in stats if s and "totalDocsExamined" in s]
    assert found, explained
    return found


async def test_due_jobs_of_every_name_read_only_the_claim_index(db: Any, storage: Storage) -> None:
    """Every scrape, status and overview: due jobs of every name (also a minimal foreign
    insert's, which has no status to be counted by). The claim index holds every job, those
    that are not claimable under null: the scan must skip them, and read no document."""
    ended = []
    for _ in range(300):
        doc = D.new_job("job-1", {}, now=NOW - dt.timedelta(days=1)) | {"status": S.FINISHED.value}
        del doc["claim_name"]
        ended.append(doc)
    await storage.jobs.coll.insert_many(ended)
    plan = await db.command(
        "explain",
        {
            "aggregate": storage.jobs.name,
            "pipeline": storage.job_admin.due_pipeline(None, NOW),
            "cursor": {},
        },
        verbosity="executionStats",
    )
    assert "IXSCAN" in assert_indexed(plan)
    used = set(stages(winning_plans(plan), "indexName"))
    assert used == {"claim_name_1_priority_-1_due_ms_1__id_1"}, used
    assert set(docs_examined(plan)) == {0}, plan  # covered: the keys alone


async def test_event_queries_are_index_backed(storage: Storage) -> None:
    """emit (the registry and the endpoints listening), sync waits and get_event (an event's
    deliveries), list_events (by name, by window), the recovery sweep (owed fan-outs)."""
    later = NOW + dt.timedelta(hours=1)
    for i in range(20):
        event = E.new_event(
            f"e{i % 4}", {}, key=None, now=NOW, emitted_by="w", instance_id=None, targets=[]
        )
        await storage.events.insert(event)
        target = E.endpoint_target(f"ep{i}", 3)
        await storage.deliveries.create([E.delivery(event, target, now=NOW)])
    await storage.subscribers.register(
        [
            E.subscriber_row(
                f"e{i % 4}",
                f"s{i}",
                mode="async",
                position=i,
                tag=None,
                max_attempts=1,
                now=NOW,
                declared_by="w",
            )
            for i in range(8)
        ]
    )
    assert_indexed(await storage.subscribers.for_event_cursor("e1").explain())
    assert_indexed(await storage.webhooks.matching_cursor("e1").explain())
    assert_indexed(await storage.deliveries.for_event_cursor(str(event["_id"])).explain())
    assert_indexed(await storage.deliveries.by_keys_cursor(["a|b|", "c|d|"]).explain())
    assert_indexed(await storage.events.find_cursor().explain())
    assert_indexed(await storage.events.find_cursor("e1").explain())
    assert_indexed(await storage.events.find_cursor("e1", NOW, later).explain())
    assert_indexed(await storage.events.find_cursor("e1", NOW, later, 50, True).explain())
    assert_indexed(await storage.events.find_cursor(None, NOW, later).explain())
    assert_indexed(await storage.events.owed_cursor(later).explain())
    # the events pages (events.pages): each kind of emitted_at, first page and past a cursor
    for kind, upto in ((DATED, later), (TEXT, "yesterday"), (NUMBER, 5)):
        for name in (None, "e1"):
            assert_indexed(await storage.events.kind_cursor(kind, name).explain())
            assert_indexed(await storage.events.kind_cursor(kind, name, upto=upto).explain())
    assert_indexed(await storage.events.kind_cursor(DATED, "e1", (NOW, later)).explain())
    for name in (None, "e1"):  # none or null, by each kind of `_id`, and past a cursor
        for ids in range(3):
            assert_indexed(await storage.events.kind_cursor(OTHER, name, ids=ids).explain())
        upto = ObjectId()
        assert_indexed(await storage.events.kind_cursor(OTHER, name, upto=upto).explain())


async def test_mongodb_refuses_to_claim_a_non_numeric_attempt_and_the_cause_is_errored(
    db: Any,
) -> None:
    """The store's handling of TypeMismatch, against MongoDB's own answer (test_store.py
    reproduces it for the test server, which skips such a document silently)."""
    s = await Storage.open(db, "tm_")
    await s.ensure_indexes()
    bad = D.new_job("a", {}, now=NOW - dt.timedelta(minutes=1)) | {"attempt": "x"}
    await s.jobs.coll.insert_one(bad)
    good = await s.jobs.insert(D.new_job("a", {}, now=NOW))
    assert good is not None
    claimed = await s.jobs.claim_next(["a"], "w1", NOW + dt.timedelta(seconds=1))
    assert claimed is not None and claimed["_id"] == good["_id"]
    stored = await s.jobs.coll.find_one({"_id": bad["_id"]})
    assert stored["status"] == S.ERRORED
    assert stored["output"]["error"].startswith("invalid job document: attempt is 'x'")


async def test_the_pass_for_jobs_that_can_never_be_due_is_index_backed(storage: Storage) -> None:
    names = [f"job-{i}" for i in range(150)]
    for query in FD.undue_filters(names, NOW):
        assert_indexed(await storage.jobs.coll.find(query).limit(100).explain())


async def test_a_jobs_dependents_newest_first_need_no_sort(storage: Storage) -> None:
    """A job's dashboard page, at each refresh: the newest 100 of the jobs scheduled after it
    (`after` is a list: the index is multikey, as in production)."""
    dep = ObjectId()
    after = {"after": [str(dep), str(ObjectId())], "status": S.WAITING.value}
    await storage.jobs.coll.insert_many(
        [D.new_job("job-1", {}, now=NOW) | after for _ in range(150)]
    )
    assert_indexed(await storage.jobs.dependents_cursor(dep, 100).explain())


async def test_the_small_collections_read_at_each_page_are_index_backed(storage: Storage) -> None:
    """Every overview and status (the disabled endpoints), the event page and the known event
    names (every endpoint, in creation order), each sweep of a worker with limits (the keys
    whose slots are held), the audit page (newest first, then older)."""
    assert "IXSCAN" in assert_indexed(await storage.webhooks.disabled_cursor().explain())
    assert "IXSCAN" in assert_indexed(await storage.webhooks.all_cursor().explain())
    assert "IXSCAN" in assert_indexed(await storage.limits.holding_cursor().explain())
    assert_indexed(await storage.audit.recent_cursor(50, None).explain())
    assert_indexed(await storage.audit.recent_cursor(50, ObjectId()).explain())


async def test_the_overviews_running_jobs_and_a_batch_claims_read_are_index_backed(
    storage: Storage,
) -> None:
    assert_indexed(await storage.jobs.running_cursor().explain())  # overview, every 3 s
    for n in (2, 150):  # each batch claim (free capacity > 1)
        names = [f"job-{i}" for i in range(n)]
        assert_indexed(await storage.jobs.claim_more_cursor(names, NOW, 8).explain())


async def test_the_pass_for_unknown_names_reads_no_job_that_is_not_claimable(
    storage: Storage,
) -> None:
    """Every 5 minutes per worker. The claim index holds every job, those that are not
    claimable under null: a scan of that range would pass `assert_indexed` yet read every
    ended job."""
    ended = []
    for _ in range(300):
        doc = D.new_job("job-1", {}, now=NOW - dt.timedelta(days=1)) | {"status": S.FINISHED.value}
        del doc["claim_name"]
        ended.append(doc)
    await storage.jobs.coll.insert_many(ended)
    known = [f"job-{i}" for i in range(150)]
    for ids in ("", "string", "number"):  # ObjectIds by insert time; text and numbers by due
        plan = await storage.jobs.unknown_cursor(known, NOW, ids).explain()
        assert_indexed(plan)
        assert plan["executionStats"]["totalDocsExamined"] == 0, (ids, plan["executionStats"])
