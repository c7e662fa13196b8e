"""Servable models of a job's latest intermediate checkpoints (OpenAI's `fine_tuned_model_checkpoint`).

A checkpoint holds trainable weights and optimizer state, which no engine loads. At the end of a job, before
the job's own model is merged (merging changes the model in place), each kept checkpoint's weights go into a
copy of the model, which is merged and saved the way the job's merged model is.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

from services.trainer.checkpoints import CheckpointRecord
from services.trainer.export import save_merged
from services.trainer.recipe import FinetuneRecipe


@dataclass(frozen=True)
class CheckpointModel:
    step: int
    folder: Path
    train_loss: float | None


def kept_checkpoints(
    checkpoints: list[CheckpointRecord], final_step: int, keep: int
) -> list[CheckpointRecord]:
    """The `keep` latest checkpoints before the final step, one per step (the last written wins: a pause
    and a periodic checkpoint can share a step). `checkpoints` come oldest first."""
    by_step = {c.step: c for c in checkpoints if c.step < final_step}
    return [by_step[step] for step in sorted(by_step)][-keep:] if keep else []


def export_checkpoint_models(
    recipe: FinetuneRecipe,
    checkpoints: list[tuple[int, Path]],
    chat_template: str,
    end_of_turn: str,
    output_dir: Path,
) -> list[CheckpointModel]:
    exported = []
    for step, folder in checkpoints:
        with recipe.checkpoint_weights(folder):
            model = copy.deepcopy(recipe.model)
        if recipe.hp.method != "full":
            model = model.merge_and_unload()
        history = [r for r in recipe.state.history if r.get("step", 0) <= step]
        merged_dir = output_dir / f"step-{step}"
        save_merged(model, recipe, chat_template, end_of_turn, merged_dir, history)
        del model
        losses = [r["loss"] for r in history if r["event"] == "train" and r["step"] == step]
        exported.append(CheckpointModel(step, merged_dir, losses[-1] if losses else None))
    return exported
