"""The whole flow over real gRPC between separate service processes, with tiny settings:
`ftctl pipeline run` uploads, prepares, trains, evaluates and promotes; killed mid-training, a re-run
re-attaches to the same job and finishes; the promoted alias is what the gateway then serves.
Runs on SQLite, and on PostgreSQL when FT_TEST_POSTGRES_URL names a server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from openai import OpenAI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from finetune.v1 import trainer_pb2
from ftctl.local_stack import StackPorts, free_ports, running_stack
from services.inference.config import InferenceSettings
from services.inference.server import open_key_store

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "samples" / "platform_qa.jsonl"


def tiny_pipeline(folder: Path, name: str) -> Path:
    rows = SAMPLE.read_text().splitlines()
    dataset = folder / "tiny.jsonl"
    dataset.write_text("\n".join(rows[:40] + rows[-4:]) + "\n")
    spec = {
        "name": name,
        "base_model": "smollm2-135m-instruct",
        "dataset": {"path": str(dataset), "name": "tiny"},
        "prepare": {
            "max_seq_len": 128,
            "split": [0.7, 0.1, 0.2],
            "refusals": {"domain": "the fine-tuning platform", "fraction": 0.1},
        },
        "hyperparameters": {
            "lora_rank": 4,
            "max_steps": 6,
            "batch_size": 2,
            "checkpoint_every_steps": 2,
            "learning_rate": 0.001,
        },
        "eval": {
            "max_examples": 4,
            "generation": {"max_tokens": 8},
            # Three off-topic probes, not the built-in hundred: each is asked of both models.
            "off_topic_probes": [
                "Tell me a joke about cats.",
                "What is the capital of France?",
                "Write a poem about the sea.",
            ],
            # Tiny settings prove the mechanics, not quality: a rule any run passes.
            "promotion_rule": {
                "primary_metric": "token_f1",
                "min_delta": -1.0,
                # Set, so the refusal rule that refusal rows would bring is off.
                "min_refusal_rate": 0.0,
                "max_wrong_refusal_rate": 1.0,
            },
        },
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def postgres_urls(base_url: str, tag: str) -> Iterator[dict[str, str]]:
    """One fresh database per service on the test server, dropped afterwards."""
    url = make_url(base_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    names = {svc: f"e2e_{tag}_{svc.lower()}" for svc in ("DATA", "TRAINER", "EVAL", "INFERENCE")}
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield {
            f"FT_{svc}_DATABASE_URL": url.set(database=name).render_as_string(hide_password=False)
            for svc, name in names.items()
        }
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_env() -> Iterator[dict[str, str]]:
    """PostgreSQL when the run has one (CI does), else SQLite. One kill-and-resume run, not one per database: the
    demo, README and per-service kill tests already run the whole flow on SQLite, and this test is the suite's
    slowest after them."""
    base_url = os.environ.get("FT_TEST_POSTGRES_URL", "")
    if not base_url:
        yield {}
        return
    yield from postgres_urls(base_url, uuid.uuid4().hex[:8])


def run_ftctl(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ftctl.main", *args], env=env, **kwargs)


def test_pipeline_survives_a_kill_and_promotes(tmp_path, default_model_dir, database_env):
    ports = StackPorts(*free_ports(6))
    data_root = tmp_path / "var"
    spec_path = tiny_pipeline(tmp_path, "e2e")
    state_dir = tmp_path / "state"
    # The transformers engine starts in seconds; vLLM has its own tests and serves the demo.
    with running_stack(data_root, ports, FT_INFERENCE_ENGINE="transformers", **database_env) as stack:
        env = stack.environment()
        from ftctl.pipeline import PipelineRunner
        from ftctl.pipeline_spec import load_spec

        runner = PipelineRunner(load_spec(spec_path), state_dir / "e2e.json", ports.addresses())
        runner.trainer.RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name="smollm2-135m-instruct", path=str(default_model_dir)),
            timeout=300,
        )

        first = run_ftctl(["pipeline", "run", str(spec_path), "--state-dir", str(state_dir)], env)
        state_file = state_dir / "e2e.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = json.loads(state_file.read_text()) if state_file.exists() else {}
            if state.get("train_job_id") or first.poll() is not None:
                break
            time.sleep(0.5)
        assert first.poll() is None, "the pipeline ended before training started"
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_job = json.loads(state_file.read_text())["train_job_id"]

        second = run_ftctl(["pipeline", "run", str(spec_path), "--state-dir", str(state_dir)], env)
        assert second.wait(timeout=900) == 0, "the resumed pipeline did not promote"
        state = json.loads(state_file.read_text())
        assert state["train_job_id"] == killed_job, "the re-run started a second training job"
        assert state["promoted_alias"] == "prod" and state["verdict"] == "pass"

        prod = runner.trainer.GetModel(trainer_pb2.GetModelRequest(name="prod"))
        assert prod.id == state["merged_model_id"]
        assert prod.lineage.prepared_version_id == state["prepared_version_id"]

        gateway_settings = InferenceSettings(
            data_dir=data_root, database_url=database_env.get("FT_INFERENCE_DATABASE_URL", "")
        )
        secret = open_key_store(gateway_settings).create("e2e")[1]
        client = OpenAI(base_url=f"{ports.addresses().gateway_url}/v1", api_key=secret)
        deadline = time.monotonic() + 120
        while True:  # the gateway follows the alias on its own; wait for the swap
            cards = {card.id: card for card in client.models.list().data}
            prod_root = getattr(cards.get("prod"), "root", None)
            if prod_root == state["merged_model_id"]:
                break
            assert time.monotonic() < deadline, f"the gateway still serves {prod_root} as prod"
            time.sleep(1)
        reply = client.chat.completions.create(
            model="prod", messages=[{"role": "user", "content": "How do I upload a dataset?"}], max_tokens=8
        )
        assert reply.choices[0].message.content


def test_demo_shows_answers_before_and_after_and_stops_everything(
    tmp_path, default_model_dir, monkeypatch, capsys
):
    from ftctl import demo

    monkeypatch.setenv("FT_INFERENCE_ENGINE", "transformers")
    ports = StackPorts(*free_ports(6))
    demo.main(tmp_path / "var", tiny_pipeline(tmp_path, "demo-tiny"), ports)
    out, err = capsys.readouterr()
    assert "base model vs tuned model" in out
    assert "verdict: PASS" in out
    assert "report: " in err and "services stopped" in err
    for port in (ports.data, ports.trainer, ports.eval, ports.inference, ports.gateway):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"
