"""Prepared versions on the dataset page: the token-length histogram the data service keeps per split, drawn
as server-side SVG whose bars add up to the split's examples."""

import re
from collections.abc import Iterator

import pytest
from data_fixtures import prepared_qa_version
from test_console import signed_in

from finetune.v1 import data_pb2
from ftcommon.grpc_server import RunningServer
from services.console.charts import histogram
from services.console.config import ConsoleSettings
from services.console.state import ConsoleState
from services.data.stats import MAX_HISTOGRAM_BINS, length_histogram, token_stats


def test_lengths_fall_into_power_of_two_bins_no_more_than_the_maximum() -> None:
    assert length_histogram([]) == ([], 0)
    counts, width = length_histogram([3, 3, 5, 23])
    assert width == 1 and len(counts) == 24 and counts[3] == 2 and counts[23] == 1
    counts, width = length_histogram([10, 100, 1000, 1000])
    assert width == 64 and len(counts) <= MAX_HISTOGRAM_BINS and sum(counts) == 4 and counts[1000 // 64] == 2
    stats = token_stats([10, 100], [5, 50])
    assert stats["length_histogram"] and stats["histogram_bin_width"] == 8
    svg = histogram([2, 0, 1], 8, "train <lengths>")
    assert svg.count("<rect") == 3 and "16-23 tokens: 1 examples" in svg and "&lt;lengths&gt;" in svg


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, data_server: RunningServer, trainer_server: RunningServer
) -> Iterator[ConsoleState]:
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console-prepared"),
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address="127.0.0.1:1",
    )
    state = ConsoleState.build(settings)
    yield state
    state.close()


def test_the_dataset_page_draws_each_splits_length_histogram(
    console: ConsoleState, data_stub, data_root
) -> None:
    pairs = [(f"Question {i} about the console{' and more' * i}?", f"Answer {i}.") for i in range(10)]
    split = data_pb2.SplitFractions(train=0.8, validation=0.0, test=0.2)
    version_id = prepared_qa_version(data_stub, data_root, "console-histogram", pairs, split, seed=1)
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=version_id))
    client, _ = signed_in(console, "read-only")
    page = client.get(f"/datasets/{version.dataset_id}").text
    section = page.split(f'id="version-{version_id}"')[1]
    train = section.split('aria-label="train split token lengths"')[1].split("</svg>")[0]
    counted = sum(int(n) for n in re.findall(r"tokens: (\d+) examples", train))
    assert counted == version.split_stats["train"].examples == 8
    assert 'aria-label="test split token lengths"' in section
    assert f"/evaluations?prepared_version_id={version_id}" in section


def test_the_prepare_and_training_forms_follow_the_specs(console: ConsoleState, data_stub) -> None:
    from data_fixtures import jsonl, upload, wait_for_job

    rows = [{"question": f"How does step {i} work?", "answer": f"Step {i} works."} for i in range(12)]
    dataset = upload(data_stub, jsonl(rows), "steps.jsonl", name="console-steps")
    client, csrf = signed_in(console, "admin")
    page = client.get(f"/datasets/{dataset.id}").text
    form = page.split('id="prepare-form"')[1].split("</form>")[0]
    assert 'name="split" placeholder="0.8,0.1,0.1"' in form and 'name="refusals.domain"' in form
    assert f"ftctl data prepare {dataset.id} --base-model smollm2-135m-instruct" in form
    shown = client.get(
        f"/datasets/{dataset.id}/prepare/equivalents",
        params={"base_model": "smollm2-135m-instruct", "max_seq_len": "128", "split": "0.5,0.25,0.25"},
    ).json()
    assert (
        "--max-seq-len 128 --split 0.5,0.25,0.25" in shown["command"] and "max_seq_len: 128" in shown["yaml"]
    )
    bad = client.get(
        f"/datasets/{dataset.id}/prepare/equivalents",
        params={"base_model": "m", "split": "1,1"},
        headers={"Accept": "application/json"},  # as the page's script asks
    )
    assert bad.status_code == 400 and "split" in bad.json()["error"]

    fields = {"csrf_token": csrf, "base_model": "smollm2-135m-instruct", "max_seq_len": "128", "template": ""}
    reply = client.post(f"/datasets/{dataset.id}/prepare", data=fields)
    assert reply.status_code == 200 and "--max-seq-len 128" in reply.text
    job_id = re.search(r"Prepare job <code>([^<]+)</code>", reply.text).group(1)  # type: ignore[union-attr]
    done = wait_for_job(data_stub, job_id)
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=done.prepared_version_id))
    assert version.request.max_seq_len == 128 and version.request.split.train == 0.8  # blank: the default

    new_job = client.get(f"/jobs/new?prepared_version_id={version.id}").text
    assert 'name="learning_rate" placeholder="0.001"' in new_job and "Peak learning rate" in new_job
    assert f"ftctl train create --dataset {version.id}" in new_job
    shown = client.get(
        "/jobs/new/equivalents",
        params={"base_model": "smollm2-135m-instruct", "prepared_version_id": version.id, "lora_rank": "8"},
    ).json()
    assert "--lora-rank 8" in shown["command"] and "lora_rank: 8" in shown["yaml"]
    refused = client.post(
        "/jobs",
        data={"csrf_token": csrf, "base_model": "m", "prepared_version_id": version.id, "epochs": "0"},
    )
    assert refused.status_code == 400 and "hyperparameters.epochs" in refused.text
    assert (
        client.post("/jobs", data={"base_model": "m", "prepared_version_id": version.id}).status_code == 403
    )
    assert client.post(f"/datasets/{dataset.id}/prepare", data={"base_model": "m"}).status_code == 403
    reader, reader_csrf = signed_in(console, "read-only")
    assert reader.post("/jobs", data={"csrf_token": reader_csrf}).status_code == 403
    assert reader.post(f"/datasets/{dataset.id}/prepare", data={"csrf_token": reader_csrf}).status_code == 403
