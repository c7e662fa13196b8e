"""The training recipe in-process on the real default model, tiny settings: the loss and gradient
invariants (accumulation, packing) and exact resume from a checkpoint."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from trainer_support import write_prepared_version

from ftcommon.hardware import cpu_has_native_bf16
from ftcommon.specs.train import TORCH_COMPILE_MIN_TOKENS, Hyperparameters
from services.trainer.batches import (
    IGNORE_INDEX,
    collate_packed,
    collate_padded,
    label_count,
    summed_loss,
    summed_loss_and_hits,
)
from services.trainer.compiled_layers import cpu_compiler_available
from services.trainer.recipe import FinetuneRecipe, RecipeConfig, StopRequested

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("two_torch_threads")]

# fp32 pinned: the invariants are exact arithmetic; the bf16 default of CPUs with native bf16 has its own test.
TINY = {
    "lora_rank": 4,
    "lora_dropout": 0.0,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "seed": 7,
    "precision": "fp32",
}


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
    recipe = FinetuneRecipe(
        RecipeConfig(model_dir, prepared, work, Hyperparameters.model_validate({**TINY, **overrides}))
    )
    recipe.setup()
    return recipe


def lora_grads(recipe: FinetuneRecipe) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in recipe.model.named_parameters() if p.requires_grad}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise: an elementwise tolerance fails on near-zero elements whose absolute error is the
    rounding of the whole sum they came from."""
    return float((a.double() - b.double()).norm() / b.double().norm())


@dataclass(frozen=True)
class StepGradients:
    loss: float
    grads: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def accumulation_gradients(default_model_dir, prepared_dir, tmp_path_factory) -> dict[str, StepGradients]:
    """One optimizer step's gradient, as one batch of 8 and as 8 accumulated batches of 1, in float32
    (the training precision on CPU) and in float64 (the reference: summation order changes its results
    only around 1e-14, so there any difference between the two ways is a difference in the code)."""
    work = tmp_path_factory.mktemp("accumulation")
    layouts = {"whole": {"batch_size": 8}, "split": {"batch_size": 1, "gradient_accumulation_steps": 8}}
    results = {}
    for layout, settings in layouts.items():
        for dtype in (torch.float32, torch.float64):
            recipe = make_recipe(default_model_dir, prepared_dir, work, **settings)
            # LoRA B starts at zero, so only B gets a gradient on the first step; perturb B to reach A too.
            torch.manual_seed(0)
            for name, p in recipe.model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.02)
            recipe.model.to(dtype)  # after the perturbation, so every run starts from the same weights
            loss = recipe.accumulate_gradients().loss
            results[f"{layout}-{str(dtype).removeprefix('torch.')}"] = StepGradients(loss, lora_grads(recipe))
    return results


def test_batch_of_8_equals_batch_of_1_with_8_accumulation_steps(accumulation_gradients):
    whole, split = accumulation_gradients["whole-float64"], accumulation_gradients["split-float64"]
    assert split.loss == pytest.approx(whole.loss, rel=1e-12)
    assert whole.grads.keys() == split.grads.keys()
    # Measured on a Xeon with AVX-512/AMX: worst tensor 3.8e-14. A real difference between the two code
    # paths (normalisation, examples leaking into each other) is many orders of magnitude above 1e-10.
    worst = max(whole.grads, key=lambda name: relative_difference(split.grads[name], whole.grads[name]))
    assert relative_difference(split.grads[worst], whole.grads[worst]) < 1e-10, worst


@pytest.mark.parametrize("layout", ["whole", "split"])
def test_float32_gradients_match_the_float64_reference(accumulation_gradients, layout):
    """Training runs in float32: each tensor's gradient is the exact one up to rounding. Measured worst
    tensor 1.7e-4 (the deepest layer's, which sums the most rounding) on a Xeon with AVX-512/AMX; an AVX-512
    EPYC showed 5.4e-4 of a tensor's largest element between the two layouts. 1e-2 leaves room for any
    x86 kernel and still fails for a wrong scale, a dropped micro-batch or bf16 arithmetic (bf16 autocast
    measured 7.7e-2 worst, 3.1e-2 median, same Xeon)."""
    reference = accumulation_gradients["whole-float64"]
    measured = accumulation_gradients[f"{layout}-float32"]
    assert measured.loss == pytest.approx(reference.loss, rel=1e-5)
    for name, grad in measured.grads.items():
        assert relative_difference(grad, reference.grads[name]) < 1e-2, name


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


def test_token_accuracy_counts_the_label_tokens_the_most_likely_token_gets_right(
    default_model_dir, prepared_dir, tmp_path
):
    recipe = make_recipe(default_model_dir, prepared_dir, tmp_path)
    examples = recipe.train_examples[:4]
    recipe.model.eval()
    expected = 0
    with torch.no_grad():
        _, packed_hits = summed_loss_and_hits(recipe.model, collate_packed(examples))
        _, padded_hits = summed_loss_and_hits(recipe.model, collate_padded(examples, recipe.pad_id))
        for example in examples:  # one example at a time, every position's logits
            logits = recipe.model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0, :-1]
            labels = torch.tensor(example.labels[1:])
            answer = labels != IGNORE_INDEX
            expected += int((logits.argmax(dim=-1)[answer] == labels[answer]).sum())
    assert int(packed_hits) == int(padded_hits) == expected
    assert 0 < expected < sum(label_count(e) for e in examples)


NATIVE_BF16_ONLY = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU emulates bf16 (about 22x slower); fp32 is used"
)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NATIVE_BF16_ONLY)])
def test_resume_from_checkpoint_is_exact(default_model_dir, prepared_dir, tmp_path, precision):
    settings = {
        "max_steps": 4,
        "batch_size": 2,
        "checkpoint_every_steps": 2,
        "lora_dropout": 0.1,
        "precision": precision,
    }
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


# Measured on a Xeon with AMX (6 steps, lr 1e-3, loss 2.47 -> 0.96): bf16 frozen weights and bf16 adapter compute
# worst step 2.0% apart, median 0.75%; bf16 frozen weights with fp32 adapter compute worst 1.9%,
# median 0.8%; bf16 autocast over fp32 weights worst 2.2%, median 0.5%.
# A bf16 path that failed to learn or mis-scaled the loss would be tens of percent off by the last steps.
BF16_LOSS_BOUND = 0.08


@NATIVE_BF16_ONLY
def test_bf16_loss_curve_follows_fp32(default_model_dir, prepared_dir, tmp_path):
    """bf16 (the default on this CPU: frozen weights in bf16, LoRA's trainable weights fp32) trains the same
    curve as fp32 within rounding."""
    settings = {"max_steps": 6, "batch_size": 4, "checkpoint_every_steps": 100}
    curves = {}
    for precision in ("fp32", "bf16"):
        recipe = make_recipe(
            default_model_dir, prepared_dir, tmp_path / precision, precision=precision, **settings
        )
        reporter = Silent()
        recipe.train(reporter)
        curves[precision] = [m["loss"] for m in reporter.steps]
        frozen = {p.dtype for p in recipe.model.parameters() if not p.requires_grad}
        assert frozen == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert {p.dtype for p in recipe.trainable} == {torch.float32}
        # bf16: the adapters take their bf16 inputs as they are (no fp32 copy of every layer's input).
        casting = {
            m.cast_input_dtype_enabled for m in recipe.model.modules() if isinstance(m, BaseTunerLayer)
        }
        assert casting == {precision == "fp32"}
    assert curves["bf16"] != curves["fp32"], "bf16 must actually change the arithmetic"
    for fp32_loss, bf16_loss in zip(curves["fp32"], curves["bf16"], strict=True):
        assert bf16_loss == pytest.approx(fp32_loss, rel=BF16_LOSS_BOUND)


# Measured on a Xeon with AMX (6 steps as below): compiled and eager bf16 worst step 0.8% apart (the first,
# before any update, so the fused kernels' rounding alone), median 0.4%; bf16 and fp32 are further apart
# (worst 2.0%). A compiled graph that dropped the weight or the adapters would be far off.
COMPILED_LOSS_BOUND = 0.03


@NATIVE_BF16_ONLY
@pytest.mark.skipif(not cpu_compiler_available(), reason="torch.compile's CPU kernels need a C++ compiler")
def test_compiled_norms_and_mlps_train_the_eager_curve(default_model_dir, prepared_dir, tmp_path):
    """torch.compile (the default for long bf16 CPU runs) fuses the norms' and MLPs' elementwise passes; the
    fused kernels round differently, so the curve follows eager within bf16 rounding, and a resumed compiled
    run repeats the straight one exactly."""
    settings = {"max_steps": 6, "batch_size": 4, "checkpoint_every_steps": 3, "precision": "bf16"}
    curves, checkpoints = {}, {}
    for compiled in (False, True):
        recipe = make_recipe(
            default_model_dir, prepared_dir, tmp_path / str(compiled), torch_compile=compiled, **settings
        )
        reporter = Silent()
        recipe.train(reporter)
        curves[compiled] = [m["loss"] for m in reporter.steps]
        checkpoints[compiled] = dict(reporter.checkpoints)
        assert recipe.resolved_hyperparameters.torch_compile is compiled
    assert curves[True] != curves[False], "compiling must actually change the kernels"
    for eager_loss, compiled_loss in zip(curves[False], curves[True], strict=True):
        assert compiled_loss == pytest.approx(eager_loss, rel=COMPILED_LOSS_BOUND)

    resumed = make_recipe(
        default_model_dir, prepared_dir, tmp_path / "resumed", torch_compile=True, **settings
    )
    resumed.load_checkpoint(checkpoints[True][3])
    reporter = Silent()
    resumed.train(reporter)
    assert [m["loss"] for m in reporter.steps] == pytest.approx(curves[True][3:], rel=1e-5)


def test_compiling_is_the_default_only_for_long_bf16_cpu_runs_with_a_compiler():
    auto = Hyperparameters()
    assert auto.resolved_torch_compile("bf16", False, TORCH_COMPILE_MIN_TOKENS, cpu_compiler=True)
    assert not auto.resolved_torch_compile("bf16", False, TORCH_COMPILE_MIN_TOKENS - 1, cpu_compiler=True)
    assert not auto.resolved_torch_compile("fp32", False, 10**9, cpu_compiler=True)
    assert not auto.resolved_torch_compile("bf16", True, 10**9, cpu_compiler=True)
    assert not auto.resolved_torch_compile("bf16", False, 10**9, cpu_compiler=False)
    asked, refused = Hyperparameters(torch_compile=True), Hyperparameters(torch_compile=False)
    assert asked.resolved_torch_compile("fp32", False, 0, cpu_compiler=True)
    assert not refused.resolved_torch_compile("bf16", False, 10**9, cpu_compiler=True)
    with pytest.raises(ValueError, match=r"hyperparameters\.torch_compile: .*C\+\+ compiler"):
        asked.resolved_torch_compile("bf16", False, 0, cpu_compiler=False)


def test_a_worker_without_a_cpp_compiler_is_told_so():
    """Inductor's own compiler search, pointed at a compiler that is not installed (a slim image)."""
    from torch._inductor import config as inductor_config

    installed = shutil.which(os.environ.get("CXX", "g++")) is not None
    assert cpu_compiler_available() == installed
    with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        assert not cpu_compiler_available()
    assert cpu_compiler_available() == installed


@NATIVE_BF16_ONLY
def test_merge_after_bf16_training_adds_the_fp32_delta_to_the_fp32_base(
    default_model_dir, prepared_dir, tmp_path
):
    """Training keeps the frozen weights in bf16; the merged model must be the base's own fp32 weights plus
    the fp32 LoRA delta, not the bf16 rounding of the base (about 3 significant digits) plus the delta."""
    from safetensors.torch import load_file

    recipe = make_recipe(
        default_model_dir, prepared_dir, tmp_path, precision="bf16", max_steps=2, batch_size=2
    )
    recipe.train(Silent())
    trained = recipe.full_trainable_weights()
    recipe.gather_for_export()
    assert {p.dtype for p in recipe.model.parameters()} == {torch.float32}
    layer = recipe.model.base_model.model.model.layers[0].self_attn.q_proj
    base = load_file(str(default_model_dir / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    lora_a, lora_b = (
        trained[f"base_model.model.model.layers.0.self_attn.q_proj.{part}.default.weight"]
        for part in ("lora_A", "lora_B")
    )
    expected = base + lora_b @ lora_a * layer.scaling["default"]
    assert not torch.equal(expected, base.bfloat16().float() + lora_b @ lora_a * layer.scaling["default"])
    merged = recipe.model.merge_and_unload()
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected, rtol=0, atol=1e-6)
