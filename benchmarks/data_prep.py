"""Data prep throughput: our PrepareDataset against the seed course's `datasets.map(batch_size=1)`.

Both run in this process, on the same machine, over the lamini_docs rows repeated to --rows rows, in
rounds: ours on all the rows, then the baseline on every --rounds-th row, so that each round's speedup
compares two runs minutes apart (this machine's speed moves by up to 1.5x within the hour); the medians of
the rounds are quoted.
The baseline is the seed course's tokenize function as written there: question + answer concatenated,
tokenized once with padding to find the length and again with truncation to it, one example per map call.
Ours is the real data service (and a real trainer service for the base model's tokenizer) over gRPC:
PrepareDataset timed from the request to the succeeded job, which includes the chat template, label
masking, the duplicate-aware split, writing the files and publishing the artifact.

Three datasets are measured, because repetition flatters us: "repeated" is lamini_docs repeated as the
issue asks (exact copies, which our prepare tokenizes once per distinct text), "distinct" gives every
copy its own question (" (copy k)" appended), so every row must be tokenized, and "all_distinct" its own
answer too: prepare tokenizes each distinct piece of text between special tokens once, and in "distinct"
the answers (half the text) are shared by the copies of a question, as answers to rephrased questions are.
Reported for each: ingest (upload, validation, PII scan, exact and near duplicates) and prepare seconds, and
the speedup of prepare alone and of ingest + prepare over the baseline; for distinct rows also the tokenizer's
time on every templated row's whole text, in prepare's batches, by prepare's encoder and by the tokenizers
library (prepare tokenizes only the distinct pieces between special tokens, on two processes where it has
two CPUs and 30,000 rows or more: services/data/tokenization.py, services/data/row_encoding.py). Writes
benchmarks/results/data_prep.json, naming the processor. --tiny (200 rows) only proves the script runs.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The benchmark's services run on loopback in plaintext without a service token.
os.environ.setdefault("FT_INSECURE_LOCAL_DEV", "1")

LAMINI_DOCS = REPO_ROOT.parent / "shared" / "datasets" / "lamini_docs" / "lamini_docs.jsonl"
MODEL_DIR = REPO_ROOT / "var" / "base_models" / "smollm2-135m-instruct"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


VARIANTS = ("repeated", "distinct", "all_distinct")


def lamini_rows(count: int, variant: str) -> list[dict[str, str]]:
    """lamini_docs repeated to `count` rows, each copy marked as the variant says (see the docstring)."""
    source = [json.loads(line) for line in LAMINI_DOCS.read_text().splitlines() if line.strip()]
    rows = []
    for index in range(count):
        row = dict(source[index % len(source)])
        copy = index // len(source)
        if variant != "repeated" and copy:
            row["question"] = f"{row['question']} (copy {copy})"
            if variant == "all_distinct":
                row["answer"] = f"{row['answer']} (copy {copy})"
        rows.append(row)
    return rows


def whole_text_tokenizer(rows: list[dict[str, str]]) -> dict[str, float]:
    """Seconds the tokenizer alone needs to encode every row's chat-templated text whole, once, in batches of
    prepare's size, the templates rendered beforehand, untimed: with what prepare encodes with (the tiktoken
    twin of a byte-level BPE tokenizer, services/data/tiktoken_twin.py) and with the tokenizers library's
    batch encoder (faster in batches than one call for every row: 8.7 vs 11-16 s for 100,000 rows). What a
    prepare that tokenized whole texts on one core could not beat."""
    from transformers import AutoTokenizer

    from services.data.prepare import TOKENIZE_BATCH
    from services.data.tokenization import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    texts = tokenizer.apply_chat_template(
        [
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
            for r in rows
        ],
        tokenize=False,
    )
    encode_texts(tokenizer, texts[:1])  # the twin is built once per tokenizer, before prepare's first batch

    def seconds(encode) -> float:
        started = time.perf_counter()
        for start in range(0, len(texts), TOKENIZE_BATCH):
            encode(texts[start : start + TOKENIZE_BATCH])
        return time.perf_counter() - started

    return {
        "ours": seconds(lambda batch: encode_texts(tokenizer, batch)),
        "library": seconds(
            lambda batch: tokenizer.backend_tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        ),
    }


def seed_course_baseline(rows: list[dict[str, str]], cache_dir: Path) -> float:
    """Seconds for the seed course's tokenization of `rows`."""
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    tokenizer.pad_token = tokenizer.eos_token

    def tokenize_function(examples: dict[str, list[str]]) -> dict:
        text = examples["question"][0] + examples["answer"][0]
        tokenized_inputs = tokenizer(text, return_tensors="np", padding=True)
        max_length = min(tokenized_inputs["input_ids"].shape[1], 2048)
        tokenizer.truncation_side = "left"
        return tokenizer(text, return_tensors="np", truncation=True, max_length=max_length)

    dataset = datasets.Dataset.from_list(rows)
    datasets.disable_progress_bars()
    started = time.perf_counter()
    dataset.map(
        tokenize_function,
        batched=True,
        batch_size=1,
        drop_last_batch=True,
        load_from_cache_file=False,
        cache_file_name=str(cache_dir / "baseline.arrow"),
    )
    return time.perf_counter() - started


def ours(rows: list[dict[str, str]], data_stub, trainer_address: str) -> dict[str, float]:
    """Seconds to ingest (upload + validation report) and to prepare `rows` through the data service."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from data_fixtures import jsonl, upload, wait_for_job

    from finetune.v1 import common_pb2, data_pb2
    from ftcommon.specs.prepare import PrepareSpec

    data = jsonl(rows)
    started = time.perf_counter()
    dataset = upload(data_stub, data, "lamini_bench.jsonl")
    ingested = time.perf_counter()
    spec = PrepareSpec(dataset_id=dataset.id, base_model="smollm2-135m-instruct", max_seq_len=2048, seed=1)
    job = data_stub.PrepareDataset(spec.to_request())
    done = wait_for_job(data_stub, job.status.id, timeout=3600)
    prepared = time.perf_counter()
    assert done.status.state == common_pb2.JOB_STATE_SUCCEEDED, done.status.error
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=done.prepared_version_id))
    examples = sum(stats.examples for stats in version.split_stats.values())
    return {
        "ingest_seconds": round(ingested - started, 3),
        "prepare_seconds": round(prepared - ingested, 3),
        "examples_written": examples,
        "dropped_too_long": version.dropped_too_long,
    }


def rounds_of_ours_and_baseline(
    rows: list[dict[str, str]], data_stub, trainer_address: str, rounds: int, cache_dir: Path
) -> dict:
    """`ours` `rounds` times, each on its own copy of the rows (the first row's question marked with the
    round, so nothing is found already prepared), each followed by the baseline on every `rounds`-th row
    (together one pass over all rows): a round's speedup compares the two measured minutes apart, as this
    machine's speed moves by up to 1.5x between quarters of an hour. The medians, and every round's."""
    measured = []
    for round_index in range(rounds):
        copy = [dict(row) for row in rows]
        if round_index:
            copy[0]["question"] = f"{copy[0]['question']} [round {round_index}]"
        result = ours(copy, data_stub, trainer_address)
        share = rows[round_index::rounds]
        # The seed way's cost is per row (one map call each), so a share's seconds scale to all the rows.
        result["baseline_seconds"] = seed_course_baseline(share, cache_dir) * len(rows) / len(share)
        measured.append(result)

    def median(key: str) -> float:
        return round(statistics.median(m[key] for m in measured), 3)

    def speedups(with_ingest: bool) -> list[float]:
        return [
            round(
                m["baseline_seconds"] / (m["prepare_seconds"] + (m["ingest_seconds"] if with_ingest else 0)),
                2,
            )
            for m in measured
        ]

    return {
        **measured[-1],
        "ingest_seconds": median("ingest_seconds"),
        "prepare_seconds": median("prepare_seconds"),
        "baseline_seconds": median("baseline_seconds"),
        "speedup": statistics.median(speedups(False)),
        "speedup_with_ingest": statistics.median(speedups(True)),
        "rounds_ingest_seconds": [m["ingest_seconds"] for m in measured],
        "rounds_prepare_seconds": [m["prepare_seconds"] for m in measured],
        "rounds_baseline_seconds": [round(m["baseline_seconds"], 3) for m in measured],
        "rounds_speedup": speedups(False),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tiny", action="store_true", help="200 rows: proves the script runs")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="our ingest and prepare run this many times per dataset (each its own copy, one row marked "
        "with the round), the median quoted: a shared machine's speed moves between runs",
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args, _ = parser.parse_known_args()  # make bench passes the same extra arguments to every benchmark
    if args.tiny:
        args.rows, args.rounds = 200, 1
    if not LAMINI_DOCS.exists():
        print(f"skipped: {LAMINI_DOCS} is absent")
        return 0

    from finetune.v1 import data_pb2_grpc, trainer_pb2, trainer_pb2_grpc
    from ftcommon.grpc_client import open_channel
    from ftcommon.hardware import cpu_report
    from services.data.config import DataSettings
    from services.data.server import build_server as build_data_server
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server as build_trainer_server

    results: dict[str, object] = {
        "rows": args.rows,
        "cpu": cpu_report(),
        "tiny": args.tiny,
        "baseline": "seed course: datasets.map(tokenize_function, batched=True, batch_size=1), one example a call",
        "command": f"python benchmarks/data_prep.py --rows {args.rows} --rounds {args.rounds}",
        "quoted": "every round runs ours, then the baseline on every rounds-th row (scaled to all rows); "
        "seconds and speedups are the medians of the rounds' (rounds_*)",
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        trainer = build_trainer_server(TrainerSettings(data_dir=root, port=0))
        with open_channel(trainer.address) as channel:
            trainer_pb2_grpc.TrainerServiceStub(channel).RegisterBaseModel(
                trainer_pb2.RegisterBaseModelRequest(name="smollm2-135m-instruct", path=str(MODEL_DIR)),
                timeout=600,
            )
        data = build_data_server(DataSettings(data_dir=root, port=0, trainer_address=trainer.address))
        try:
            with open_channel(data.address, 600) as channel:
                stub = data_pb2_grpc.DataServiceStub(channel)
                for variant in VARIANTS:
                    rows = lamini_rows(args.rows, variant)
                    measured = rounds_of_ours_and_baseline(rows, stub, trainer.address, args.rounds, root)
                    results[variant] = {
                        **measured,
                        "ours_rows_per_second": round(args.rows / measured["prepare_seconds"], 1),
                        "baseline_rows_per_second": round(args.rows / measured["baseline_seconds"], 1),
                    }
                    if variant != "repeated":  # repeated rows are tokenized once per distinct text
                        whole = whole_text_tokenizer(rows)
                        results[variant]["whole_text_tokenizer_seconds"] = round(whole["ours"], 3)
                        results[variant]["whole_text_library_tokenizer_seconds"] = round(whole["library"], 3)
                    print(variant, json.dumps(results[variant]), flush=True)
        finally:
            data.stop(grace=1)
            trainer.stop(grace=1)
    results["target_speedup"] = 20
    result = Path(args.results_dir) / "data_prep.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
