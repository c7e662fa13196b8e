"""Prepare splits a fact's phrasings between train and test (split_by), over the real data service."""

from collections import defaultdict
from pathlib import Path

import pytest
from data_fixtures import jsonl, prepare, split_rows, upload, wait_for_job

from finetune.v1 import common_pb2, data_pb2
from services.data.fact_split import held_out_counts, split_by_fact_phrasing
from services.data.splitting import SPLITS, assign_splits

PHRASINGS = ("What is {t}?", "So what is {t}?", "What is {t} exactly?")
NAMES = (
    "queue",
    "cache",
    "worker",
    "spool",
    "lease",
    "ledger",
    "mirror",
    "buffer",
    "shard",
    "bucket",
    "index",
)
NAMES += ("journal", "socket", "beacon")


def fact_rows(facts: int, phrasings: int) -> list[dict[str, str]]:
    """Rows as GenerateDataset writes them: phrasings of one fact share its answer and are near duplicates
    (at the data service's threshold), rows of different facts are not."""
    return [
        {
            "question": PHRASINGS[p].format(t=f"the {NAMES[f]} limit"),
            "answer": f"The {NAMES[f]} limit is {100 + f * 7} entries; the {NAMES[f]} service reads it once at "
            f"start, so a change to the {NAMES[f]} limit needs a restart.",
            "fact_id": f"fact-{f}",
            "document": "docs/settings.md",
        }
        for f in range(facts)
        for p in range(phrasings)
    ]


def lines_by_split(data_root: Path, stub, job: data_pb2.PrepareJob) -> dict[str, set[int]]:
    version = stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))
    return {split: {row["source_line"] for row in split_rows(data_root, version, split)} for split in SPLITS}


def test_every_multi_phrasing_fact_is_trained_and_tested_in_other_words(data_stub, data_root):
    rows = fact_rows(12, 3) + fact_rows(14, 1)[12:]  # facts 12 and 13 have one phrasing
    # The same row stated under two facts: an exact duplicate, which stays in one split.
    duplicate = {**rows[0], "fact_id": "fact-other"}
    dataset = upload(data_stub, jsonl([*rows, duplicate]))
    job = prepare(data_stub, dataset_id=dataset.id, max_seq_len=128, seed=3)
    split_of = {
        line: split for split, lines in lines_by_split(data_root, data_stub, job).items() for line in lines
    }
    splits_of_fact: dict[str, set[str]] = defaultdict(set)
    for line, row in enumerate(rows, start=1):
        splits_of_fact[row["fact_id"]].add(split_of[line])
    for fact in (f"fact-{f}" for f in range(12)):
        assert "train" in splits_of_fact[fact] and splits_of_fact[fact] & {"test", "validation"}, fact
    # Each fact has room for one held-out phrasing; with validation and test shares equal, half of them
    # go to validation, so the validation split asked for is not empty.
    held_out = [split for f in range(12) for split in splits_of_fact[f"fact-{f}"] if split != "train"]
    assert held_out.count("validation") == held_out.count("test") == 6
    assert split_of[1] == split_of[len(rows) + 1]
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))
    assert any(w.startswith("split by phrasing within a fact: 13 of 15 facts") for w in version.warnings)
    # The same rows split by row keep each fact's near-duplicate phrasings together, as before.
    by_row = prepare(
        data_stub, dataset_id=dataset.id, max_seq_len=128, seed=3, split_by=data_pb2.SPLIT_BY_ROW
    )
    row_split_of = {
        line: split for split, lines in lines_by_split(data_root, data_stub, by_row).items() for line in lines
    }
    assert all(len({row_split_of[1 + f * 3 + p] for p in range(3)}) == 1 for f in range(12))


def test_rows_without_fact_ids_split_as_by_row(data_stub, data_root):
    rows = [{k: v for k, v in row.items() if k != "fact_id"} for row in fact_rows(10, 3)]
    dataset = upload(data_stub, jsonl(rows))
    auto = prepare(data_stub, dataset_id=dataset.id, max_seq_len=128, seed=5)
    by_row = prepare(
        data_stub, dataset_id=dataset.id, max_seq_len=128, seed=5, split_by=data_pb2.SPLIT_BY_ROW
    )
    assert auto.prepared_version_id != by_row.prepared_version_id  # both really ran
    assert lines_by_split(data_root, data_stub, auto) == lines_by_split(data_root, data_stub, by_row)
    asked = data_stub.PrepareDataset(
        data_pb2.PrepareDatasetRequest(
            dataset_id=dataset.id,
            base_model="smollm2-135m-instruct",
            max_seq_len=128,
            split_by=data_pb2.SPLIT_BY_FACT_PHRASING,
        )
    )
    failed = wait_for_job(data_stub, asked.status.id)
    assert failed.status.state == common_pb2.JOB_STATE_FAILED
    assert "split_by" in failed.status.error and "fact_id" in failed.status.error


def test_same_seed_same_split_and_plain_rows_follow_the_normal_split():
    groups = [f"line:{i}" for i in range(40)]
    facts = [f"fact-{i // 4}" for i in range(32)] + [""] * 8
    fractions = (0.8, 0.1, 0.1)
    first = split_by_fact_phrasing(groups, facts, fractions, seed=11)
    assert first.assignment == split_by_fact_phrasing(groups, facts, fractions, seed=11).assignment
    assert first.assignment != split_by_fact_phrasing(groups, facts, fractions, seed=12).assignment
    none = split_by_fact_phrasing(groups, [""] * 40, fractions, seed=11)
    assert none.assignment == assign_splits(groups, fractions, seed=11)
    assert first.summary["facts_split"] == 8 and first.summary["rows_without_fact"] == 8


@pytest.mark.parametrize(
    ("phrasings", "fractions", "expected"),
    [
        (2, (0.8, 0.1, 0.1), {"test": 1, "validation": 0}),
        (5, (0.8, 0.1, 0.1), {"test": 1, "validation": 1}),
        (2, (0.5, 0.25, 0.25), {"test": 1, "validation": 0}),
        (3, (0.9, 0.1, 0.0), {"test": 0, "validation": 1}),
        (4, (1.0, 0.0, 0.0), {"test": 0, "validation": 0}),
    ],
)
def test_held_out_phrasings_leave_train_most(phrasings, fractions, expected):
    assert held_out_counts(phrasings, fractions) == expected


@pytest.mark.parametrize(
    ("fractions", "validation_facts"),
    [((0.8, 0.1, 0.1), 20), ((0.8, 0.05, 0.15), 10), ((0.9, 0.0, 0.1), 0), ((0.9, 0.1, 0.0), 40)],
)
def test_one_held_out_phrasing_goes_to_validation_in_its_share(fractions, validation_facts):
    groups = [f"line:{i}" for i in range(120)]
    facts = [f"fact-{i // 3}" for i in range(120)]  # 40 facts, three phrasings each
    split = split_by_fact_phrasing(groups, facts, fractions, seed=7)
    by_fact: dict[str, list[str]] = defaultdict(list)
    for fact, assigned in zip(facts, split.assignment, strict=True):
        by_fact[fact].append(assigned)
    assert all(
        sorted(s) in (["test", "train", "train"], ["train", "train", "validation"]) for s in by_fact.values()
    )
    assert sum("validation" in s for s in by_fact.values()) == validation_facts
    assert split.summary["held_out_rows"] == {"test": 40 - validation_facts, "validation": validation_facts}
