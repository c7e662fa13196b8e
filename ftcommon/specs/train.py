"""TrainSpec: a training job as asked (TrainerService.CreateJob), its hyperparameters with the platform's
defaults and checks. The one place these defaults live: CLI flags, job files, pipeline files, the console and
the OpenAI fine-tuning API build requests from it, and the trainer reads requests and stored jobs through it.

Why these defaults: the ones measured to learn well on this hardware class (see STACK.md): LoRA r=16,
alpha 32 on every linear layer, no LoRA dropout (its Bernoulli masks cost a fifth of a CPU step, measured
with torch.profiler; torchtune's LoRA recipes default to none too), lr 1e-3 with warmup and cosine decay
(the demo's setting: 32 pairs learned in 60 steps, 390 rows learned to refuse in 3 epochs; 2e-4 for one
epoch taught lamini_docs nothing about refusing), 8 examples a step packed without padding, gradient
clipping at 1.0. Epochs, warmup and the validation interval left unset (None) are chosen by the trainer
from the data's size (services/trainer/schedule.py) and recorded in the job.
"""

import json
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from finetune.v1 import trainer_pb2
from ftcommon.hardware import cpu_has_native_bf16
from ftcommon.specs.proto_bridge import SpecFieldError, from_message, to_message

Method = Literal["lora", "full", "qlora", "dpo"]
Schedule = Literal["cosine", "linear", "constant"]
Strategy = Literal["ddp", "fsdp"]
Precision = Literal["fp32", "bf16", "fp16"]

ALL_LINEAR = "all-linear"
HYPERPARAMETERS_FIELD = "hyperparameters"
DEFAULT_WARMUP_FRACTION = 0.05
# Compiling costs ~35 s cold on 2 cores and saves about a quarter of each bf16 CPU step (eager ~370 tokens/s):
# it breaks even near 50,000 tokens, so the default waits for twice that (docs/architecture.md).
TORCH_COMPILE_MIN_TOKENS = 100_000
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class Hyperparameters(BaseModel):
    """Every knob of a training job (finetune.v1.Hyperparameters), with the platform's defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Method = Field(
        "lora",
        description="lora | full | qlora (qlora needs CUDA and bitsandbytes) | dpo (preference tuning with "
        "LoRA on a prepared version of preference pairs).",
    )
    lora_rank: int = Field(16, description="LoRA rank r.")
    lora_alpha: float = Field(32.0, description="LoRA alpha; the update is scaled by alpha / r.")
    lora_dropout: float = Field(0.0, description="Dropout on the LoRA input; 0 turns it off.")
    target_modules: list[str] = Field(
        [ALL_LINEAR], description="'all-linear' or the module names LoRA adapts (q_proj, v_proj, ...)."
    )
    learning_rate: float = Field(1e-3, description="Peak learning rate, after warmup.")
    epochs: float | None = Field(
        None, description="Passes over the training split; unset: chosen from the number of training rows."
    )
    max_steps: int | None = Field(None, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(8, description="Examples per process per micro-batch.")
    gradient_accumulation_steps: int = Field(1, description="Micro-batches per optimizer step.")
    warmup_steps: int | None = Field(
        None, description=f"Linear warmup steps; unset: {DEFAULT_WARMUP_FRACTION:.0%} of the steps; 0: none."
    )
    schedule: Schedule = Field("cosine", description="Learning-rate decay after warmup.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, description="Gradient clipping norm; 0: no clipping.")
    eval_every_steps: int | None = Field(
        None, description="Validation interval; unset: chosen so validation runs at least 5 times."
    )
    checkpoint_every_steps: int = Field(50, description="Checkpoint interval in optimizer steps.")
    early_stopping_patience: int = Field(
        0, description="Validations without improvement before stopping; 0: never stop early."
    )
    seed: int = Field(42, description="Seed of initialisation, data order and dropout.")
    packing: bool = Field(True, description="Pack examples into rows without padding.")
    num_processes: int = Field(1, description="Training processes (torchrun), one per GPU.")
    strategy: Strategy = Field("ddp", description="ddp | fsdp across processes.")
    precision: Precision | None = Field(
        None,
        description="fp32 | bf16 | fp16; unset: bf16 where the GPU or CPU computes it natively, else fp32.",
    )
    torch_compile: bool | None = Field(
        None,
        description="Fuse each layer's norms and MLP and the loss with torch.compile; unset: on for bf16 on a "
        f"CPU with a C++ compiler when the run trains at least {TORCH_COMPILE_MIN_TOKENS:,} tokens "
        "(compiling takes about half a minute), else off (fp32 on a CPU ran slower compiled; GPUs not measured).",
    )
    # 0.1 is the DPO paper's and TRL's default: higher keeps the policy closer to the reference model.
    dpo_beta: float = Field(0.1, description="method dpo: the DPO loss's beta (> 0).")
    dpo_sft_weight: float = Field(
        0.0,
        description="method dpo: weight of the chosen answers' mean token NLL added to the loss; 0: none.",
    )

    @field_validator("dpo_beta")
    @classmethod
    def _dpo_beta(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive number")
        return value

    @field_validator("dpo_sft_weight")
    @classmethod
    def _dpo_sft_weight(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be 0 (no SFT term) or positive")
        return value

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

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_module_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

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
            raise SpecFieldError("warmup_steps", f"must not exceed max_steps ({self.max_steps})")
        if self.strategy == "fsdp" and self.num_processes < 2:
            raise SpecFieldError(
                "strategy", "FSDP shards the model across processes; needs num_processes > 1"
            )
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

    def resolved_torch_compile(
        self, precision: Precision, on_gpu: bool, planned_tokens: int, cpu_compiler: bool
    ) -> bool:
        """`cpu_compiler`: whether a C++ compiler is there for torch.compile's CPU kernels."""
        if self.torch_compile is not None:
            if self.torch_compile and not on_gpu and not cpu_compiler:
                raise ValueError(
                    f"{HYPERPARAMETERS_FIELD}.torch_compile: torch.compile on a CPU needs a C++ compiler "
                    "(g++ or $CXX) and this worker has none; leave it unset to train eager"
                )
            return self.torch_compile
        long_bf16_cpu_run = precision == "bf16" and not on_gpu and planned_tokens >= TORCH_COMPILE_MIN_TOKENS
        return long_bf16_cpu_run and cpu_compiler

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)

    def to_proto(self, *, include_defaults: bool = False) -> trainer_pb2.Hyperparameters:
        return to_message(self, trainer_pb2.Hyperparameters, include_defaults=include_defaults)

    @classmethod
    def from_proto(cls, message: trainer_pb2.Hyperparameters) -> "Hyperparameters":
        """Defaults for every unset field; a set field is validated as given (`epochs: 0` is an error naming
        `hyperparameters.epochs`, not a request for the default)."""
        return from_message(message, cls, field_prefix=HYPERPARAMETERS_FIELD)


class TrainSpec(BaseModel):
    """A training job as asked: finetune.v1.CreateJobRequest."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(min_length=1, description="The base model: registry name, id or alias.")
    prepared_version_id: str = Field(description="The prepared dataset version to train on.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    idempotency_key: str = Field("", description="Retrying with the same key returns the same job.")
    display_name: str = Field("", description="A name for people; not unique.")

    def to_request(self) -> trainer_pb2.CreateJobRequest:
        return to_message(self, trainer_pb2.CreateJobRequest)

    @classmethod
    def from_request(cls, request: trainer_pb2.CreateJobRequest) -> "TrainSpec":
        return from_message(request, cls)
