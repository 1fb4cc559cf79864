"""The claim's condition, as built for each server."""

from __future__ import annotations

import datetime as dt

from job_processor.core import documents as D
from job_processor.storage.compat import ServerProfile

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
DUE = {"$lte": D.epoch_ms(NOW)}


def test_one_in_on_claim_name_with_the_due_bound() -> None:
    assert D.claim_filter(["a", "b"], NOW) == {"claim_name": {"$in": ["a", "b"]}, "due_ms": DUE}


def test_as_or_is_one_eq_per_name_each_with_the_due_bound_and_nothing_beside() -> None:
    """An explicit `$eq`: nx-27017 turns it into one SQL comparison its claim index answers
    (a bare value is also tested as an array, which no index answers)."""
    assert D.claim_filter(["a", "b"], NOW, as_or=True) == {
        "$or": [
            {"claim_name": {"$eq": "a"}, "due_ms": DUE},
            {"claim_name": {"$eq": "b"}, "due_ms": DUE},
        ]
    }
    # one name: nothing to combine
    assert D.claim_filter(["a"], NOW, as_or=True) == {"claim_name": {"$eq": "a"}, "due_ms": DUE}


def test_only_nx_27017_gets_the_or_form() -> None:
    assert ServerProfile("nx-27017").in_as_or
    assert not ServerProfile("mongodb").in_as_or
    assert not ServerProfile("mongomock").in_as_or


def test_nx_27017_gets_the_claim_index_and_the_unique_and_ttl_ones_only() -> None:
    nx, mongodb = ServerProfile("nx-27017"), ServerProfile("mongodb")
    claim = [("claim_name", 1), ("priority", -1), ("due_ms", 1), ("_id", 1)]
    assert nx.wants_index(claim, {})
    assert nx.index_keys(claim) == claim[:3]  # `_id` in a compound index breaks its inserts
    assert nx.wants_index([("dedup_key", 1)], {"unique": True, "sparse": True})
    assert nx.wants_index([("expires_at", 1)], {"expireAfterSeconds": 0})
    assert not nx.wants_index([("status", 1), ("worker_id", 1)], {})
    assert mongodb.wants_index([("status", 1), ("worker_id", 1)], {})
