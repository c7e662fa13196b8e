"""SFT only against SFT then DPO at equal compute: does preference tuning buy a better refusal/wrong-refusal
trade-off than more SFT? Same base model, same data, one run.

Data: the shipped sample (samples/platform_qa.jsonl, and samples/platform_in_domain_probes.txt for wrong
refusals), or ../shared/datasets/lamini_docs with --dataset lamini_docs when it is mounted. Answers are held
out by group (paraphrases of one answer stay together), so test questions ask for answers never trained on.
Off-topic training questions come from the platform's refusal generator; the test's off-topic questions are
the evaluator's built-in probes (services/eval/off_topic_probes.py), written independently of the generator,
so a refusal rate cannot come from memorising the generator's templates.

Arms (the platform's recipe in-process, LoRA and the default hyperparameters unless told):
  sft      SFT on the Q&A rows plus refusal rows (the platform's default refusal fraction) for the budget.
  sft+dpo  the same SFT for half the budget, merged; then DPO (method dpo) from the merged model on pairs:
           off-topic prompt (the SFT rows' own): the refusal chosen, the half-SFT model's own answer
           rejected (no pair where that answer already is a refusal); in-domain training prompt: the
           reference answer chosen, the refusal rejected. DPO runs for as many steps as the rest of the
           budget pays for, after paying for generating the rejected answers.
Budget: model FLOPs counted in token passes (one forward of one token = 1): an SFT token costs 3 (forward and
backward), a DPO token 4 (policy forward and backward, reference forward), a generated or prompt token 1.
Passes are counted from the tokens the recipe actually trained on; the SFT-only arm's passes are the budget.
Measured per arm: the passes spent, wall time, token F1 on held-out in-domain questions (bootstrap 95%
interval), refusal rate on off-topic questions and wrong-refusal rate on in-domain questions (held-out test
questions plus the sample's in-domain probes; Wilson 95% intervals), with the evaluator's refusal detector.

    .venv/bin/python benchmarks/dpo_vs_sft.py                # full: about half an hour on 2 shared CPU cores
    .venv/bin/python benchmarks/dpo_vs_sft.py --smoke --output /tmp/dpo_vs_sft.json   # a check that it runs
"""

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Read once, when torch loads: threads that spin at a barrier on cores shared with other work burn each
# other's time slices (a training step measured 14x slower beside a test suite); sleeping ones do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ftcommon import prepared_layout  # noqa: E402
from ftcommon.hardware import configure_torch_threads, cpu_report, thread_count  # noqa: E402
from ftcommon.refusal_detection import RefusalDetector  # noqa: E402
from ftcommon.specs.prepare import DEFAULT_REFUSAL_FRACTION  # noqa: E402
from ftcommon.specs.train import Hyperparameters  # noqa: E402
from services.data.refusals import off_topic_questions, refusal_answer  # noqa: E402
from services.data.tokenization import preference_examples, training_examples  # noqa: E402
from services.eval.metrics import token_f1  # noqa: E402
from services.eval.off_topic_probes import OFF_TOPIC_PROBES  # noqa: E402
from services.eval.statistics import bootstrap_interval, wilson_interval  # noqa: E402
from services.trainer.export import export  # noqa: E402
from services.trainer.recipe import FinetuneRecipe, RecipeConfig  # noqa: E402

DEFAULT_MODEL_DIR = REPO_ROOT / "var" / "base_models" / "smollm2-135m-instruct"
SAMPLE = REPO_ROOT / "samples" / "platform_qa.jsonl"
SAMPLE_PROBES = REPO_ROOT / "samples" / "platform_in_domain_probes.txt"
LAMINI_DOCS = REPO_ROOT.parent / "shared" / "datasets" / "lamini_docs" / "lamini_docs.jsonl"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
END_OF_TURN = "<|im_end|>"
SFT_PASSES_PER_TOKEN = 3
DPO_PASSES_PER_TOKEN = 4
GENERATION_PASSES_PER_TOKEN = 1


class Silent:
    def on_train_step(self, metrics: dict[str, float]) -> None:
        pass

    def on_validation(self, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, folder: Path) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def load_data(
    name: str, test_fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) question/answer pairs; an answer's paraphrased questions stay on one side."""
    path = SAMPLE if name == "sample" else LAMINI_DOCS
    groups: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        question, answer = row.get("question", "").strip(), row.get("answer", "").strip()
        if question and answer:
            groups.setdefault(answer, []).append((question, answer))
    answers = sorted(groups)
    random.Random(seed).shuffle(answers)
    held_out = max(1, round(test_fraction * len(answers)))
    test = [pair for answer in answers[:held_out] for pair in groups[answer]]
    train = [pair for answer in answers[held_out:] for pair in groups[answer]]
    return train, test


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_sft_version(tokenizer: Any, rows: list[tuple[str, str]], folder: Path) -> int:
    """A prepared version of the rows (all in train); returns its tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    conversations = [chat(q, a) for q, a in rows]
    encoded = training_examples(tokenizer, conversations, END_OF_TURN, tokenizer.chat_template)
    with open(folder / prepared_layout.split_file("train"), "w") as handle:
        for line, (messages, (ids, labels)) in enumerate(zip(conversations, encoded, strict=True), 1):
            body = prepared_layout.example_body(ids, labels, messages)
            handle.write(prepared_layout.example_line(body, line, is_refusal=False))
    prepared_layout.write_chat_template(folder, tokenizer.chat_template)
    prepared_layout.write_manifest(folder, END_OF_TURN, {"template": "chat"})
    return sum(len(ids) for ids, _ in encoded)


def write_pairs_version(tokenizer: Any, pairs: list[tuple[str, str, str]], folder: Path) -> int:
    """A prepared version of preference pairs (all in train); returns its tokens (both sides)."""
    folder.mkdir(parents=True, exist_ok=True)
    conversations = [chat(p, c) for p, c, _ in pairs]
    encoded = preference_examples(
        tokenizer, conversations, [r for _, _, r in pairs], END_OF_TURN, tokenizer.chat_template
    )
    with open(folder / prepared_layout.split_file("train"), "w") as handle:
        for line, (messages, (_, _, rejected), (chosen_side, rejected_side)) in enumerate(
            zip(conversations, pairs, encoded, strict=True), 1
        ):
            answer = prepared_layout.RejectedAnswer(*rejected_side, rejected)
            body = prepared_layout.example_body(*chosen_side, messages, answer)
            handle.write(prepared_layout.example_line(body, line, is_refusal=False))
    prepared_layout.write_chat_template(folder, tokenizer.chat_template)
    prepared_layout.write_manifest(folder, END_OF_TURN, {"template": "chat"}, preference_pairs=True)
    return sum(len(c[0]) + len(r[0]) for c, r in encoded)


def train(model_dir: Path, prepared: Path, work: Path, settings: dict[str, Any]) -> tuple[Path, float, int]:
    """Trains, merges, and returns (the merged model's folder, seconds, tokens trained on)."""
    started = time.perf_counter()
    hyperparameters = Hyperparameters.model_validate({"checkpoint_every_steps": 10_000, **settings})
    recipe = FinetuneRecipe(RecipeConfig(model_dir, prepared, work, hyperparameters))
    recipe.setup()
    state = recipe.train(Silent())
    exported = export(recipe, recipe.tokenizer.chat_template, END_OF_TURN, work / "export", "base")
    return exported.merged_dir, time.perf_counter() - started, state.tokens_seen


def generate(
    model_dir: Path, questions: list[str], max_new_tokens: int, batch: int = 32
) -> tuple[list[str], int]:
    """Greedy answers and the token passes they cost (prompt and generated tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers, passes = [], 0
    for start in range(0, len(questions), batch):
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions[start : start + batch]
        ]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = output[:, inputs["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(generated, skip_special_tokens=True)
        passes += int(inputs["attention_mask"].sum()) + int((generated != tokenizer.pad_token_id).sum())
    return [a.strip() for a in answers], passes * GENERATION_PASSES_PER_TOKEN


def evaluate(
    model_dir: Path,
    test: list[tuple[str, str]],
    probes: list[str],
    off_topic: list[str],
    refusal: str,
    max_new_tokens: int,
) -> dict[str, Any]:
    detector = RefusalDetector(refusal)
    answers, _ = generate(model_dir, [q for q, _ in test] + probes + off_topic, max_new_tokens)
    test_answers = answers[: len(test)]
    in_domain = answers[: len(test) + len(probes)]
    off_topic_answers = answers[len(test) + len(probes) :]
    f1 = [token_f1(answer, reference) for answer, (_, reference) in zip(test_answers, test, strict=True)]
    refused = sum(detector.is_refusal(a) for a in off_topic_answers)
    wrongly_refused = sum(detector.is_refusal(a) for a in in_domain)
    return {
        "token_f1": asdict(bootstrap_interval(f1, seed=0)),
        "refusal_rate": asdict(wilson_interval(refused, len(off_topic_answers))),
        "wrong_refusal_rate": asdict(wilson_interval(wrongly_refused, len(in_domain))),
    }


def preference_pairs(
    off_topic: list[str],
    own_answers: list[str],
    in_domain: list[tuple[str, str]],
    refusal: str,
    detector: RefusalDetector,
) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected): the refusal over the model's own answer to an off-topic prompt, the
    reference answer over the refusal for an in-domain one. An own answer the evaluator's detector already
    counts as a refusal makes no pair: rejecting it would teach the model to stop refusing."""
    pairs = [
        (question, refusal, answer)
        for question, answer in zip(off_topic, own_answers, strict=True)
        if answer and not detector.is_refusal(answer)
    ]
    return pairs + [(question, answer, refusal) for question, answer in in_domain]


def mean_step_tokens(total_tokens: int, rows: int, per_step: int) -> float:
    return total_tokens / rows * per_step


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--dataset", choices=["sample", "lamini_docs"], default="sample")
    parser.add_argument("--sft-steps", type=int, default=150, help="the budget, as SFT-only optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--dpo-sft-weight", type=float, default=0.0)
    parser.add_argument("--dpo-learning-rate", type=float, default=2e-4)
    parser.add_argument("--off-topic-train", type=int, default=60, help="off-topic prompts in the DPO pairs")
    parser.add_argument("--in-domain-pairs", type=int, default=60, help="in-domain prompts in the DPO pairs")
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument(
        "--off-topic-test", type=int, default=60, help="the evaluator's built-in off-topic probes asked"
    )
    parser.add_argument("--probes", type=int, default=80, help="in-domain probe questions (wrong refusals)")
    parser.add_argument("--test-limit", type=int, default=None, help="held-out in-domain questions asked")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--smoke", action="store_true", help="a few steps and questions: checks that it runs")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.sft_steps, args.batch_size, args.off_topic_train, args.in_domain_pairs = 4, 4, 4, 4
        args.off_topic_test, args.probes, args.max_new_tokens, args.test_limit = 4, 4, 16, 4
    if args.dataset == "lamini_docs" and not LAMINI_DOCS.exists():
        parser.error(f"{LAMINI_DOCS} is absent")
    configure_torch_threads(thread_count(0))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    domain = "the fine-tuning platform" if args.dataset == "sample" else "Lamini"
    refusal = refusal_answer(domain)
    train_rows, test_rows = load_data(args.dataset, args.test_fraction, args.seed)
    test_rows = test_rows[: args.test_limit]
    probes = SAMPLE_PROBES.read_text().splitlines()[: args.probes] if args.dataset == "sample" else []
    trained_off_topic = off_topic_questions(round(DEFAULT_REFUSAL_FRACTION * len(train_rows)), args.seed)
    test_off_topic = list(OFF_TOPIC_PROBES[: args.off_topic_test])
    detector = RefusalDetector(refusal)
    sft_rows = train_rows + [(q, refusal) for q in trained_off_topic]
    common = {"batch_size": args.batch_size, "seed": args.seed}
    results: dict[str, Any] = {
        "dataset": args.dataset,
        "cpu": cpu_report(),
        "command": " ".join(["benchmarks/dpo_vs_sft.py", *sys.argv[1:]]),
        "settings": vars(args),
        "questions": {
            "test": len(test_rows),
            "in_domain_probes": len(probes),
            "off_topic": len(test_off_topic),
        },
    }
    output = args.output or RESULTS_DIR / (
        "dpo_vs_sft.json" if args.dataset == "sample" else f"dpo_vs_sft_{args.dataset}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_sft_version(tokenizer, sft_rows, root / "sft")
        log(f"sft: {args.sft_steps} steps on {len(sft_rows)} rows")
        sft_only, sft_seconds, sft_trained = train(
            args.model_dir, root / "sft", root / "sft-only", {**common, "max_steps": args.sft_steps}
        )
        budget = SFT_PASSES_PER_TOKEN * sft_trained
        results["sft"] = {"passes": budget, "seconds": sft_seconds, "sft_steps": args.sft_steps}
        log(f"sft trained in {sft_seconds:.0f}s; evaluating")
        results["sft"] |= evaluate(sft_only, test_rows, probes, test_off_topic, refusal, args.max_new_tokens)
        output.write_text(json.dumps(results, indent=1, default=str))  # a run cut short keeps this arm

        half = max(1, args.sft_steps // 2)
        log(f"sft+dpo: sft {half} steps")
        first_stage, first_seconds, first_trained = train(
            args.model_dir, root / "sft", root / "sft-half", {**common, "max_steps": half}
        )
        spent = SFT_PASSES_PER_TOKEN * first_trained
        started = time.perf_counter()
        pair_prompts = trained_off_topic[: args.off_topic_train]
        own_answers, generation_passes = generate(first_stage, pair_prompts, args.max_new_tokens)
        generation_seconds = time.perf_counter() - started
        in_domain = random.Random(args.seed).sample(train_rows, min(args.in_domain_pairs, len(train_rows)))
        pairs = preference_pairs(pair_prompts, own_answers, in_domain, refusal, detector)
        pair_tokens = write_pairs_version(tokenizer, pairs, root / "pairs")
        remaining = budget - spent - generation_passes
        dpo_step_passes = DPO_PASSES_PER_TOKEN * mean_step_tokens(pair_tokens, len(pairs), args.batch_size)
        # The smoke's budget pays for less than one step; it runs one to check that DPO runs.
        dpo_steps = max(1, math.floor(remaining / dpo_step_passes))
        log(f"sft+dpo: {len(pairs)} pairs, dpo {dpo_steps} steps")
        dpo_settings = {
            **common,
            "method": "dpo",
            "max_steps": dpo_steps,
            "learning_rate": args.dpo_learning_rate,
            "dpo_beta": args.dpo_beta,
            "dpo_sft_weight": args.dpo_sft_weight,
        }
        tuned, dpo_seconds, dpo_trained = train(first_stage, root / "pairs", root / "dpo", dpo_settings)
        results["sft+dpo"] = {
            "passes": spent + generation_passes + DPO_PASSES_PER_TOKEN * dpo_trained,
            "passes_by_stage": {
                "sft": spent,
                "generation": generation_passes,
                "dpo": DPO_PASSES_PER_TOKEN * dpo_trained,
            },
            "seconds": first_seconds + generation_seconds + dpo_seconds,
            "sft_steps": half,
            "dpo_steps": dpo_steps,
            "pairs": {"off_topic": len(pairs) - len(in_domain), "in_domain": len(in_domain)},
        }
        log("sft+dpo trained; evaluating")
        results["sft+dpo"] |= evaluate(tuned, test_rows, probes, test_off_topic, refusal, args.max_new_tokens)

    output.write_text(json.dumps(results, indent=1, default=str))
    for arm in ("sft", "sft+dpo"):
        measured = results[arm]
        print(
            f"{arm:8s} passes {measured['passes']:.3g}  {measured['seconds']:.0f}s  "
            f"F1 {measured['token_f1']['mean']:.3f}  refusal {measured['refusal_rate']['mean']:.2f}  "
            f"wrong refusal {measured['wrong_refusal_rate']['mean']:.2f}"
        )
    print(f"result: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
