"""Turns a trained recipe into servable folders: the PEFT adapter, the merged model, metrics and a plot.

The merged folder is what the gateway and the evaluator load, so it carries everything needed to
prompt the model exactly as it was trained: the tokenizer, the prepared version's chat template, and a
generation config that stops at the template's end-of-turn token.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.trainer.adapter_config import name_base_model
from services.trainer.recipe import FinetuneRecipe

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss_curve.png"


@dataclass(frozen=True)
class ExportedModel:
    adapter_dir: Path | None  # None for full fine-tuning
    merged_dir: Path
    trainable_parameters: int


def export(
    recipe: FinetuneRecipe, chat_template: str, end_of_turn: str, output_dir: Path, base_model_name: str
) -> ExportedModel:
    """`base_model_name` is what the adapter's config names as its base (the registry name)."""
    tokenizer = recipe.tokenizer
    tokenizer.chat_template = chat_template
    trainable = sum(p.numel() for p in recipe.trainable)
    model: Any = recipe.model
    adapter_dir = None
    if recipe.hp.method != "full":
        adapter_dir = output_dir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        name_base_model(adapter_dir, base_model_name)
        tokenizer.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    merged_dir = output_dir / "merged"
    save_merged(model, recipe, chat_template, end_of_turn, merged_dir, recipe.state.history)
    return ExportedModel(adapter_dir, merged_dir, trainable)


def save_merged(
    model: Any,
    recipe: FinetuneRecipe,
    chat_template: str,
    end_of_turn: str,
    merged_dir: Path,
    history: list[dict[str, Any]],
) -> None:
    """A merged model as the gateway and the evaluator load it: the base's dtype, the trained chat template,
    generation stopping at its end-of-turn token, the training history and its plot."""
    tokenizer = recipe.tokenizer
    tokenizer.chat_template = chat_template
    model = model.to(device="cpu", dtype=_base_dtype(recipe.config.base_model_dir))
    model.config.use_cache = True  # training turned it off; generation wants it
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = recipe.pad_id
    model.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    write_metrics(history, merged_dir / METRICS_FILE)
    plot_losses(history, merged_dir / LOSS_PLOT_FILE)


def _base_dtype(base_model_dir: Path) -> torch.dtype:
    config = json.loads((base_model_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name)


def write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w") as handle:
        for record in history:
            handle.write(json.dumps(record) + "\n")


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot

    train = [(r["step"], r["loss"]) for r in history if r["event"] == "train"]
    validation = [(r["step"], r["validation_loss"]) for r in history if r["event"] == "validation"]
    figure, axes = pyplot.subplots(figsize=(7, 4))
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss")
    if validation:
        axes.plot(*zip(*validation, strict=True), marker="o", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
