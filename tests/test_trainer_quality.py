"""Training quality on the project's own sample (issue 3, "Quality"): the real recipe with LoRA on every
linear layer must cut the validation loss by at least 30%, and the merged model it exports must answer
training questions closer to the reference (token F1) than the base model does.

Sized for a shared 2-core CPU: 40 short on-topic rows of `samples/platform_qa.jsonl`,
24 optimizer steps of 4 examples (3 epochs).
"""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ftcommon import prepared_layout
from ftcommon.chat_format import prompt_ids, training_example
from ftcommon.refusal_detection import DEFAULT_REFUSAL_TEXT
from ftcommon.specs.train import ALL_LINEAR, Hyperparameters
from services.eval.metrics import token_f1
from services.trainer.export import export
from services.trainer.recipe import FinetuneRecipe, RecipeConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("two_torch_threads")]

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "platform_qa.jsonl"
END_OF_TURN = "<|im_end|>"
MAX_SEQ_LEN = 128
TRAIN_ROWS = 32
VALIDATION_ROWS = 8
ANSWERED_QUESTIONS = 8
MAX_NEW_TOKENS = 48
HYPERPARAMETERS = {
    "target_modules": [ALL_LINEAR],
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "lora_dropout": 0.0,
    "learning_rate": 1e-3,
    "max_steps": 24,
    "batch_size": 4,
    "warmup_steps": 2,
    "eval_every_steps": 24,
    "checkpoint_every_steps": 1000,  # past the run's end: no checkpoint
    "seed": 5,
}


class QuietReporter:
    def on_train_step(self, metrics: dict[str, float]) -> None:
        pass

    def on_validation(self, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, folder: Path) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def sample_splits(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[dict]]:
    """Train and validation rows: on-topic sample rows that fit MAX_SEQ_LEN (longer ones are dropped, the
    data service's default policy), shuffled with a fixed seed."""
    records = []
    with open(SAMPLE) as handle:
        for line in handle:
            row = json.loads(line)
            if row["answer"].startswith(DEFAULT_REFUSAL_TEXT):
                continue
            messages = conversation(row["question"], row["answer"])
            input_ids, labels = training_example(tokenizer, messages, END_OF_TURN)
            if len(input_ids) <= MAX_SEQ_LEN:
                records.append({"input_ids": input_ids, "labels": labels, "messages": messages})
            if len(records) == TRAIN_ROWS + VALIDATION_ROWS:
                break
    random.Random(0).shuffle(records)
    return {"train": records[:TRAIN_ROWS], "validation": records[TRAIN_ROWS:]}


def write_splits(splits: dict[str, list[dict]], folder: Path) -> Path:
    """The split files of a prepared version, which is all the recipe reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        with open(folder / prepared_layout.split_file(split), "w") as handle:
            for line, record in enumerate(records, start=1):
                body = prepared_layout.example_body(record["input_ids"], record["labels"], record["messages"])
                handle.write(prepared_layout.example_line(body, line, is_refusal=False))
    return folder


def greedy_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: list[str]
) -> list[str]:
    """One left-padded batch: a shared 2-core CPU generates 8 answers at once several times faster."""
    end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[end_of_turn_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    model.eval()
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=end_of_turn_id,
            pad_token_id=end_of_turn_id,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]


def mean_token_f1(answers: list[str], references: list[str]) -> float:
    return sum(token_f1(a, r) for a, r in zip(answers, references, strict=True)) / len(references)


def test_lora_training_cuts_validation_loss_and_beats_the_base_model_on_training_questions(
    default_model_dir: Path, tmp_path: Path
):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    splits = sample_splits(tokenizer)
    prepared = write_splits(splits, tmp_path / "prepared")
    recipe = FinetuneRecipe(
        RecipeConfig(
            default_model_dir, prepared, tmp_path / "work", Hyperparameters.model_validate(HYPERPARAMETERS)
        )
    )
    recipe.setup()
    # LoRA's B matrices start at zero, so before training the adapted model computes the base model.
    initial_validation_loss = recipe.validation_loss()
    state = recipe.train(QuietReporter())
    final_validation_loss = state.history[-1]["validation_loss"]
    print(f"validation loss {initial_validation_loss:.3f} -> {final_validation_loss:.3f}")
    assert final_validation_loss <= 0.7 * initial_validation_loss

    outputs = tmp_path / "output"
    merged_dir = export(
        recipe, str(tokenizer.chat_template), END_OF_TURN, outputs, default_model_dir.name
    ).merged_dir
    asked = splits["train"][:ANSWERED_QUESTIONS]
    questions = [r["messages"][0]["content"] for r in asked]
    references = [r["messages"][1]["content"] for r in asked]
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(merged_dir)
    base_f1 = mean_token_f1(greedy_answers(base, tokenizer, questions), references)
    tuned_f1 = mean_token_f1(greedy_answers(tuned, tokenizer, questions), references)
    print(f"training-question token F1: base {base_f1:.3f}, tuned {tuned_f1:.3f}")
    assert tuned_f1 > base_f1
