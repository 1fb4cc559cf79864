"""The claim's condition, as built for each server."""

from __future__ import annotations

import datetime as dt

from job_processor.core import documents as D
from job_processor.storage.compat import ServerProfile

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
DUE = {"$lte": D.epoch_ms(NOW)}


def test_one_in_on_claim_name_with_the_due_bound() -> None:
    assert D.claim_filter(["a", "b"], NOW) == {"claim_name": {"$in": ["a", "b"]}, "due_ms": DUE}


def test_as_or_is_one_equality_per_name_each_with_the_due_bound_and_nothing_beside() -> None:
    assert D.claim_filter(["a", "b"], NOW, as_or=True) == {
        "$or": [{"claim_name": "a", "due_ms": DUE}, {"claim_name": "b", "due_ms": DUE}]
    }
    # one name: nothing to combine
    assert D.claim_filter(["a"], NOW, as_or=True) == {"claim_name": {"$in": ["a"]}, "due_ms": DUE}


def test_only_nx_27017_gets_the_or_form() -> None:
    assert ServerProfile("nx-27017").in_as_or
    assert not ServerProfile("mongodb").in_as_or
    assert not ServerProfile("mongomock").in_as_or
