"""Epochs, warmup and the validation interval, chosen from the data's size when the caller leaves them unset.

Why these numbers (STACK.md and the README's measurements on SmolLM2-135M with LoRA r=16):
- 10 optimizer steps (one epoch of an 80-row CSV at 8 examples a step) taught the model nothing;
  143 steps (one epoch of lamini_docs) moved validation loss 2.215 -> 1.747 and token F1 +0.095; 60 steps
  on 32 pairs reproduced all 8 trained answers; the demo learned to refuse in 3 epochs (about 150 steps).
  So a job gets at least MIN_OPTIMIZER_STEPS steps: as many whole epochs as that takes.
- Over-fitting showed at 15 epochs (60 steps on 32 pairs), so the epochs chosen stop at MAX_AUTO_EPOCHS:
  a data set too small for 100 steps in 10 epochs gets fewer steps, and the choice says so.
- Large data sets keep one epoch: every row seen once is already past the floor.
- Validation runs at least MIN_VALIDATIONS times (every total // 5 steps, and at the last step), so the
  validation curve has a shape, not one or two points.
- Warmup is DEFAULT_WARMUP_FRACTION of the steps (at least one), as before, but now recorded as a number.
"""

import math
from dataclasses import dataclass

from ftcommon.specs.train import DEFAULT_WARMUP_FRACTION, Hyperparameters

MIN_OPTIMIZER_STEPS = 100
MAX_AUTO_EPOCHS = 10
MIN_VALIDATIONS = 5


@dataclass(frozen=True)
class Schedule:
    hyperparameters: Hyperparameters  # epochs (or max_steps), warmup and validation interval all decided
    total_steps: int
    chosen_defaults: list[str]  # one sentence per value chosen here, for the job's events and the CLI


def examples_per_step(hyperparameters: Hyperparameters, processes: int | None = None) -> int:
    """Examples per optimizer step over all processes."""
    return (
        hyperparameters.batch_size
        * hyperparameters.gradient_accumulation_steps
        * (processes or hyperparameters.num_processes)
    )


def plan(
    hyperparameters: Hyperparameters,
    train_rows: int,
    processes: int | None = None,
    validation_rows: int | None = None,
) -> Schedule:
    """Fills in what the caller left unset; what the caller set is kept as given.

    `processes` is the world size when it is known to differ from num_processes; `validation_rows` only
    words the choice (0: there is no validation loss to show).
    """
    if train_rows < 1:
        raise ValueError("a schedule needs at least one training row")
    per_step = examples_per_step(hyperparameters, processes)
    steps_per_epoch = math.ceil(train_rows / per_step)
    decided: dict[str, float | int] = {}
    chosen: list[str] = []
    if hyperparameters.max_steps is None and hyperparameters.epochs is None:
        epochs = min(MAX_AUTO_EPOCHS, max(1, math.ceil(MIN_OPTIMIZER_STEPS / steps_per_epoch)))
        decided["epochs"] = float(epochs)
        total = math.ceil(epochs * train_rows / per_step)
        reason = f"{train_rows} training rows at {per_step} a step are {steps_per_epoch} steps an epoch"
        if epochs == MAX_AUTO_EPOCHS and total < MIN_OPTIMIZER_STEPS:
            reason += f"; capped at {MAX_AUTO_EPOCHS} epochs against over-fitting: add rows for more steps"
        elif epochs > 1:
            reason += f"; {epochs} epochs reach the floor of {MIN_OPTIMIZER_STEPS} optimizer steps"
        chosen.append(f"epochs {epochs} ({total} optimizer steps): {reason}")
    elif hyperparameters.max_steps is not None:
        total = hyperparameters.max_steps
    else:
        total = max(1, math.ceil((hyperparameters.epochs or 1.0) * train_rows / per_step))
    if hyperparameters.warmup_steps is None:
        warmup = hyperparameters.warmup_for(total)
        decided["warmup_steps"] = warmup
        chosen.append(f"warmup {warmup} steps: {DEFAULT_WARMUP_FRACTION:.0%} of {total} steps")
    if hyperparameters.eval_every_steps is None:
        every = max(1, total // MIN_VALIDATIONS)
        decided["eval_every_steps"] = every
        if validation_rows == 0:
            chosen.append(f"validation every {every} steps, but the validation split is empty")
        else:
            validations = total // every + (1 if total % every else 0)
            chosen.append(
                f"validation every {every} steps: {validations} validation losses over {total} steps"
            )
    return Schedule(hyperparameters.model_copy(update=decided), total, chosen)
