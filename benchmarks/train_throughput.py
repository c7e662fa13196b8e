"""Training throughput: the seed course's way against our trainer's recipe in fp32 and in bf16, same model,
same data, one run.

(a) seed: transformers `Trainer`, full fine-tuning, fp32, batch 1, every example padded to --pad-to tokens.
(b) fp32 recipe: `FinetuneRecipe` with the platform's default hyperparameters (LoRA r=16 on all linear
    layers, 8 examples a step packed without padding, use_cache=False), precision fp32.
(c) bf16 recipe: the same in bf16, the trainer's default where the processor computes bf16 natively: on a
    CPU the frozen weights stored in bf16 and LoRA's trainable weights kept in fp32 (their own master
    weights), on a GPU bf16 autocast over fp32 weights (the result's `precision_mode` says which); left out
    (with the reason) where the processor has no native bf16: emulated bf16 is ~22x slower and the trainer
    never picks it there. On a CPU its norms and MLPs are compiled (torch.compile), as the trainer does for
    any run of TORCH_COMPILE_MIN_TOKENS or more (this benchmark's few steps would be below it); compiling
    happens in the untimed warmup step, whose seconds are reported as `warmup_seconds`.
(c') bf16 eager recipe: (c) without torch.compile, what shorter runs get.
(d) on CUDA with bitsandbytes: the QLoRA recipe (4-bit frozen weights, bf16 compute).

The recipes run --rounds times each, in turn, the order reversed each round (fp32, bf16, bf16 eager, then
bf16 eager, bf16, fp32, ...), so that a slow stretch of a shared machine falls on all of them: each is
reported at its median round, and bf16's speedups are the medians of the rounds' ratios (each pair run back
to back). The seed way runs once (its three minutes dwarf the
noise). Each configuration runs in its own process so peak RSS is its own. Reported: real (non-pad) tokens/s, peak
RSS, and model-FLOPs utilisation (MFU) against the matmul peak of the dtype it computes in, measured in this
run (a 2048x2048 by 2048x2048 product, repeated for 3 s), or --peak-flops-fp32/-bf16. The FLOP formula is
written into the result file (FLOP_FORMULA). The recipes get --warmup-steps untimed steps first (the seed
way is timed as the course runs it). Results name the processor (model and flags). --tiny only proves the
script runs.

    .venv/bin/python benchmarks/train_throughput.py
"""

import argparse
import importlib.util
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

from ftcommon.hardware import configure_torch_threads, cpu_has_native_bf16, cpu_report, thread_count  # noqa: E402

DEFAULT_MODEL_DIR = REPO_ROOT / "var" / "base_models" / "smollm2-135m-instruct"
LAMINI_DOCS = REPO_ROOT.parent / "shared" / "datasets" / "lamini_docs" / "lamini_docs.jsonl"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
END_OF_TURN = "<|im_end|>"
FLOP_FORMULA = (
    "Model FLOPs per real (non-pad) token, attention scores and softmax left out, N = all parameters "
    "(tied embeddings once), N_t = trainable parameters. Forward: 2N. Backward: activation gradients 2N "
    "(they must flow through every frozen layer to reach earlier adapters) plus weight gradients 2N_t. "
    "Full fine-tuning (the seed way): N_t = N, 6N per token. LoRA (the recipes): 4N + 2N_t per token. "
    "MFU = model FLOPs / seconds / the measured matmul peak of the dtype the configuration computes in "
    "(fp32 for the seed way and the fp32 recipe, bf16 for the bf16 recipe)."
)
# Configuration -> the dtype its matmuls run in (the peak its MFU is measured against).
COMPUTE_DTYPE = {
    "seed": "fp32",
    "fp32_recipe": "fp32",
    "bf16_recipe": "bf16",
    "bf16_eager_recipe": "bf16",
    "qlora_recipe": "bf16",
}


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


def measure_matmul_peak(
    dtype: torch.dtype, seconds: float = 3.0, size: int = 2048, windows: int = 6
) -> float:
    """The best rate of `windows` back-to-back windows of a square matmul over `seconds`: a peak is what the
    processor can do, and these machines' speed moves between minutes (one 3 s average read 139 GFLOP/s in
    fp32 on the AMD EPYC, where the fp32 recipe then ran 141 GFLOP/s of model FLOPs)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(windows):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / windows:
            torch.matmul(a, b)
            count += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * count / (time.perf_counter() - started))
    return best


def measure_peaks(args: argparse.Namespace, native_bf16: bool) -> dict[str, float]:
    """Each compute dtype's matmul peak (given on the command line, or measured)."""
    peaks = {"fp32": args.peak_flops_fp32 or measure_matmul_peak(torch.float32, args.matmul_seconds)}
    if native_bf16:
        peaks["bf16"] = args.peak_flops_bf16 or measure_matmul_peak(torch.bfloat16, args.matmul_seconds)
    return peaks


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_seed(model_dir: Path, prepared: Path, pad_to: int, max_rows: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from ftcommon import prepared_layout

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pad_id = model.config.pad_token_id or 0
    rows, real_tokens = [], 0
    for record in list(prepared_layout.read_examples(prepared, "train"))[:max_rows]:
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


def run_recipe(
    model_dir: Path,
    prepared: Path,
    steps: int,
    warmup_steps: int,
    precision: str,
    method: str = "lora",
    torch_compile: bool | None = None,
) -> dict[str, float]:
    from ftcommon.specs.train import Hyperparameters
    from services.trainer.recipe import FinetuneRecipe, RecipeConfig

    with tempfile.TemporaryDirectory() as work:
        recipe = FinetuneRecipe(
            RecipeConfig(
                model_dir,
                prepared,
                Path(work),
                Hyperparameters(
                    max_steps=steps,
                    eval_every_steps=10_000,
                    precision=precision,
                    method=method,
                    torch_compile=torch_compile,
                ),
            )
        )
        recipe.setup()
        warmup_started = time.perf_counter()
        for _ in range(warmup_steps):  # kernel selection, allocation and compiling, outside the timing
            recipe.train_step()
            recipe.state.examples_seen += recipe.examples_per_step
        warmup_seconds = time.perf_counter() - warmup_started
        real_tokens, started = 0, time.perf_counter()
        for _ in range(steps):
            real_tokens += recipe.train_step().tokens
            recipe.state.examples_seen += recipe.examples_per_step
        elapsed = time.perf_counter() - started
    parameters = sum(p.numel() for p in recipe.model.parameters())
    trainable = sum(p.numel() for p in recipe.model.parameters() if p.requires_grad)
    return {
        "precision": recipe.precision,
        "precision_mode": recipe.precision_mode,
        "torch_compile": recipe.torch_compile,
        "warmup_seconds": warmup_seconds,
        "seconds": elapsed,
        "real_tokens": real_tokens,
        "padded_tokens": real_tokens,
        "model_flops": (4 * parameters + 2 * trainable) * real_tokens,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The round whose tokens/s is the median (the lower middle one of an even count), with every round's
    tokens/s beside it."""
    rates = [r["real_tokens"] / r["seconds"] for r in rounds]
    middle = sorted(range(len(rounds)), key=rates.__getitem__)[(len(rounds) - 1) // 2]
    return {**rounds[middle], "rounds_real_tokens_per_second": rates}


def median_ratio(numerators: list[dict[str, float]], denominators: list[dict[str, float]]) -> float:
    """The median over rounds of one configuration's tokens/s over another's, round by round."""
    ratios = sorted(
        (a["real_tokens"] / a["seconds"]) / (b["real_tokens"] / b["seconds"])
        for a, b in zip(numerators, denominators, strict=True)
    )
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def round_order(recipes: list[str], rounds: int) -> list[str]:
    """Every recipe once a round, the order reversed each round (A B, B A, A B, ...)."""
    return [config for index in range(rounds) for config in (recipes if index % 2 == 0 else recipes[::-1])]


def child(args: argparse.Namespace) -> None:
    configure_torch_threads(thread_count(args.threads))  # as the trainer's job processes do
    prepared = Path(args.prepared)
    steps = max(1, args.examples // 8)
    if args.config == "seed":
        result = run_seed(Path(args.model_dir), prepared, args.pad_to, args.seed_examples or args.examples)
    elif args.config == "fp32_recipe":
        result = run_recipe(Path(args.model_dir), prepared, steps, args.warmup_steps, "fp32")
    elif args.config == "bf16_recipe":
        from services.trainer.compiled_layers import cpu_compiler_available

        # Compiled as a long job is on a CPU with a C++ compiler; a GPU keeps the trainer's default (compiling
        # not measured there).
        compiled = None if torch.cuda.is_available() or not cpu_compiler_available() else True
        result = run_recipe(
            Path(args.model_dir), prepared, steps, args.warmup_steps, "bf16", torch_compile=compiled
        )
    elif args.config == "bf16_eager_recipe":
        result = run_recipe(
            Path(args.model_dir), prepared, steps, args.warmup_steps, "bf16", torch_compile=False
        )
    elif args.config == "qlora_recipe":
        result = run_recipe(Path(args.model_dir), prepared, steps, args.warmup_steps, "bf16", method="qlora")
    else:
        raise SystemExit(f"unknown configuration {args.config}")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--examples", type=int, default=96, help="training examples each configuration sees")
    parser.add_argument("--pad-to", type=int, default=256, help="the seed way pads every example to this")
    parser.add_argument("--peak-flops-fp32", type=float, default=0.0, help="fp32 peak FLOP/s; 0: measure")
    parser.add_argument("--peak-flops-bf16", type=float, default=0.0, help="bf16 peak FLOP/s; 0: measure")
    parser.add_argument("--threads", type=int, default=0, help="0: every CPU this process may use")
    parser.add_argument("--matmul-seconds", type=float, default=3.0, help="how long each matmul peak runs")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed recipe steps before timing")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each recipe, alternating; median kept")
    parser.add_argument(
        "--seed-examples", type=int, default=0, help="examples the seed way trains on; 0: all"
    )
    parser.add_argument("--tiny", action="store_true", help="8 short examples: proves the script runs")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.examples, args.pad_to, args.matmul_seconds, args.warmup_steps = 8, 32, 0.3, 0
        args.seed_examples, args.rounds = 1, 2
    if args.config:
        child(args)
        return
    native_bf16 = torch.cuda.is_available() or cpu_has_native_bf16()
    configure_torch_threads(thread_count(args.threads))  # the peaks with the threads the children use
    peaks_before = measure_peaks(args, native_bf16)
    recipes = ["fp32_recipe"]
    if native_bf16:
        recipes.append("bf16_recipe")
        if not torch.cuda.is_available():
            recipes.append("bf16_eager_recipe")
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        recipes.append("qlora_recipe")  # 4-bit frozen weights: CUDA and bitsandbytes only
    rounds: dict[str, list[dict[str, float]]] = {config: [] for config in ["seed", *recipes]}
    with tempfile.TemporaryDirectory() as folder:
        prepared = write_prepared(Path(args.model_dir), args.examples, args.pad_to, Path(folder))
        for config in ["seed", *round_order(recipes, max(1, args.rounds))]:
            command = [sys.executable, __file__, "--config", config, "--prepared", str(prepared)]
            command += ["--model-dir", args.model_dir, "--examples", str(args.examples)]
            command += ["--pad-to", str(args.pad_to), "--threads", str(args.threads)]
            command += ["--warmup-steps", str(args.warmup_steps), "--seed-examples", str(args.seed_examples)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rounds[config].append(json.loads(output.strip().splitlines()[-1]))
            print(config, json.dumps(rounds[config][-1]), flush=True)
    # Measured again after the rounds, the higher of the two counting: a peak read while the machine was slow
    # would put MFU above what the processor can do.
    peaks_after = measure_peaks(args, native_bf16)
    peaks = {dtype: max(peak, peaks_after[dtype]) for dtype, peak in peaks_before.items()}
    results = {config: median_round(runs) for config, runs in rounds.items()}
    for config, result in results.items():
        result["real_tokens_per_second"] = result["real_tokens"] / result["seconds"]
        result["mfu"] = result["model_flops"] / result["seconds"] / peaks[COMPUTE_DTYPE[config]]
        result["mfu_against"] = f"{COMPUTE_DTYPE[config]} matmul peak"
    rate = {config: result["real_tokens_per_second"] for config, result in results.items()}
    speedups = {"fp32_recipe_vs_seed": rate["fp32_recipe"] / rate["seed"]}
    if "bf16_recipe" in rate:
        speedups["bf16_recipe_vs_seed"] = rate["bf16_recipe"] / rate["seed"]
        speedups["bf16_recipe_vs_fp32_recipe"] = median_ratio(rounds["bf16_recipe"], rounds["fp32_recipe"])
    if "bf16_eager_recipe" in rate:
        speedups["bf16_eager_recipe_vs_fp32_recipe"] = median_ratio(
            rounds["bf16_eager_recipe"], rounds["fp32_recipe"]
        )
        speedups["bf16_recipe_vs_bf16_eager_recipe"] = median_ratio(
            rounds["bf16_recipe"], rounds["bf16_eager_recipe"]
        )
    report = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": cpu_report(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": thread_count(args.threads),
        "examples": args.examples,
        "seed_examples": args.seed_examples or args.examples,
        "recipe_warmup_steps": args.warmup_steps,
        "recipe_rounds": max(1, args.rounds),
        "rounds_note": (
            "each recipe ran recipe_rounds times, alternating; a recipe's figures are its median round's, and "
            "bf16_recipe_vs_fp32_recipe is the median of the rounds' ratios"
        ),
        "tiny": args.tiny,
        "flop_formula": FLOP_FORMULA,
        "matmul_peak_flops": peaks,
        "matmul_peak_flops_before_and_after": {"before": peaks_before, "after": peaks_after},
        "peaks_measured": {"fp32": not args.peak_flops_fp32, "bf16": not args.peak_flops_bf16},
        "seed_trainer_full_batch1_padded": results["seed"],
        "fp32_recipe_lora_packed": results["fp32_recipe"],
        "bf16_recipe_lora_packed": results.get(
            "bf16_recipe", "left out: this processor has no native bf16 (emulated bf16 is ~22x slower)"
        ),
        "bf16_eager_recipe_lora_packed": results.get(
            "bf16_eager_recipe", "left out: only CPUs with native bf16 compile the bf16 recipe"
        ),
        "qlora_recipe_bf16": results.get("qlora_recipe", "left out: needs CUDA and bitsandbytes"),
        "speedups_real_tokens_per_second": speedups,
    }
    results_file = Path(args.results_dir) / "train_throughput.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
