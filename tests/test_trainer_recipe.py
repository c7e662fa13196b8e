"""The training recipe in-process on the real default model, tiny settings: the loss and gradient
invariants (accumulation, packing) and exact resume from a checkpoint."""

from pathlib import Path

import pytest
import torch
from trainer_support import write_prepared_version

from services.trainer.batches import collate_packed, collate_padded, summed_loss
from services.trainer.hyperparameters import validate
from services.trainer.recipe import FinetuneRecipe, RecipeConfig, StopRequested

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("two_torch_threads")]

TINY = {"lora_rank": 4, "lora_dropout": 0.0, "learning_rate": 1e-3, "warmup_steps": 0, "seed": 7}


class Silent:
    """A reporter that keeps what it is told."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps: list[dict[str, float]] = []
        self.checkpoints: list[tuple[int, Path]] = []

    def on_train_step(self, metrics: dict[str, float]) -> None:
        self.steps.append(metrics)

    def on_validation(self, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, folder: Path) -> None:
        self.checkpoints.append((step, folder))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


@pytest.fixture(scope="module")
def prepared_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared_version(default_model_dir, tmp_path_factory.mktemp("prepared"))


def make_recipe(model_dir: Path, prepared: Path, work: Path, **overrides: object) -> FinetuneRecipe:
    recipe = FinetuneRecipe(RecipeConfig(model_dir, prepared, work, validate({**TINY, **overrides})))
    recipe.setup()
    return recipe


def lora_grads(recipe: FinetuneRecipe) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in recipe.model.named_parameters() if p.requires_grad}


def test_batch_of_8_equals_batch_of_1_with_8_accumulation_steps(default_model_dir, prepared_dir, tmp_path):
    whole = make_recipe(default_model_dir, prepared_dir, tmp_path, batch_size=8)
    split = make_recipe(
        default_model_dir, prepared_dir, tmp_path, batch_size=1, gradient_accumulation_steps=8
    )
    # LoRA B starts at zero, so only B gets a gradient on the first step; perturb B to reach A too.
    for recipe in (whole, split):
        torch.manual_seed(0)
        for name, p in recipe.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    whole_loss = whole.accumulate_gradients().loss
    split_loss = split.accumulate_gradients().loss
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    whole_grads, split_grads = lora_grads(whole), lora_grads(split)
    assert whole_grads.keys() == split_grads.keys()
    for name, grad in whole_grads.items():
        torch.testing.assert_close(split_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_packed_loss_equals_padded_loss(default_model_dir, prepared_dir, tmp_path):
    recipe = make_recipe(default_model_dir, prepared_dir, tmp_path)
    examples = recipe.train_examples[:4]
    assert len({len(e.input_ids) for e in examples}) > 1, "the examples need different lengths"
    recipe.model.eval()
    with torch.no_grad():
        packed = summed_loss(recipe.model, collate_packed(examples))
        padded = summed_loss(recipe.model, collate_padded(examples, recipe.pad_id))
        separate = sum(summed_loss(recipe.model, collate_packed([e])) for e in examples)
    assert packed.item() == pytest.approx(padded.item(), rel=1e-4)
    assert packed.item() == pytest.approx(separate.item(), rel=1e-4)


def test_resume_from_checkpoint_is_exact(default_model_dir, prepared_dir, tmp_path):
    settings = {"max_steps": 4, "batch_size": 2, "checkpoint_every_steps": 2, "lora_dropout": 0.1}
    straight = make_recipe(default_model_dir, prepared_dir, tmp_path / "straight", **settings)
    straight_reporter = Silent()
    straight.train(straight_reporter)

    first = make_recipe(default_model_dir, prepared_dir, tmp_path / "first", **settings)
    first_reporter = Silent(stop_after=3)  # stops one step past the checkpoint, as a crash would
    with pytest.raises(StopRequested):
        first.train(first_reporter)
    ((step, checkpoint),) = first_reporter.checkpoints
    assert step == 2

    resumed = make_recipe(default_model_dir, prepared_dir, tmp_path / "resumed", **settings)
    resumed.load_checkpoint(checkpoint)
    resumed_reporter = Silent()
    resumed.train(resumed_reporter)

    assert [m["step"] for m in resumed_reporter.steps] == [3.0, 4.0]
    for straight_step, resumed_step in zip(straight_reporter.steps[2:], resumed_reporter.steps, strict=True):
        assert resumed_step["loss"] == pytest.approx(straight_step["loss"], rel=1e-5)
        assert resumed_step["learning_rate"] == pytest.approx(straight_step["learning_rate"])
    for (name, a), (_, b) in zip(straight._trainable_named(), resumed._trainable_named(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
