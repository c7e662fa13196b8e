"""Refusal preference pairs built by prepare (PrepareSpec.preference_pairs.from_refusals): a real data service
that reaches a real gateway serving the default model, the real trainer accepting the version for DPO."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_fixtures import (
    data_service_env,
    expect_rejected,
    free_port,
    jsonl,
    split_rows,
    upload,
    wait_for_job,
)
from test_data_kill import start_service

from finetune.v1 import (
    common_pb2,
    data_pb2,
    data_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon import prepared_layout
from ftcommon.grpc_client import open_channel
from ftcommon.specs.train import TrainSpec
from services.data.records import Conversation
from services.data.refusal_pairs import PairCounts, build_pairs, sounds_like_refusal
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

REFUSAL = "Let's keep the discussion relevant to Lamini."
IN_DOMAIN = [
    ("What is Lamini?", "Lamini is a library for fine-tuning language models."),
    ("How do I install Lamini?", "Run pip install lamini."),
    ("Does Lamini support batching?", "Yes, Lamini batches requests."),
    ("Can Lamini run offline?", "Yes, Lamini can run on your own servers."),
]
OFF_TOPIC = ["Write a short poem about the sea.", "What is the capital of France?", "Name three colours."]
NEW_TOKENS = 12


def data_service(data_root: Path, trainer_address: str, inference_address: str, folder: Path) -> Iterator:
    """A data service of its own (its own database, the shared artifact store) reaching `inference_address`."""
    from services.data.config import DataSettings
    from services.data.server import build_server

    settings = DataSettings(
        data_dir=folder,
        database_url=f"sqlite:///{folder / 'data.db'}",
        artifact_store_url=str(data_root / "artifacts"),
        port=0,
        trainer_address=trainer_address,
        inference_address=inference_address,
        generator_timeout_seconds=120,
        job_poll_seconds=0.1,
    )
    server = build_server(settings)
    with open_channel(server.address) as channel:
        yield data_pb2_grpc.DataServiceStub(channel), server.address
    server.stop(grace=1)


@pytest.fixture(scope="module")
def pairs_service(data_root, trainer_server, inference_server, tmp_path_factory) -> Iterator:
    yield from data_service(
        data_root, trainer_server.address, inference_server.grpc_address, tmp_path_factory.mktemp("pairs")
    )


@pytest.fixture(scope="module")
def pairs_stub(pairs_service) -> data_pb2_grpc.DataServiceStub:
    return pairs_service[0]


@pytest.fixture(scope="module")
def dpo_trainer_stub(data_root, pairs_service) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    """A trainer service (no workers: nothing trains) that reads prepared versions from pairs_service."""
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_root, port=0, data_address=pairs_service[1]))
    with open_channel(running.address) as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)
    running.stop(grace=1)


def sft_rows() -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for q, a in IN_DOMAIN] + [
        {"question": q, "answer": REFUSAL} for q in OFF_TOPIC
    ]


def pairs_request(dataset_id: str, **options: object) -> data_pb2.PrepareDatasetRequest:
    return data_pb2.PrepareDatasetRequest(
        dataset_id=dataset_id,
        base_model=DEFAULT_BASE_MODEL_NAME,
        max_seq_len=128,
        split=data_pb2.SplitFractions(train=0.6, validation=0.2, test=0.2),
        preference_pairs=data_pb2.PreferencePairOptions(from_refusals=True, **options),
    )


def run_prepare(stub: data_pb2_grpc.DataServiceStub, request: data_pb2.PrepareDatasetRequest):
    done = wait_for_job(stub, stub.PrepareDataset(request).status.id, timeout=240)
    assert done.status.state == common_pb2.JOB_STATE_SUCCEEDED, done.status.error
    return done


def greedy_answer(inference_address: str, question: str) -> str:
    with open_channel(inference_address, 60) as channel:
        return (
            inference_pb2_grpc.InferenceServiceStub(channel)
            .Generate(
                inference_pb2.GenerateRequest(
                    model=DEFAULT_BASE_MODEL_NAME,
                    messages=[common_pb2.ChatMessage(role="user", content=question)],
                    sampling=inference_pb2.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0),
                )
            )
            .text
        )


@pytest.mark.slow
def test_pairs_from_refusal_rows_follow_the_rules_and_dpo_accepts_them(
    pairs_stub, data_root, inference_server, dpo_trainer_stub
):
    dataset = upload(pairs_stub, jsonl(sft_rows()))
    done = run_prepare(pairs_stub, pairs_request(dataset.id, max_new_tokens=NEW_TOKENS))
    assert done.request.preference_pairs.generator == DEFAULT_BASE_MODEL_NAME  # the default: the base model
    version = pairs_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=done.prepared_version_id))
    assert version.preference_pairs

    manifest = json.loads((data_root / "artifacts" / version.artifact.uri / "prepare.json").read_text())
    counts = manifest["refusal_pairs"]
    assert counts["generator"] == DEFAULT_BASE_MODEL_NAME
    assert counts["in_domain_pairs"] == len(IN_DOMAIN)
    skipped = counts["skipped_generator_refused"] + counts["skipped_generation_failed"]
    assert counts["off_topic_pairs"] + skipped == len(OFF_TOPIC) and counts["off_topic_pairs"] >= 1
    assert bool(skipped) == any("made no preference pair" in w for w in version.warnings)

    rows = [row for split in ("train", "validation", "test") for row in split_rows(data_root, version, split)]
    assert len(rows) == len(IN_DOMAIN) + counts["off_topic_pairs"]
    references = dict(IN_DOMAIN)
    for row in rows:
        question, chosen = row["messages"][0]["content"], row["messages"][-1]["content"]
        rejected = row[prepared_layout.REJECTED]
        assert row[prepared_layout.REJECTED_INPUT_IDS] and row[prepared_layout.REJECTED_LABELS]
        if question in OFF_TOPIC:
            # The refusal over the base model's own (greedy, NEW_TOKENS long) answer.
            assert chosen == REFUSAL and row["is_refusal"]
            assert rejected == greedy_answer(inference_server.grpc_address, question).strip()
            assert not sounds_like_refusal(rejected, REFUSAL)
        else:
            assert (chosen, rejected) == (references[question], REFUSAL) and not row["is_refusal"]

    # The trainer takes the version for DPO as it takes uploaded pairs (queued, then cancelled: no training).
    created = dpo_trainer_stub.CreateJob(
        TrainSpec(
            base_model=DEFAULT_BASE_MODEL_NAME,
            prepared_version_id=version.id,
            hyperparameters={"method": "dpo", "epochs": 1},
        ).to_request()
    )
    dpo_trainer_stub.CancelJob(trainer_pb2.GetJobRequest(id=created.status.id))
    assert created.hyperparameters.method == trainer_pb2.TRAINING_METHOD_DPO

    # The same request again is the same version, found instead of built again.
    again = run_prepare(pairs_stub, pairs_request(dataset.id, max_new_tokens=NEW_TOKENS))
    assert again.prepared_version_id == version.id


@pytest.mark.slow
def test_a_refusal_domain_adds_off_topic_rows_to_a_dataset_without_refusals(pairs_stub, data_root):
    dataset = upload(pairs_stub, jsonl([{"question": q, "answer": a} for q, a in IN_DOMAIN]))
    request = pairs_request(dataset.id, max_new_tokens=8)
    request.refusals.CopyFrom(data_pb2.RefusalOptions(domain="Lamini", fraction=0.5))
    done = run_prepare(pairs_stub, request)
    version = pairs_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=done.prepared_version_id))
    manifest = json.loads((data_root / "artifacts" / version.artifact.uri / "prepare.json").read_text())
    counts = manifest["refusal_pairs"]
    assert counts["in_domain_pairs"] == len(IN_DOMAIN) and counts["off_topic_pairs"] >= 1
    rows = [row for split in ("train", "validation", "test") for row in split_rows(data_root, version, split)]
    off_topic = [row for row in rows if row["is_refusal"]]
    assert len(off_topic) == counts["off_topic_pairs"]
    assert all(row["messages"][-1]["content"] == REFUSAL != row["rejected"] for row in off_topic)


def test_bad_requests_name_the_field(data_stub, data_root):
    plain = upload(data_stub, jsonl([{"question": q, "answer": a} for q, a in IN_DOMAIN]))
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.PrepareDataset(pairs_request(plain.id)),
        mentions=["preference_pairs.from_refusals", "refusals.domain"],
    )
    with_refusals = upload(data_stub, jsonl(sft_rows()))
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.PrepareDataset(pairs_request(with_refusals.id, generator="no-such-model")),
        mentions=["preference_pairs.generator", "no-such-model"],
    )
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.PrepareDataset(pairs_request(with_refusals.id, max_new_tokens=0)),
        mentions=["preference_pairs.max_new_tokens"],
    )
    pairs = upload(data_stub, jsonl([{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}]))
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.PrepareDataset(pairs_request(pairs.id)),
        mentions=["preference_pairs.from_refusals"],
    )


@pytest.mark.slow
def test_an_unreachable_inference_service_fails_the_job_naming_its_setting(
    data_root, trainer_server, tmp_path
):
    closed = f"127.0.0.1:{free_port()}"
    for stub, _ in data_service(data_root, trainer_server.address, closed, tmp_path):
        dataset = upload(stub, jsonl(sft_rows()))
        job = stub.PrepareDataset(pairs_request(dataset.id, max_new_tokens=NEW_TOKENS))
        done = wait_for_job(stub, job.status.id, timeout=120)
        assert done.status.state == common_pb2.JOB_STATE_FAILED
        assert "FT_DATA_INFERENCE_ADDRESS" in done.status.error and closed in done.status.error
        assert not done.prepared_version_id
        assert not stub.ListPreparedVersions(
            data_pb2.ListPreparedVersionsRequest(dataset_id=dataset.id)
        ).versions


@pytest.mark.slow
def test_kill_during_generation_then_restart(trainer_server, inference_server, data_root, tmp_path):
    """kill -9 after the first generated answer: the job is requeued and runs again from the start; it ends
    with one complete version or none, never a half one."""
    import signal
    import sqlite3

    env = data_service_env(tmp_path, data_root, trainer_server.address, "jobs", inference_server.grpc_address)
    log = tmp_path / "service.log"
    service = start_service(env, log)
    address = f"127.0.0.1:{env['FT_DATA_PORT']}"
    try:
        with open_channel(address) as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            dataset = upload(stub, jsonl(sft_rows()))
            job = stub.PrepareDataset(pairs_request(dataset.id, max_new_tokens=NEW_TOKENS))
            for event in stub.WatchPrepareJob(common_pb2.WatchRequest(id=job.status.id), timeout=240):
                if event.message == "generating the rejected answers" and event.metrics["answers_done"] >= 1:
                    break
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        with sqlite3.connect(tmp_path / "data.db") as db:
            assert db.execute("select state from prepare_jobs").fetchall() == [
                (common_pb2.JOB_STATE_RUNNING,)
            ]
            assert db.execute("select count(*) from prepared_versions").fetchone() == (0,)

        service = start_service(env, log)
        with open_channel(address) as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            done = wait_for_job(stub, job.status.id, timeout=240)
            versions = stub.ListPreparedVersions(
                data_pb2.ListPreparedVersionsRequest(dataset_id=dataset.id)
            ).versions
            if done.status.state == common_pb2.JOB_STATE_SUCCEEDED:
                assert done.status.attempt == 2 and [v.id for v in versions] == [done.prepared_version_id]
                rows = sum(s.examples for s in versions[0].split_stats.values())
                assert versions[0].preference_pairs and rows >= len(IN_DOMAIN) + 1
            else:
                assert done.status.state == common_pb2.JOB_STATE_FAILED and not versions
    finally:
        service.kill()
        service.wait(10)


def test_a_generated_refusal_or_empty_answer_makes_no_pair():
    rows = [
        Conversation(1, [{"role": "user", "content": "Poem?"}, {"role": "assistant", "content": REFUSAL}]),
        Conversation(2, [{"role": "user", "content": "Sing?"}, {"role": "assistant", "content": REFUSAL}]),
        Conversation(3, [{"role": "user", "content": "Cook?"}, {"role": "assistant", "content": REFUSAL}]),
        Conversation(4, [{"role": "user", "content": "Dance?"}, {"role": "assistant", "content": REFUSAL}]),
        Conversation(
            5, [{"role": "user", "content": "Lamini?"}, {"role": "assistant", "content": "A library."}]
        ),
    ]
    generated = {
        0: "Roses are red, the sea is blue.",
        1: "I'm sorry, but I can't sing.",
        2: "Let us keep this discussion relevant to Lamini, please.",
        3: None,
    }
    counts = PairCounts(generator="m")
    keep = build_pairs(rows, REFUSAL, generated, counts)
    assert keep == [True, False, False, False, True]
    assert (rows[0].rejected, rows[4].rejected) == ("Roses are red, the sea is blue.", REFUSAL)
    assert (counts.off_topic_pairs, counts.in_domain_pairs) == (1, 1)
    assert (counts.skipped_generator_refused, counts.skipped_generation_failed) == (2, 1)
    assert "3 off-topic rows made no preference pair" in counts.warning()
