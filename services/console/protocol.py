"""The console's forms, typed: what each form accepts, its defaults, the request it becomes, and the
equivalent `ftctl` command shown beside it so a person learns the CLI from the page."""

from pydantic import BaseModel, Field

from finetune.v1 import common_pb2, data_pb2, trainer_pb2
from ftcommon.settings import DEFAULT_BASE_MODEL_NAME
from services.console.forms import FormModel

TEMPLATES = {
    "model": data_pb2.PROMPT_TEMPLATE_UNSPECIFIED,
    "chat": data_pb2.PROMPT_TEMPLATE_CHAT,
    "alpaca": data_pb2.PROMPT_TEMPLATE_ALPACA,
    "question-answer": data_pb2.PROMPT_TEMPLATE_QUESTION_ANSWER,
}


class PrepareForm(FormModel):
    base_model: str = Field(DEFAULT_BASE_MODEL_NAME, min_length=1)
    template: str = Field("model", pattern="^(model|chat|alpaca|question-answer)$")
    system_prompt: str = ""
    max_seq_len: int = Field(512, ge=16, le=131072)
    train: float = Field(0.8, ge=0, le=1)
    validation: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    refusal_domain: str = ""
    refusal_fraction: float = Field(0.0, ge=0, le=1)
    seed: int = 0

    def request(self, dataset_id: str) -> data_pb2.PrepareDatasetRequest:
        request = data_pb2.PrepareDatasetRequest(
            dataset_id=dataset_id,
            base_model=self.base_model,
            template=TEMPLATES[self.template],
            system_prompt=self.system_prompt,
            max_seq_len=self.max_seq_len,
            split=data_pb2.SplitFractions(train=self.train, validation=self.validation, test=self.test),
            seed=self.seed,
        )
        if self.refusal_domain:
            request.refusals.CopyFrom(
                data_pb2.RefusalOptions(domain=self.refusal_domain, fraction=self.refusal_fraction)
            )
        return request

    def command(self, dataset_id: str) -> str:
        parts = [
            f"ftctl data prepare {dataset_id} --base-model {self.base_model} --max-seq-len {self.max_seq_len}",
            f"--split {self.train},{self.validation},{self.test}",
        ]
        if self.template != "model":
            parts.append(f"--template {self.template}")
        if self.system_prompt:
            parts.append(f"--system-prompt {self.system_prompt!r}")
        return " ".join(parts)


class JobForm(FormModel):
    base_model: str = Field(DEFAULT_BASE_MODEL_NAME, min_length=1)
    prepared_version_id: str = Field(min_length=1)
    display_name: str = ""
    # Empty fields keep the trainer's defaults (chosen from the data's size): only what is filled is sent.
    learning_rate: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    lora_rank: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)

    def request(self) -> trainer_pb2.CreateJobRequest:
        hyperparameters = trainer_pb2.Hyperparameters(
            **{name: value for name, value in self._hyperparameters().items() if value is not None}
        )
        return trainer_pb2.CreateJobRequest(
            base_model=self.base_model,
            prepared_version_id=self.prepared_version_id,
            hyperparameters=hyperparameters,
            display_name=self.display_name,
        )

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
