"""`ftctl models export`: a tiny model trained by the real trainer, exported through the CLI over the trainer's
ExportModel stream, then loaded in a fresh interpreter that cannot import anything of this repository: plain
transformers for the merged format, PEFT for the adapter. Plus the bad input: an unknown model, a non-empty DIR.
"""

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_fixtures import prepared_qa_version
from test_trainer_jobs import TINY, Workers, watch
from trainer_support import FACTS
from typer.testing import CliRunner

from finetune.v1 import (
    common_pb2,
    data_pb2,
    eval_pb2,
    eval_pb2_grpc,
    inference_pb2,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon.grpc_client import open_channel
from ftctl.main import app
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 2
QUESTION = FACTS[0][0]
FIRST_PARTY = ("services", "ftcommon", "ftctl", "finetune")
# Run by a fresh interpreter (`python -I`, cwd a temp folder) that first drops every way back into this
# repository (sys.path entries holding its packages, the editable install's finder), proves it did, then
# loads the export as someone on another machine would and generates a few tokens.
LOADER = f"""
import importlib.util, json, os, sys
sys.path[:] = [p for p in sys.path if not any(os.path.isdir(os.path.join(p, n)) for n in {FIRST_PARTY!r})]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
reachable = [n for n in {FIRST_PARTY!r} if importlib.util.find_spec(n) is not None]
folder, base = sys.argv[1], sys.argv[2]
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(folder)
if base:
    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
else:
    model = AutoModelForCausalLM.from_pretrained(folder)
messages = [{{"role": "user", "content": {QUESTION!r}}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(json.dumps({{
    "reachable": reachable,
    "new_tokens": int(output.shape[1] - inputs["input_ids"].shape[1]),
    "dtype": str(next(model.parameters()).dtype),
    "model_max_length": tokenizer.model_max_length,
    "class": type(model).__name__,
}}))
"""


@pytest.fixture(scope="module")
def eval_server(data_root, trainer_server, data_server, inference_server) -> Iterator[str]:
    from services.eval.config import EvalSettings
    from services.eval.server import build_server

    settings = EvalSettings(
        data_dir=data_root,
        port=0,
        inference_address=inference_server.grpc_address,
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        poll_seconds=0.1,
    )
    server = build_server(settings)
    yield server.address
    server.stop(grace=1)


def _trainer(data_root: Path, data_address: str, eval_address: str) -> Iterator[str]:
    from services.trainer.server import build_server

    settings = TrainerSettings(
        data_dir=data_root,
        port=0,
        data_address=data_address,
        eval_address=eval_address,
        eval_timeout_seconds=2,
    )
    running = build_server(settings)
    yield running.address
    running.stop(grace=1)


@pytest.fixture(scope="module")
def trainer_address(data_root, data_server, eval_server) -> Iterator[str]:
    """A trainer that reaches the data and eval services, as a deployed one does."""
    yield from _trainer(data_root, data_server.address, eval_server)


@pytest.fixture(scope="module")
def trainer_without_eval(data_root, data_server) -> Iterator[str]:
    """A trainer whose eval service is down (nothing listens on port 1)."""
    yield from _trainer(data_root, data_server.address, "127.0.0.1:1")


@pytest.fixture(scope="module")
def job(trainer_without_eval, data_root, data_stub) -> trainer_pb2.TrainingJob:
    split = data_pb2.SplitFractions(train=0.6, validation=0.2, test=0.2)
    version = prepared_qa_version(data_stub, data_root, "export-facts", FACTS, split, seed=7)
    hyperparameters = trainer_pb2.Hyperparameters()
    hyperparameters.CopyFrom(TINY)
    hyperparameters.max_steps = STEPS
    hyperparameters.eval_every_steps = STEPS
    hyperparameters.checkpoint_every_steps = 100
    workers = Workers(data_root)
    workers.start()
    try:
        with open_channel(trainer_without_eval) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            created = stub.CreateJob(
                trainer_pb2.CreateJobRequest(
                    base_model=DEFAULT_BASE_MODEL_NAME,
                    prepared_version_id=version,
                    hyperparameters=hyperparameters,
                    idempotency_key="export-tiny",
                )
            )
            watch(stub, created.status.id)
            finished = stub.GetJob(trainer_pb2.GetJobRequest(id=created.status.id))
    finally:
        workers.stop_all()
    assert finished.status.state == common_pb2.JOB_STATE_SUCCEEDED, finished.status.error
    return finished


@pytest.fixture(scope="module")
def eval_run_id(eval_server, job) -> str:
    """Base against the tuned model on the test split: the evidence a model card reports."""
    with open_channel(eval_server) as channel:
        stub = eval_pb2_grpc.EvalServiceStub(channel)
        run = stub.CreateRun(
            eval_pb2.CreateRunRequest(
                models=[DEFAULT_BASE_MODEL_NAME, job.merged_model_id],
                data=eval_pb2.EvalData(prepared_version_id=job.prepared_version_id, split="test"),
                generation=inference_pb2.SamplingParams(max_tokens=8, temperature=0.0),
                metrics=["token_f1", "exact_match"],
                off_topic_probes=["Who invented the telephone?"],
                seed=3,
            )
        )
        list(stub.WatchRun(common_pb2.WatchRequest(id=run.status.id), timeout=300))
        finished = stub.GetRun(eval_pb2.GetRunRequest(id=run.status.id))
    assert finished.status.state == common_pb2.JOB_STATE_SUCCEEDED, finished.status.error
    return run.status.id


def export(trainer: str, *arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["models", "export", *arguments], env={"FT_TRAINER_ADDRESS": trainer})
    return result.exit_code, result.output


def load_elsewhere(folder: Path, tmp_path: Path, base: Path | None = None) -> dict:
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(folder), str(base or "")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def no_host_paths(folder: Path, data_root: Path) -> None:
    """Configs and the card name no folder of the trainer's host (its data root, this checkout)."""
    for path in [*folder.rglob("*.json"), folder / "README.md"]:
        text = path.read_text()
        for host_path in (str(data_root), str(REPO_ROOT), "/artifacts/"):
            assert host_path not in text, f"{path.name} names {host_path}"


def test_merged_bf16_export_loads_with_plain_transformers(
    trainer_address, job, eval_run_id, data_root, tmp_path
):
    target = tmp_path / "merged"
    code, output = export(trainer_address, job.adapter_model_id, str(target), "--dtype", "bf16")
    assert code == 0, output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((target / "tokenizer_config.json").read_text())["model_max_length"] == 8192
    no_host_paths(target, data_root)
    card = (target / "README.md").read_text()
    for fact in (
        f"`{DEFAULT_BASE_MODEL_NAME}`",
        job.prepared_version_id,
        "export-facts",  # the dataset's name, from the data service
        "| lora_rank | 4 |",
        f"| max_steps | {STEPS} |",
        "| weights dtype | bfloat16 |",
        eval_run_id,
        "**Verdict: ",
        "| token_f1 | ",
    ):
        assert fact in card, fact
    token_f1 = next(line for line in card.splitlines() if line.startswith("| token_f1 | "))
    assert token_f1.count("[") == 3, token_f1  # this model, the baseline and the delta, each with an interval

    loaded = load_elsewhere(target, tmp_path)
    assert loaded["reachable"] == []
    assert loaded["new_tokens"] > 0 and loaded["dtype"] == "torch.bfloat16"
    assert loaded["model_max_length"] == 8192


def test_adapter_export_names_its_base_and_loads_with_peft(
    trainer_without_eval, job, data_root, default_model_dir, tmp_path
):
    from ftcommon.artifacts import ArtifactStore

    with open_channel(trainer_without_eval) as channel:
        stored = trainer_pb2_grpc.TrainerServiceStub(channel).GetModel(
            trainer_pb2.GetModelRequest(name=job.adapter_model_id)
        )
    stored_dir = ArtifactStore(str(data_root / "artifacts")).local_dir(stored.artifact.uri)
    stored_config = json.loads((stored_dir / "adapter_config.json").read_text())
    assert stored_config["base_model_name_or_path"] == DEFAULT_BASE_MODEL_NAME  # named so at training time

    target = tmp_path / "adapter"
    target.mkdir()  # an empty folder is taken
    code, output = export(trainer_without_eval, job.merged_model_id, str(target), "--format", "adapter")
    assert code == 0, output
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_BASE_MODEL_NAME
    no_host_paths(target, data_root)
    card = (target / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card
    assert "No evaluation evidence is included: the eval service at 127.0.0.1:1 could not be asked" in card
    assert "| train_loss | " in card

    loaded = load_elsewhere(target, tmp_path, base=default_model_dir)
    assert loaded["reachable"] == [] and loaded["class"].startswith("Peft")
    assert loaded["new_tokens"] > 0 and loaded["model_max_length"] == 8192


def test_an_unknown_model_is_refused_and_nothing_is_written(trainer_without_eval, tmp_path):
    target = tmp_path / "out"
    code, output = export(trainer_without_eval, "no-such-model", str(target))
    assert code == 1
    assert "NOT_FOUND" in output and "field 'model'" in output and "no-such-model" in output
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_directory_is_refused_and_left_alone(trainer_without_eval, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, output = export(trainer_without_eval, DEFAULT_BASE_MODEL_NAME, str(target))
    assert code == 2
    assert "is not empty" in output and "DIR" in output
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_a_base_model_has_no_adapter_to_export(trainer_without_eval, tmp_path):
    code, output = export(
        trainer_without_eval, DEFAULT_BASE_MODEL_NAME, str(tmp_path / "x"), "--format", "adapter"
    )
    assert code == 1
    assert "INVALID_ARGUMENT" in output and "field 'format'" in output and "base model" in output


def test_the_cli_refuses_a_stream_that_does_not_add_up(tmp_path):
    """What the CLI writes is checked: each file against its sha256, and no path may leave the folder."""
    from ftctl.model_export import ExportStreamError, _write_files

    good = hashlib.sha256(b"hello").hexdigest()
    broken_streams = {
        "sha256": [trainer_pb2.ExportChunk(path="a.json", data=b"hello", last=True, sha256="0" * 64)],
        "offset": [
            trainer_pb2.ExportChunk(path="a.json", data=b"he"),
            trainer_pb2.ExportChunk(path="a.json", offset=5, data=b"llo", last=True, sha256=good),
        ],
        "without its last chunk": [
            trainer_pb2.ExportChunk(path="a.json", data=b"he"),
            trainer_pb2.ExportChunk(path="b.json", data=b"", last=True),
        ],
        "relative path": [trainer_pb2.ExportChunk(path="../escape", data=b"hello", last=True, sha256=good)],
        "ended inside": [trainer_pb2.ExportChunk(path="a.json", data=b"he")],
    }
    for reason, chunks in broken_streams.items():
        staging = tmp_path / reason.replace(" ", "-")
        staging.mkdir()
        with pytest.raises(ExportStreamError, match=reason):
            _write_files(chunks, staging)
    assert not (tmp_path / "escape").exists()
    staging = tmp_path / "good"
    staging.mkdir()
    chunks = [
        trainer_pb2.ExportChunk(path="sub/a.json", data=b"hel"),
        trainer_pb2.ExportChunk(path="sub/a.json", offset=3, data=b"lo", last=True, sha256=good),
    ]
    assert _write_files(chunks, staging) == {"sub/a.json": 5}
    assert (staging / "sub" / "a.json").read_bytes() == b"hello"
