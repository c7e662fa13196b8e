"""Evaluation throughput, one run, same model, same questions, greedy decoding, same max new tokens:

(a) the seed course's evaluation loop: its `inference()` (transformers `generate`, one question at a time)
    then exact match, example after example;
(b) our EvalService: CreateRun over the same rows, generations through InferenceService with concurrent
    Generate calls that the gateway's engine batches, then metrics and the HTML/JSON report.

Wall time from start to finished report (b) against the loop's wall time (a); the target is 4x on CPU.
All four services run in this process on loopback over a temporary data root. Needs
../shared/datasets/lamini_docs. Writes benchmarks/results/eval_throughput.json.

    .venv/bin/python benchmarks/eval_throughput.py            # 100 examples, 64 new tokens
    .venv/bin/python benchmarks/eval_throughput.py --quick    # 24 examples, 32 new tokens
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The benchmark's services run on loopback in plaintext without a service token.
os.environ.setdefault("FT_INSECURE_LOCAL_DEV", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from finetune.v1 import (  # noqa: E402
    common_pb2,
    data_pb2,
    data_pb2_grpc,
    eval_pb2,
    eval_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon.grpc_client import open_channel  # noqa: E402
from ftcommon.hardware import cpu_report  # noqa: E402
from ftcommon.specs.evaluate import EvalSpec  # noqa: E402
from services.eval.metrics import exact_match  # noqa: E402
from services.trainer.config import DEFAULT_BASE_MODEL_NAME  # noqa: E402

MODEL_DIR = REPO / "var" / "base_models" / DEFAULT_BASE_MODEL_NAME
LAMINI_DOCS = REPO.parent / "shared" / "datasets" / "lamini_docs" / "lamini_docs.jsonl"
RESULTS_DIR = REPO / "benchmarks" / "results"


def load_rows(count: int) -> list[dict[str, str]]:
    """The last rows of lamini_docs with a question and an answer (the seed course evaluates a held-out tail)."""
    rows = [json.loads(line) for line in LAMINI_DOCS.read_text().splitlines() if line.strip()]
    usable = [r for r in rows if str(r.get("question", "")).strip() and str(r.get("answer", "")).strip()]
    return usable[-count:]


def seed_course_loop(rows: list[dict[str, str]], max_tokens: int) -> tuple[float, float]:
    """The course's loop: for each question, `inference()` then exact match. Returns (seconds, exact match)."""
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()

    def inference(question: str) -> str:
        # The course tokenizes the raw text; the chat template is used here so both sides see the same prompt.
        input_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(output[0][input_ids.shape[1] :], skip_special_tokens=True)

    started = time.perf_counter()
    matches = [exact_match(inference(row["question"]), row["answer"]) for row in rows]
    return time.perf_counter() - started, sum(matches) / len(matches)


def platform_run(
    rows: list[dict[str, str]], max_tokens: int, concurrency: int, engine: str
) -> dict[str, float]:
    from services.data.config import DataSettings
    from services.data.server import build_server as build_data
    from services.eval.config import EvalSettings
    from services.eval.server import build_server as build_eval
    from services.inference.config import InferenceSettings
    from services.inference.server import build_server as build_inference
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server as build_trainer

    root = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    trainer = build_trainer(TrainerSettings(data_dir=root, port=0))
    trainer_pb2_grpc.TrainerServiceStub(open_channel(trainer.address)).RegisterBaseModel(
        trainer_pb2.RegisterBaseModelRequest(name=DEFAULT_BASE_MODEL_NAME, path=str(MODEL_DIR)), timeout=300
    )
    data = build_data(DataSettings(data_dir=root, port=0, trainer_address=trainer.address))
    inference = build_inference(
        InferenceSettings(
            data_dir=root,
            port=0,
            http_port=0,
            trainer_address=trainer.address,
            engine=engine,
            require_api_key=False,
            max_batch_size=concurrency,
        )
    )
    evaluation = build_eval(
        EvalSettings(
            data_dir=root,
            port=0,
            inference_address=inference.grpc_address,
            data_address=data.address,
            trainer_address=trainer.address,
            concurrency=concurrency,
            poll_seconds=0.05,
        )
    )
    try:
        source = root / "eval_rows.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        dataset = data_pb2_grpc.DataServiceStub(open_channel(data.address)).RegisterDataset(
            data_pb2.RegisterDatasetRequest(
                options=data_pb2.IngestOptions(name="eval-bench"), source=str(source)
            ),
            timeout=120,
        )
        stub = eval_pb2_grpc.EvalServiceStub(open_channel(evaluation.address))
        started = time.perf_counter()
        spec = EvalSpec(
            models=[DEFAULT_BASE_MODEL_NAME],
            data={"dataset_id": dataset.id},
            metrics=["exact_match"],
            generation={"max_tokens": max_tokens, "temperature": 0.0},
        )
        run = stub.CreateRun(spec.to_request())
        for _ in stub.WatchRun(common_pb2.WatchRequest(id=run.status.id), timeout=3600):
            pass
        seconds = time.perf_counter() - started
        finished = stub.GetRun(eval_pb2.GetRunRequest(id=run.status.id))
        if finished.status.state != common_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"eval run failed: {finished.status.error}")
        report = json.loads(stub.GetReport(eval_pb2.GetRunRequest(id=run.status.id)).report_json)
        evaluated = len(report["examples"])
        return {
            "seconds": seconds,
            "examples": evaluated,
            "exact_match": report["summaries"][DEFAULT_BASE_MODEL_NAME]["exact_match"]["mean"],
        }
    finally:
        evaluation.stop(grace=0)
        inference.stop(grace=0)
        data.stop(grace=0)
        trainer.stop(grace=0)
        shutil.rmtree(root, ignore_errors=True)  # the services' data root: registered models, runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engine", default="transformers", choices=["transformers", "vllm", "auto"])
    parser.add_argument("--quick", action="store_true", help="24 examples, 32 new tokens")
    parser.add_argument(
        "--tiny", action="store_true", help="2 examples, 4 new tokens: proves the script runs"
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    if args.quick:
        args.examples, args.max_tokens = 24, 32
    if args.tiny:
        args.examples, args.max_tokens, args.concurrency = 2, 4, 2
    if not LAMINI_DOCS.exists():
        sys.exit(f"{LAMINI_DOCS} is absent: the benchmark needs the shared lamini_docs data set")
    rows = load_rows(args.examples)
    load_before = os.getloadavg()[0]
    # The loop runs first: vLLM pins threads and memory policy for the whole process once it starts.
    baseline_seconds, baseline_exact_match = seed_course_loop(rows, args.max_tokens)
    ours = platform_run(rows, args.max_tokens, args.concurrency, args.engine)
    result = {
        "examples": len(rows),
        "max_new_tokens": args.max_tokens,
        "engine": args.engine,
        "concurrency": args.concurrency,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_report(),
        "tiny": args.tiny,
        "load_average_at_start": load_before,
        "ours_seconds": round(ours["seconds"], 2),
        "ours_examples_per_second": round(len(rows) / ours["seconds"], 3),
        "ours_exact_match": ours["exact_match"],
        "seed_loop_seconds": round(baseline_seconds, 2),
        "seed_loop_examples_per_second": round(len(rows) / baseline_seconds, 3),
        "seed_loop_exact_match": baseline_exact_match,
        "speedup": round(baseline_seconds / ours["seconds"], 2),
        "target_speedup": 4.0,
        "note": "ours includes the data read, metrics, bootstrap intervals and the HTML/JSON report",
    }
    results = Path(args.results_dir) / "eval_throughput.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
