"""Training throughput: the seed course's way against our trainer's defaults, same model, same data, one run.

(a) seed: transformers `Trainer`, full fine-tuning, batch 1, every example padded to --pad-to tokens.
(b) ours: `FinetuneRecipe` with the platform's default hyperparameters (LoRA r=16 on all linear layers,
    8 examples a step packed without padding, use_cache=False, fp32 on CPU).

Each configuration runs in its own process so peak RSS is its own. Reported: real (non-pad) tokens/s,
peak RSS, and model-FLOPs utilisation against --peak-flops (default: a fp32 matmul peak measured in this
run). Model FLOPs per real token: 6N for full fine-tuning, 4N for LoRA (forward 2N plus the activation
gradients 2N; frozen weights get no weight gradients); attention FLOPs are left out of both.

    .venv/bin/python benchmarks/train_throughput.py --threads 2
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_MODEL_DIR = REPO_ROOT / "var" / "base_models" / "smollm2-135m-instruct"
LAMINI_DOCS = REPO_ROOT.parent / "shared" / "datasets" / "lamini_docs" / "lamini_docs.jsonl"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "train_throughput.json"
END_OF_TURN = "<|im_end|>"


def conversations(count: int) -> list[list[dict[str, str]]]:
    """Lamini docs Q&A when the shared data sets are mounted, else the trainer tests' facts."""
    rows: list[tuple[str, str]] = []
    if LAMINI_DOCS.exists():
        for line in LAMINI_DOCS.read_text().splitlines():
            record = json.loads(line)
            if record.get("question", "").strip() and record.get("answer", "").strip():
                rows.append((record["question"], record["answer"]))
    else:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from trainer_support import FACTS

        rows = list(FACTS)
    rows = (rows * (count // len(rows) + 1))[:count]
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in rows]


def write_prepared(model_dir: Path, count: int, max_len: int, folder: Path) -> Path:
    from transformers import AutoTokenizer

    from ftcommon import prepared_layout
    from ftcommon.chat_format import training_example

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The split file as the data service writes it (the recipe reads nothing else).
    with open(folder / prepared_layout.split_file("train"), "w") as handle:
        for line, messages in enumerate(conversations(count), start=1):
            input_ids, labels = training_example(tokenizer, messages, END_OF_TURN)
            body = prepared_layout.example_body(input_ids[:max_len], labels[:max_len], messages)
            handle.write(prepared_layout.example_line(body, line, is_refusal=False))
    return folder


def measure_matmul_peak(seconds: float = 3.0, size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_seed(model_dir: Path, prepared: Path, pad_to: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from ftcommon import prepared_layout

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pad_id = model.config.pad_token_id or 0
    rows, real_tokens = [], 0
    for record in prepared_layout.read_examples(prepared, "train"):
        ids = record["input_ids"][:pad_to]
        real_tokens += len(ids)
        padding = pad_to - len(ids)
        rows.append(
            {
                "input_ids": torch.tensor(ids + [pad_id] * padding),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),
                "labels": torch.tensor(record["labels"][:pad_to] + [-100] * padding),
            }
        )
    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(
            output_dir=output,
            per_device_train_batch_size=1,
            max_steps=len(rows),
            learning_rate=1e-5,
            save_strategy="no",
            report_to=[],
            logging_steps=10_000,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model, args=arguments, train_dataset=rows, data_collator=default_data_collator
        )
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "seconds": elapsed,
        "real_tokens": real_tokens,
        "padded_tokens": pad_to * len(rows),
        "model_flops": 6 * parameters * real_tokens,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def run_ours(model_dir: Path, prepared: Path, steps: int) -> dict[str, float]:
    from ftcommon.specs.train import Hyperparameters
    from services.trainer.recipe import FinetuneRecipe, RecipeConfig

    with tempfile.TemporaryDirectory() as work:
        recipe = FinetuneRecipe(
            RecipeConfig(
                model_dir, prepared, Path(work), Hyperparameters(max_steps=steps, eval_every_steps=10_000)
            )
        )
        recipe.setup()
        real_tokens, started = 0, time.perf_counter()
        for _ in range(steps):
            real_tokens += recipe.train_step().tokens
            recipe.state.examples_seen += recipe.examples_per_step
        elapsed = time.perf_counter() - started
    parameters = sum(p.numel() for p in recipe.model.parameters() if not p.requires_grad)
    return {
        "seconds": elapsed,
        "real_tokens": real_tokens,
        "padded_tokens": real_tokens,
        "model_flops": 4 * parameters * real_tokens,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def child(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    prepared = Path(args.prepared)
    if args.config == "seed":
        result = run_seed(Path(args.model_dir), prepared, args.pad_to)
    elif args.config == "ours":
        result = run_ours(Path(args.model_dir), prepared, max(1, args.examples // 8))
    else:
        result = {"flops_per_second": measure_matmul_peak()}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--examples", type=int, default=96, help="training examples each configuration sees")
    parser.add_argument("--pad-to", type=int, default=256, help="the seed way pads every example to this")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="the machine's peak FLOP/s; 0: measure")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--config", choices=["seed", "ours", "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:
        child(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        prepared = write_prepared(Path(args.model_dir), args.examples, args.pad_to, Path(folder))
        results = {}
        for config in ("matmul", "seed", "ours"):
            command = [sys.executable, __file__, "--config", config, "--prepared", str(prepared)]
            command += [
                "--model-dir",
                args.model_dir,
                "--examples",
                str(args.examples),
                "--pad-to",
                str(args.pad_to),
            ]
            command += ["--threads", str(args.threads)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[config] = json.loads(output.strip().splitlines()[-1])
    measured_peak = results.pop("matmul")["flops_per_second"]
    peak = args.peak_flops or measured_peak
    for result in results.values():
        result["real_tokens_per_second"] = result["real_tokens"] / result["seconds"]
        result["mfu"] = result["model_flops"] / result["seconds"] / peak
    report = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": args.threads or torch.get_num_threads(),
        "examples": args.examples,
        "measured_matmul_peak_flops": measured_peak,
        "peak_flops_used": peak,
        "seed_trainer_full_batch1_padded": results["seed"],
        "ours_lora_packed_defaults": results["ours"],
        "speedup_real_tokens_per_second": results["ours"]["real_tokens_per_second"]
        / results["seed"]["real_tokens_per_second"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
