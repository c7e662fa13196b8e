"""Rows encoded by a helper process equal rows encoded here, and a prepare that uses a helper writes the same
files as one that does not (services/data/row_encoding.py)."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_fixtures import jsonl, prepare, qa_rows, upload
from transformers import AutoTokenizer

from finetune.v1 import data_pb2, data_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from ftcommon.grpc_client import open_channel
from services.data.row_encoding import EncodingHelper, EncodingRecipe, Outcome, encode_batch, encode_batches

END_OF_TURN = "<|im_end|>"


def conversation(i: int, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is item {i}?"}, {"role": "assistant", "content": answer}]


def batches() -> list[list[tuple[list[dict[str, str]], str | None]]]:
    plain = [(conversation(i, f"Item {i} is a part." * (1 + i % 3)), None) for i in range(30)]
    too_long = [(conversation(100 + i, "word " * 80), None) for i in range(4)]
    pairs = [(conversation(200 + i, f"Yes, {i}."), f"No, {i}.") for i in range(12)]
    rows = plain + too_long
    return [rows[start : start + 8] for start in range(0, len(rows), 8)] + [pairs[:6], pairs[6:]]


@pytest.mark.parametrize("keep_truncated", [False, True])
def test_a_helper_process_encodes_batches_as_this_process_does(default_model_dir: Path, keep_truncated: bool):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    recipe = EncodingRecipe(tokenizer.chat_template, END_OF_TURN, 64, keep_truncated)
    here = [encode_batch(tokenizer, recipe, batch) for batch in batches()]
    done: list[int] = []
    with EncodingHelper(tokenizer, str(default_model_dir)) as helper:
        # Waiting for a batch of its own waits for it to be ready: then encode_batches hands it the first
        # two batches before this process takes one, whatever the timing.
        assert helper.submit(recipe, batches()[0]).result() == here[0]
        assert helper.ready()
        shared = encode_batches(tokenizer, recipe, batches(), helper, done.append)
    assert shared == here
    assert sorted(done) == sorted(len(batch) for batch in batches())
    outcomes = [row.outcome for batch in here for row in batch]
    assert outcomes.count(Outcome.TRUNCATED if keep_truncated else Outcome.DROPPED) == 4
    pair = json.loads(here[-2][0].body[:-1] + "}")
    assert pair["rejected"] == "No, 0." and len(pair["rejected_input_ids"]) == len(pair["rejected_labels"])


def test_a_prepare_with_a_helper_writes_the_files_one_without_writes(
    data_stub: data_pb2_grpc.DataServiceStub, data_root: Path, default_model_dir: Path, tmp_path: Path
):
    from services.data.config import DataSettings
    from services.data.server import build_server as build_data_server
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server as build_trainer_server

    data = jsonl(qa_rows(60, "helper") + [{"question": "Tell me everything.", "answer": "word " * 200}])
    options = {"max_seq_len": 64, "seed": 3, "truncation": data_pb2.TRUNCATION_POLICY_TRUNCATE}
    without = prepare(data_stub, dataset_id=upload(data_stub, data).id, **options)
    trainer = build_trainer_server(TrainerSettings(data_dir=tmp_path, port=0))
    try:
        with open_channel(trainer.address) as channel:
            trainer_pb2_grpc.TrainerServiceStub(channel).RegisterBaseModel(
                trainer_pb2.RegisterBaseModelRequest(
                    name="smollm2-135m-instruct", path=str(default_model_dir)
                ),
                timeout=120,
            )
        settings = DataSettings(
            data_dir=tmp_path, port=0, trainer_address=trainer.address, encoding_helper_min_rows=1
        )
        server = build_data_server(settings)
        try:
            with open_channel(server.address) as channel:
                stub = data_pb2_grpc.DataServiceStub(channel)
                helped = prepare(stub, dataset_id=upload(stub, data).id, **options)
                helped_uri = stub.GetPreparedVersion(
                    data_pb2.GetPreparedVersionRequest(id=helped.prepared_version_id)
                ).artifact.uri
        finally:
            server.stop(grace=1)
    finally:
        trainer.stop(grace=1)
    without_uri = data_stub.GetPreparedVersion(
        data_pb2.GetPreparedVersionRequest(id=without.prepared_version_id)
    ).artifact.uri
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        assert (tmp_path / "artifacts" / helped_uri / name).read_bytes() == (
            data_root / "artifacts" / without_uri / name
        ).read_bytes()


@pytest.mark.parametrize("death", ["killed once ready", "no tokenizer to load"])
def test_batches_of_a_helper_that_dies_are_encoded_here(default_model_dir: Path, tmp_path: Path, death: str):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    recipe = EncodingRecipe(tokenizer.chat_template, END_OF_TURN, 64, False)
    here = [encode_batch(tokenizer, recipe, batch) for batch in batches()]
    done: list[int] = []
    folder = default_model_dir if death == "killed once ready" else tmp_path / "no-tokenizer-here"
    with EncodingHelper(tokenizer, str(folder)) as helper:
        if death == "killed once ready":
            assert helper.submit(recipe, batches()[0]).result() == here[0]
            (process,) = multiprocessing.active_children()
            os.kill(process.pid, signal.SIGKILL)
        encoded = encode_batches(tokenizer, recipe, batches(), helper, done.append)
        assert not helper.ready() or death == "killed once ready"
    assert encoded == here
    assert sorted(done) == sorted(len(batch) for batch in batches())


def test_a_helper_ends_when_its_parent_is_killed(default_model_dir: Path, tmp_path: Path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, signal, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from transformers import AutoTokenizer\n"
        "from services.data.row_encoding import EncodingHelper\n"
        "if __name__ == '__main__':\n"
        f"    tokenizer = AutoTokenizer.from_pretrained({str(default_model_dir)!r})\n"
        f"    helper = EncodingHelper(tokenizer, {str(default_model_dir)!r})\n"
        "    while not helper.ready():\n"
        "        time.sleep(0.05)\n"
        "    print(*[child.pid for child in multiprocessing.active_children()], flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    parent = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    (helper_pid,) = map(int, parent.stdout.split())
    deadline = time.monotonic() + 60
    while Path(f"/proc/{helper_pid}").exists() and _state(helper_pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{helper_pid}").exists() or _state(helper_pid) == "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
