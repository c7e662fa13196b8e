"""Training hyperparameters: the platform's defaults, validation that names the proto field, conversions.

Unset fields of the `Hyperparameters` message take the default, so a caller sets only what it means; a
field that is set is taken as given, so a zero where zero makes no sense is refused with the field's name.
The defaults are the ones measured to learn well on this hardware class (see STACK.md): LoRA r=16,
alpha 32 on every linear layer, no LoRA dropout (its Bernoulli masks cost a fifth of a CPU step, measured
with torch.profiler; torchtune's LoRA recipes default to none too), lr 1e-3 with warmup and cosine decay
(the demo's setting: 32 pairs learned in 60 steps, 390 rows learned to refuse in 3 epochs; 2e-4 for one
epoch taught lamini_docs nothing about refusing), 8 examples a step packed without padding, gradient
clipping at 1.0. Epochs, warmup and the validation interval left unset are chosen from the data's size
(schedule.py).
"""

import json
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from finetune.v1 import trainer_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.hardware import cpu_has_native_bf16

Method = Literal["lora", "full", "qlora"]
Schedule = Literal["cosine", "linear", "constant"]
Strategy = Literal["ddp", "fsdp"]
Precision = Literal["fp32", "bf16", "fp16"]

ALL_LINEAR = "all-linear"
FIELD_PREFIX = "hyperparameters"
DEFAULT_WARMUP_FRACTION = 0.05

_METHODS: dict[int, Method] = {
    trainer_pb2.TRAINING_METHOD_UNSPECIFIED: "lora",
    trainer_pb2.TRAINING_METHOD_LORA: "lora",
    trainer_pb2.TRAINING_METHOD_FULL: "full",
    trainer_pb2.TRAINING_METHOD_QLORA: "qlora",
}
_SCHEDULES: dict[int, Schedule] = {
    trainer_pb2.LR_SCHEDULE_UNSPECIFIED: "cosine",
    trainer_pb2.LR_SCHEDULE_COSINE: "cosine",
    trainer_pb2.LR_SCHEDULE_LINEAR: "linear",
    trainer_pb2.LR_SCHEDULE_CONSTANT: "constant",
}
_STRATEGIES: dict[int, Strategy] = {
    trainer_pb2.DISTRIBUTED_STRATEGY_UNSPECIFIED: "ddp",
    trainer_pb2.DISTRIBUTED_STRATEGY_DDP: "ddp",
    trainer_pb2.DISTRIBUTED_STRATEGY_FSDP: "fsdp",
}
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class Hyperparameters(BaseModel):
    """Every knob of a training job, with the platform's defaults filled in."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Method = "lora"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: list[str] = [ALL_LINEAR]
    learning_rate: float = 1e-3
    epochs: float | None = None  # None: chosen from the number of training rows (schedule.py)
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8  # examples per process per micro-batch
    gradient_accumulation_steps: int = 1
    warmup_steps: int | None = None  # None: DEFAULT_WARMUP_FRACTION of the total steps
    schedule: Schedule = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every_steps: int | None = None  # None: chosen so validation runs at least 5 times (schedule.py)
    checkpoint_every_steps: int = 50
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0: never
    seed: int = 42
    packing: bool = True
    num_processes: int = 1
    strategy: Strategy = "ddp"
    precision: Precision | None = None  # None: bf16 where the GPU or CPU computes it natively, else fp32

    @field_validator("lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if not 1 <= value <= 1024:
            raise ValueError("must be between 1 and 1024")
        return value

    @field_validator("lora_alpha", "learning_rate")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive number")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate(cls, value: float) -> float:
        if value > 1.0:
            raise ValueError("must be at most 1.0")
        return value

    @field_validator("lora_dropout")
    @classmethod
    def _dropout(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value

    @field_validator("weight_decay")
    @classmethod
    def _weight_decay(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be in [0, 1]")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1000.0:
            raise ValueError("must be in (0, 1000]")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _grad_norm(cls, value: float) -> float:
        if value < 0 or not math.isfinite(value):
            raise ValueError("must be 0 (no clipping) or positive")
        return value

    @field_validator("max_steps", "eval_every_steps", "checkpoint_every_steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1 (leave it unset for the default)")
        return value

    @field_validator("early_stopping_patience", "seed")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("warmup_steps")
    @classmethod
    def _warmup(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("batch_size", "gradient_accumulation_steps")
    @classmethod
    def _batch(cls, value: int) -> int:
        if not 1 <= value <= 4096:
            raise ValueError("must be between 1 and 4096")
        return value

    @field_validator("num_processes")
    @classmethod
    def _processes(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64")
        return value

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one module name or 'all-linear'")
        for name in value:
            if name != ALL_LINEAR and not _MODULE_NAME.match(name):
                raise ValueError(f"'{name}' is not a module name")
        if ALL_LINEAR in value and len(value) > 1:
            raise ValueError("'all-linear' cannot be combined with module names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Hyperparameters":
        if self.max_steps and self.warmup_steps is not None and self.warmup_steps > self.max_steps:
            raise _FieldError("warmup_steps", f"must not exceed max_steps ({self.max_steps})")
        if self.strategy == "fsdp" and self.num_processes < 2:
            raise _FieldError("strategy", "FSDP shards the model across processes; needs num_processes > 1")
        return self

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return max(1, round(DEFAULT_WARMUP_FRACTION * total_steps)) if total_steps > 1 else 0

    def resolved_precision(self, on_gpu: bool) -> Precision:
        if self.precision:
            return self.precision
        # bf16 autocast only where it is native: emulated bf16 on a CPU without it is ~22x slower than fp32.
        return "bf16" if on_gpu or cpu_has_native_bf16() else "fp32"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    def to_proto(self) -> trainer_pb2.Hyperparameters:
        """Every value that is decided; the ones still left to the schedule (None) stay unset."""
        numbers = {name: getattr(self, name) for name in (*_OPTIONAL_NUMBERS, "lora_dropout", "packing")}
        return trainer_pb2.Hyperparameters(
            method=_key(_METHODS, self.method, skip_default=True),
            target_modules=self.target_modules,
            schedule=_key(_SCHEDULES, self.schedule, skip_default=True),
            strategy=_key(_STRATEGIES, self.strategy, skip_default=True),
            precision=self.precision or "",
            **{name: value for name, value in numbers.items() if value is not None},
        )


# The message's optional numeric fields: set means "exactly this", unset means "the default".
_OPTIONAL_NUMBERS = (
    "lora_rank",
    "lora_alpha",
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "eval_every_steps",
    "checkpoint_every_steps",
    "early_stopping_patience",
    "seed",
    "num_processes",
)


class _FieldError(ValueError):
    """A cross-field inconsistency, blamed on one field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _key(mapping: dict[int, str], value: str, skip_default: bool) -> int:
    keys = [k for k, v in mapping.items() if v == value and not (skip_default and k == 0)]
    return keys[0]


def from_proto(message: trainer_pb2.Hyperparameters) -> Hyperparameters:
    """Validated hyperparameters with defaults for every unset field; InvalidArgument names the field.

    A field that is set is validated as given: `epochs: 0` is an error, not a request for the default.
    """
    values: dict[str, object] = {
        name: getattr(message, name)
        for name in (*_OPTIONAL_NUMBERS, "lora_dropout", "packing")
        if message.HasField(name)
    }
    if message.target_modules:
        values["target_modules"] = list(message.target_modules)
    if message.precision:
        values["precision"] = message.precision
    for name, table in (("method", _METHODS), ("schedule", _SCHEDULES), ("strategy", _STRATEGIES)):
        number = getattr(message, name)
        if number not in table:
            raise InvalidArgument(f"unknown value {number}", field=f"{FIELD_PREFIX}.{name}")
        values[name] = table[number]
    return validate(values)


def from_stored(values: dict[str, object]) -> Hyperparameters:
    """A job payload's hyperparameters. Jobs queued before unset and zero were told apart stored 0 for "no
    step limit"; that meant what None means now."""
    if values.get("max_steps") == 0:
        values = {**values, "max_steps": None}
    return Hyperparameters.model_validate(values)


def validate(values: dict[str, object]) -> Hyperparameters:
    try:
        return Hyperparameters.model_validate(values)
    except ValidationError as exc:
        raise _invalid_argument(exc) from exc
    except _FieldError as exc:
        raise InvalidArgument(exc.message, field=f"{FIELD_PREFIX}.{exc.field}") from exc


def _invalid_argument(exc: ValidationError) -> InvalidArgument:
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _FieldError):
        return InvalidArgument(cause.message, field=f"{FIELD_PREFIX}.{cause.field}")
    location = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    message = str(error["msg"]).removeprefix("Value error, ")
    return InvalidArgument(message, field=f"{FIELD_PREFIX}.{location}" if location else FIELD_PREFIX)
