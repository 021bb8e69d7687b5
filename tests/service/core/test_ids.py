"""Ids as people type them: a unique prefix of 6 or more hex characters names its record, an
ambiguous one is a conflict listing the ids, and nothing else is read as a prefix (LIKE
wildcards included), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from service.core import datasets, jobs, sweeps
from service.core.errors import Conflict, Invalid, NotFound
from service.core.ids import AmbiguousId, resolve_id
from service.core.tables import Job, StoredDataset, Sweep

TWINS = ("abcdef01-0000-4000-8000-000000000001", "abcdef02-0000-4000-8000-000000000002")
LONER = "0123456a-89ab-4cde-8f01-23456789abcd"


@pytest.fixture
def records(Session):
    """Two jobs, two datasets and a sweep whose ids share the prefix `abcdef0`, and a job and a
    dataset of their own."""
    with Session() as session:
        for job_id in (*TWINS, LONER):
            session.add(Job(id=job_id, spec={}, task="classification", epochs=1))
        for dataset_id, name in zip((*TWINS, LONER), ("twin", "twin", "colours"), strict=True):
            session.add(StoredDataset(id=dataset_id, name=name))
        session.add(Sweep(id=TWINS[0], name="s", request={}, trials=[], size=0, metric="test_acc", mode="max"))
        session.commit()
    return Session


@pytest.mark.parametrize("given", [LONER, LONER.upper(), LONER[:6], LONER[:8], LONER[:13], f" {LONER[:10]} "])
def test_the_full_id_or_a_unique_prefix_of_six_or_more_names_a_job(records, given):
    with records() as session:
        assert resolve_id(session, Job, given, kind="job") == LONER
        assert jobs.require_job(session, job_id=given).id == LONER


def test_an_ambiguous_prefix_is_a_conflict_listing_every_match(records):
    with records() as session:
        with pytest.raises(AmbiguousId) as caught:
            jobs.require_job(session, job_id="ABCDEF0")
        assert isinstance(caught.value, Conflict) and caught.value.matches == list(TWINS)
        assert all(job_id in str(caught.value) for job_id in TWINS)
        assert jobs.require_job(session, job_id="abcdef02").id == TWINS[1]  # one more character decides


@pytest.mark.parametrize("given", [LONER[:5], "0123%", "012345%", "______", "0123456_", "zzzzzzzz", "0123456b"])
def test_short_prefixes_wildcards_and_strangers_are_not_found(records, given):
    with records() as session:
        with pytest.raises(NotFound, match=f"job {given} not found"):
            jobs.require_job(session, job_id=given)


def test_datasets_and_sweeps_take_prefixes_too(records):
    with records() as session:
        assert datasets.require_dataset(session, dataset_id=LONER[:6]).id == LONER
        assert sweeps.require(session, sweep_id="abcdef01").id == TWINS[0]
        with pytest.raises(AmbiguousId):
            datasets.require_dataset(session, dataset_id="abcdef")


def test_a_dataset_is_read_and_deleted_by_its_name_which_wins_over_an_id_prefix(records):
    hexlike = "0123456b-0000-4000-8000-00000000000b"
    with records() as session:
        session.add(StoredDataset(id=hexlike, name=LONER[:7]))  # a name that begins LONER's id
        session.commit()
        assert datasets.require_dataset(session, dataset_id="colours").id == LONER
        assert datasets.require_dataset(session, dataset_id=LONER[:7]).id == hexlike
        assert datasets.reference_id(session, given=LONER[:7]) == hexlike
        assert datasets.require_dataset(session, dataset_id=LONER[:8]).id == LONER
        with pytest.raises(Conflict, match="2 datasets are named 'twin'.*use the id of the one you mean"):
            datasets.require_dataset(session, dataset_id="twin")


def test_a_spec_names_an_uploaded_dataset_by_id_prefix_or_unique_name(records):
    with records() as session:
        assert datasets.reference_id(session, given="colours") == LONER
        assert datasets.reference_id(session, given=LONER[:7]) == LONER
        with pytest.raises(Invalid, match="2 datasets are named 'twin'.*GET /v1/datasets") as twins:
            datasets.reference_id(session, given="twin")
        assert twins.value.problems[0][0] == ("data", "dataset")
        none = "no dataset has that id or name; GET /v1/datasets lists them .*`trainyard datasets upload`"
        with pytest.raises(Invalid, match=none):
            datasets.reference_id(session, given="flowers")
        with pytest.raises(Invalid, match="not found: no dataset has that id or name; did you mean uploaded:colours?"):
            datasets.reference_id(session, given="colour")
