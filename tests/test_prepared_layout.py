"""The prepared-version layout is one contract: what the data service writes, the trainer reads through
`ftcommon.prepared_layout`; manifests older than the format version still open, newer ones are refused."""

import json
import shutil
from pathlib import Path

import pytest
from data_fixtures import prepared_qa_version, split_rows
from trainer_support import FACTS

from finetune.v1 import data_pb2
from ftcommon import prepared_layout
from ftcommon.prepared_layout import PreparedFolder, PreparedLayoutError
from services.trainer.batches import load_split


@pytest.fixture(scope="module")
def version(data_stub, data_root: Path) -> data_pb2.PreparedVersion:
    split = data_pb2.SplitFractions(train=0.6, validation=0.2, test=0.2)
    version_id = prepared_qa_version(data_stub, data_root, "layout", FACTS, split, seed=5)
    return data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=version_id))


@pytest.fixture(scope="module")
def folder(version: data_pb2.PreparedVersion, data_root: Path) -> Path:
    return data_root / "artifacts" / version.artifact.uri


def test_the_trainer_reads_what_the_data_service_writes(version, folder: Path, data_root: Path) -> None:
    prepared = PreparedFolder.open(folder)
    assert prepared.format_version == prepared_layout.FORMAT_VERSION
    assert prepared.end_of_turn == "<|im_end|>"
    assert "<|im_start|>" in prepared.chat_template()
    for split in prepared_layout.SPLITS:
        written = split_rows(data_root, version, split)
        loaded = load_split(folder, split)
        assert [(e.input_ids, e.labels) for e in loaded] == [(r["input_ids"], r["labels"]) for r in written]
    assert sum(len(load_split(folder, split)) for split in prepared_layout.SPLITS) == len(FACTS)


def test_a_version_written_before_the_format_version_still_opens(folder: Path, tmp_path: Path) -> None:
    older = shutil.copytree(folder, tmp_path / "older")
    manifest = json.loads((older / prepared_layout.MANIFEST_FILE).read_text())
    del manifest[prepared_layout.FORMAT_VERSION_KEY]
    (older / prepared_layout.MANIFEST_FILE).write_text(json.dumps(manifest))
    prepared = PreparedFolder.open(older)
    assert prepared.format_version == 1 and prepared.end_of_turn == "<|im_end|>"
    assert load_split(older, "train") == load_split(folder, "train")


def test_unreadable_versions_are_refused_with_the_file_and_the_reason(folder: Path, tmp_path: Path) -> None:
    newer = shutil.copytree(folder, tmp_path / "newer")
    manifest = json.loads((newer / prepared_layout.MANIFEST_FILE).read_text())
    manifest[prepared_layout.FORMAT_VERSION_KEY] = prepared_layout.FORMAT_VERSION + 1
    (newer / prepared_layout.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PreparedLayoutError, match="prepare.json: format_version .* written by newer code"):
        PreparedFolder.open(newer)
    with pytest.raises(PreparedLayoutError, match="prepare.json: missing"):
        PreparedFolder.open(tmp_path)
    broken = shutil.copytree(folder, tmp_path / "broken")
    with open(broken / "train.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(PreparedLayoutError, match=r"train.jsonl, line \d+: not JSON"):
        load_split(broken, "train")
