"""EvalService end to end: real data, trainer, inference and eval servers on loopback, the real default model."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from data_fixtures import jsonl, prepare, prepared_qa_version, upload
from gateway_support import one_request_at_a_time_gateway  # noqa: F401  (fixture: inference_server)
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.v1 import common_pb2, data_pb2, eval_pb2, eval_pb2_grpc, inference_pb2, inference_pb2_grpc
from ftcommon.grpc_client import open_channel
from services.eval import benchmarks
from services.eval.config import EvalSettings
from services.eval.server import EvalServer, build_server
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

pytestmark = pytest.mark.slow

MMLU_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "benchmarks" / "mmlu"
FACTS = [
    ("What is Lamini?", "Lamini is a library for fine-tuning language models."),
    ("How do I install Lamini?", "Run pip install lamini."),
    ("Does Lamini support batching?", "Yes, Lamini batches requests."),
    ("Which license does Lamini use?", "Lamini uses the Apache 2.0 license."),
    ("Can Lamini run offline?", "Yes, Lamini can run on your own servers."),
    ("What languages does Lamini support?", "Lamini supports Python and a REST API."),
    ("How do I train a model with Lamini?", "Call the train method with your data."),
    ("Where are Lamini models stored?", "Lamini stores models in its registry."),
]


@pytest.fixture(scope="module")
def eval_server(data_root, trainer_server, data_server, inference_server) -> Iterator[EvalServer]:
    settings = EvalSettings(
        data_dir=data_root,
        port=0,
        inference_address=inference_server.grpc_address,
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        poll_seconds=0.1,
        concurrency=8,
        benchmark_roots=[data_root, MMLU_DIR.parent],
    )
    server = build_server(settings)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def stub(eval_server: EvalServer) -> Iterator[eval_pb2_grpc.EvalServiceStub]:
    with open_channel(eval_server.address, 30) as channel:
        yield eval_pb2_grpc.EvalServiceStub(channel)


@pytest.fixture(scope="module")
def prepared_version_id(data_root, data_stub) -> str:
    split = data_pb2.SplitFractions(train=0.5, validation=0.0, test=0.5)
    return prepared_qa_version(data_stub, data_root, "eval-facts", FACTS, split, seed=5)


def _finish(stub: eval_pb2_grpc.EvalServiceStub, run_id: str, timeout: float = 400) -> eval_pb2.EvalRun:
    events = list(stub.WatchRun(common_pb2.WatchRequest(id=run_id), timeout=timeout))
    assert any(e.kind == common_pb2.EVENT_KIND_PROGRESS for e in events)
    return stub.GetRun(eval_pb2.GetRunRequest(id=run_id))


def test_base_against_itself_ties_and_reports(stub, prepared_version_id) -> None:
    run = stub.CreateRun(
        eval_pb2.CreateRunRequest(
            models=[DEFAULT_BASE_MODEL_NAME, DEFAULT_BASE_MODEL_NAME],
            data=eval_pb2.EvalData(prepared_version_id=prepared_version_id, split="test"),
            generation=inference_pb2.SamplingParams(max_tokens=16, temperature=0.0),
            metrics=["token_f1", "reference_loss", "refusal"],
            off_topic_probes=["Who invented the telephone?", "How do I iron a shirt?"],
            in_domain_probes=["How do I start a training job?"],
            seed=11,
        )
    )
    finished = _finish(stub, run.status.id)
    assert finished.status.state == common_pb2.JOB_STATE_SUCCEEDED, finished.status.error

    fetched = stub.GetReport(eval_pb2.GetRunRequest(id=run.status.id))
    report = json.loads(fetched.report_json)
    second = f"{DEFAULT_BASE_MODEL_NAME}#2"
    assert [m["label"] for m in report["models"]] == [DEFAULT_BASE_MODEL_NAME, second]
    assert len(report["examples"]) == 4
    for row in report["examples"]:
        answers = row["answers"]
        assert answers[DEFAULT_BASE_MODEL_NAME]["text"] == answers[second]["text"]  # greedy: identical
    for metric in ("token_f1", "exact_match", "rouge_l", "bleu", "reference_loss"):
        comparison = report["comparisons"][second][metric]
        assert comparison["delta"]["mean"] == pytest.approx(0.0, abs=1e-9), metric
        assert comparison["ties"] == 4 and comparison.get("wins", 0) == 0 and comparison.get("losses", 0) == 0
    base = report["summaries"][DEFAULT_BASE_MODEL_NAME]
    assert base["reference_perplexity"]["mean"] > 1.0
    assert base["refusal_rate"] == report["summaries"][second]["refusal_rate"]
    assert "wrong_refusal_rate" in base
    # The delta's interval is [0, 0]: not above min_delta 0, so the verdict fails with the reason.
    assert finished.verdict == eval_pb2.VERDICT_FAIL
    assert any("lower bound not above" in reason for reason in finished.verdict_reasons)
    assert fetched.report_html.count("src='data:image/png;base64,") >= 3
    assert fetched.html.uri and finished.report_json.uri
    assert any(s.metric == "token_f1" and s.model == DEFAULT_BASE_MODEL_NAME for s in finished.summaries)
    listed = stub.ListRuns(eval_pb2.ListRunsRequest())
    assert run.status.id in [r.status.id for r in listed.runs]
    compared = stub.CompareRuns(eval_pb2.CompareRunsRequest(run_ids=[run.status.id]))
    assert any(s.model == f"{run.status.id}/{DEFAULT_BASE_MODEL_NAME}" for s in compared.summaries)


def test_refusal_and_stock_reply_rows_are_not_counted_as_in_domain(stub, data_stub, data_root) -> None:
    refusal = "Let's keep the discussion relevant to Lamini."
    off_topic = ["Tell me a joke about cats.", "Write a poem about the sea.", "Who won the 1998 World Cup?"]
    gibberish = ["Jkndjwayxbuijkadn", "??????", "84092384972847832590458"]
    pairs = FACTS[:4] + [(question, refusal) for question in off_topic]
    pairs += [(noise, "I'm having trouble understanding you. Can you try again?") for noise in gibberish]
    split = data_pb2.SplitFractions(train=0.2, validation=0.0, test=0.8)
    version = prepared_qa_version(data_stub, data_root, "eval-hand-refusals", pairs, split, seed=5)
    run = stub.CreateRun(
        eval_pb2.CreateRunRequest(
            models=[DEFAULT_BASE_MODEL_NAME],
            data=eval_pb2.EvalData(prepared_version_id=version, split="test"),
            generation=inference_pb2.SamplingParams(max_tokens=8, temperature=0.0),
            metrics=["refusal"],
            off_topic_probes=["How do I iron a shirt?"],
            refusal_text=refusal,
        )
    )
    list(stub.WatchRun(common_pb2.WatchRequest(id=run.status.id), timeout=300))
    finished = stub.GetRun(eval_pb2.GetRunRequest(id=run.status.id))
    assert finished.status.state == common_pb2.JOB_STATE_SUCCEEDED, finished.status.error
    report = json.loads(stub.GetReport(eval_pb2.GetRunRequest(id=run.status.id)).report_json)
    rows = report["examples"]
    assert {row["question"]: row["should_refuse"] for row in rows} == {
        r["question"]: r["question"] in off_topic for r in rows
    }
    canned = [row["question"] for row in rows if row["canned_reference"]]
    assert set(canned) == set(gibberish)  # the split keeps all three: a stock reply needs 3 rows to count
    refused = sum(row["should_refuse"] for row in rows)
    assert 0 < refused < len(rows)
    summary = report["summaries"][DEFAULT_BASE_MODEL_NAME]
    assert summary["refusal_rate"]["n"] == refused + 1  # and the one probe
    assert summary["wrong_refusal_rate"]["n"] == len(rows) - refused - len(canned)


@pytest.mark.skipif(not MMLU_DIR.exists(), reason="shared MMLU files absent")
def test_mmlu_choice_matches_transformers_log_likelihood(stub, default_model_dir) -> None:
    limit = 4
    run = stub.CreateRun(
        eval_pb2.CreateRunRequest(
            models=[DEFAULT_BASE_MODEL_NAME],
            benchmarks=[eval_pb2.BenchmarkSpec(name="mmlu", path=str(MMLU_DIR), limit=limit)],
            metrics=["exact_match"],  # no refusal probes: only the benchmark costs model calls
        )
    )
    finished = _finish(stub, run.status.id)
    assert finished.status.state == common_pb2.JOB_STATE_SUCCEEDED, finished.status.error
    report = json.loads(stub.GetReport(eval_pb2.GetRunRequest(id=run.status.id)).report_json)
    predicted = report["benchmark_questions"][DEFAULT_BASE_MODEL_NAME]["mmlu"]["predicted"]

    # The same questions scored by hand: log-softmax of the model's logits at each choice letter.
    questions = benchmarks.load_questions(benchmarks.MMLU, MMLU_DIR, limit)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    expected = []
    for question in questions:
        prompt_ids = tokenizer(question.prompt, add_special_tokens=False)["input_ids"]
        logprobs = []
        for continuation in question.continuations:
            continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + continuation_ids])
            with torch.no_grad():
                log_softmax = model(ids).logits[0].log_softmax(-1)
            positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(continuation_ids) - 1)
            logprobs.append(
                sum(log_softmax[p, t].item() for p, t in zip(positions, continuation_ids, strict=True))
            )
        expected.append(max(range(len(logprobs)), key=logprobs.__getitem__))
    assert predicted == expected
    accuracy = sum(q.correct[p] for q, p in zip(questions, expected, strict=True)) / limit
    by_subject = report["benchmarks"][DEFAULT_BASE_MODEL_NAME]
    assert by_subject["mmlu"] == pytest.approx(accuracy)  # one question per subject: macro equals micro


def test_cancel_a_running_run(stub, prepared_version_id) -> None:
    run = stub.CreateRun(
        eval_pb2.CreateRunRequest(
            models=[DEFAULT_BASE_MODEL_NAME],
            data=eval_pb2.EvalData(prepared_version_id=prepared_version_id, split="train"),
            generation=inference_pb2.SamplingParams(max_tokens=32),
            metrics=["refusal"],  # the built-in 90 probes: long enough to cancel in the middle
        )
    )
    deadline = time.monotonic() + 120
    while stub.GetRun(eval_pb2.GetRunRequest(id=run.status.id)).status.state == common_pb2.JOB_STATE_QUEUED:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stub.CancelRun(eval_pb2.GetRunRequest(id=run.status.id))
    final = _finish_any(stub, run.status.id)
    assert final.status.state == common_pb2.JOB_STATE_CANCELLED
    assert not final.report_html.uri


def _preference_accuracy(stub: eval_pb2_grpc.EvalServiceStub, data_stub, rows: list[dict]) -> dict:
    dataset = upload(data_stub, jsonl(rows))
    split = data_pb2.SplitFractions(train=0.2, validation=0.0, test=0.8)
    version = prepare(data_stub, dataset_id=dataset.id, max_seq_len=128, split=split, seed=3)
    run = stub.CreateRun(
        eval_pb2.CreateRunRequest(
            models=[DEFAULT_BASE_MODEL_NAME],
            data=eval_pb2.EvalData(prepared_version_id=version.prepared_version_id, split="test"),
            generation=inference_pb2.SamplingParams(max_tokens=4, temperature=0.0),
            metrics=["preference_accuracy"],
        )
    )
    finished = _finish(stub, run.status.id)
    assert finished.status.state == common_pb2.JOB_STATE_SUCCEEDED, finished.status.error
    fetched = stub.GetReport(eval_pb2.GetRunRequest(id=run.status.id))
    assert "preference_accuracy" in fetched.report_html
    return json.loads(fetched.report_json)["summaries"][DEFAULT_BASE_MODEL_NAME]["preference_accuracy"]


def test_preference_accuracy_prefers_the_models_own_answer_and_swapping_gives_its_complement(
    stub, data_stub, inference_server
) -> None:
    questions = [question for question, _ in FACTS]
    with open_channel(inference_server.grpc_address, 60) as channel:
        generate = inference_pb2_grpc.InferenceServiceStub(channel).Generate
        greedy = [
            generate(
                inference_pb2.GenerateRequest(
                    model=DEFAULT_BASE_MODEL_NAME,
                    messages=[common_pb2.ChatMessage(role="user", content=question)],
                    sampling=inference_pb2.SamplingParams(max_tokens=12, temperature=0.0),
                )
            ).text
            for question in questions
        ]
    noise = [f"qux{i} zorbl vemmu plixen frodd gumbrel snee oxtiv tarvo {i}" for i in range(len(questions))]
    own = [
        {"prompt": q, "chosen": g, "rejected": n} for q, g, n in zip(questions, greedy, noise, strict=True)
    ]
    swapped = [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in own]

    accuracy = _preference_accuracy(stub, data_stub, own)
    complement = _preference_accuracy(stub, data_stub, swapped)
    assert accuracy["n"] == complement["n"] >= 4  # the same test rows: the split follows lines and seed
    assert accuracy["mean"] >= 0.75
    assert complement["mean"] == pytest.approx(1.0 - accuracy["mean"])
    assert accuracy["low"] < accuracy["mean"] <= accuracy["high"] <= 1.0  # a Wilson interval


def _finish_any(stub: eval_pb2_grpc.EvalServiceStub, run_id: str) -> eval_pb2.EvalRun:
    for _ in stub.WatchRun(common_pb2.WatchRequest(id=run_id), timeout=300):
        pass
    return stub.GetRun(eval_pb2.GetRunRequest(id=run_id))
