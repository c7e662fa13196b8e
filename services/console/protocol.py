"""The console's forms, typed: what each form accepts, its defaults, the request it becomes, and the
equivalent `ftctl` command shown beside it so a person learns the CLI from the page."""

from typing import Any

from pydantic import BaseModel, Field, model_validator

from finetune.v1 import common_pb2, data_pb2, trainer_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.settings import DEFAULT_BASE_MODEL_NAME
from ftcommon.specs.prepare import (
    DEFAULT_MAX_SEQ_LEN,
    DEFAULT_REFUSAL_FRACTION,
    DEFAULT_SPLIT,
    PrepareSpec,
    Template,
)
from ftcommon.specs.proto_bridge import validate_spec
from ftcommon.specs.train import TrainSpec
from services.console.forms import FormModel


def _checked_by(build: Any) -> None:
    """A form whose spec refuses it fails as the form's own validation, naming the spec's field."""
    try:
        build()
    except InvalidArgument as err:
        raise ValueError(f"{err.field}: {err.message}") from None


class PrepareForm(FormModel):
    """PrepareSpec's fields a person fills in, showing the spec's defaults."""

    base_model: str = Field(DEFAULT_BASE_MODEL_NAME, min_length=1)
    template: Template = PrepareSpec.model_fields["template"].default
    system_prompt: str = ""
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    train: float = DEFAULT_SPLIT.train
    validation: float = DEFAULT_SPLIT.validation
    test: float = DEFAULT_SPLIT.test
    refusal_domain: str = ""
    refusal_fraction: float | None = (
        None  # blank: the spec's default (DEFAULT_REFUSAL_FRACTION with a domain)
    )
    seed: int = 0

    @property
    def default_refusal_fraction(self) -> float:
        return DEFAULT_REFUSAL_FRACTION

    @model_validator(mode="after")
    def _as_the_spec_allows(self) -> "PrepareForm":
        _checked_by(lambda: self.spec(""))
        return self

    def spec(self, dataset_id: str) -> PrepareSpec:
        values: dict[str, Any] = {
            "dataset_id": dataset_id,
            "base_model": self.base_model,
            "template": self.template,
            "system_prompt": self.system_prompt,
            "max_seq_len": self.max_seq_len,
            "split": [self.train, self.validation, self.test],
            "seed": self.seed,
        }
        if self.refusal_domain:
            values["refusals"] = {"domain": self.refusal_domain, "fraction": self.refusal_fraction}
        return validate_spec(PrepareSpec, values)

    def request(self, dataset_id: str) -> data_pb2.PrepareDatasetRequest:
        return self.spec(dataset_id).to_request()

    def command(self, dataset_id: str) -> str:
        parts = [
            f"ftctl data prepare {dataset_id} --base-model {self.base_model} --max-seq-len {self.max_seq_len}",
            f"--split {self.train},{self.validation},{self.test}",
        ]
        if self.template != PrepareSpec.model_fields["template"].default:
            parts.append(f"--template {self.template}")
        if self.system_prompt:
            parts.append(f"--system-prompt {self.system_prompt!r}")
        if self.refusal_domain:
            parts.append(f"--refusal-domain {self.refusal_domain!r}")
            if self.refusal_fraction is not None:
                parts.append(f"--refusal-fraction {self.refusal_fraction}")
        return " ".join(parts)


class JobForm(FormModel):
    base_model: str = Field(DEFAULT_BASE_MODEL_NAME, min_length=1)
    prepared_version_id: str = Field(min_length=1)
    display_name: str = ""
    # Empty fields keep the trainer's defaults (chosen from the data's size): only what is filled is sent.
    learning_rate: float | None = None
    epochs: float | None = None
    max_steps: int | None = None
    lora_rank: int | None = None
    batch_size: int | None = None

    @model_validator(mode="after")
    def _as_the_spec_allows(self) -> "JobForm":
        _checked_by(self.spec)
        return self

    def spec(self) -> TrainSpec:
        given = {name: value for name, value in self._hyperparameters().items() if value is not None}
        return validate_spec(
            TrainSpec,
            {
                "base_model": self.base_model,
                "prepared_version_id": self.prepared_version_id,
                "hyperparameters": given,
                "display_name": self.display_name,
            },
        )

    def request(self) -> trainer_pb2.CreateJobRequest:
        return self.spec().to_request()

    def _hyperparameters(self) -> dict[str, float | int | None]:
        return {
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "lora_rank": self.lora_rank,
            "batch_size": self.batch_size,
        }

    def command(self) -> str:
        flags = [
            f"--{name.replace('_', '-')} {value}"
            for name, value in self._hyperparameters().items()
            if value is not None
        ]
        return " ".join(
            [
                "ftctl train create --dataset",
                self.prepared_version_id,
                "--base-model",
                self.base_model,
                *flags,
            ]
        )


class PromoteForm(BaseModel):
    model: str = Field(min_length=1)
    alias: str = Field("prod", min_length=1)
    eval_run_id: str = ""
    reason: str = ""


TERMINAL_STATES = {
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
}
