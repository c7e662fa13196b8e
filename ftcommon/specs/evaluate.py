"""EvalSpec: an evaluation run as asked (EvalService.CreateRun).

What depends on the service's configuration stays unset here and is decided there: the answer length
(`generation.max_tokens` 0: the evaluator's `default_max_tokens`) and the promotion rule's thresholds (unset:
the evaluator's settings, or the refusal rule for data with refusal rows; see services/eval/promotion.py).
Checks that need the service (known metrics and benchmarks, readable paths, that the models exist) are the
evaluator's too.
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from finetune.v1 import eval_pb2
from ftcommon.specs.proto_bridge import SpecFieldError, from_message, to_message

Split = Literal["train", "validation", "test"]


class EvalData(BaseModel):
    """finetune.v1.EvalData: a prepared version's split, or an uploaded eval set."""

    model_config = ConfigDict(extra="forbid")

    prepared_version_id: str | None = Field(None, description="A prepared version; its `split` is evaluated.")
    dataset_id: str | None = Field(None, description="An uploaded dataset to evaluate on instead.")
    split: Split = Field("test", description="train | validation | test.")

    @model_validator(mode="after")
    def _one_source(self) -> "EvalData":
        if self.prepared_version_id and self.dataset_id:
            raise SpecFieldError("dataset_id", "set a prepared version or a dataset, not both")
        return self


class SamplingParams(BaseModel):
    """finetune.v1.SamplingParams of the answers: greedy unless a temperature is given."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(0, ge=0, description="The longest answer; 0: the evaluator's default.")
    temperature: float = Field(0.0, ge=0, description="0: greedy, reproducible.")
    top_p: float = Field(0.0, ge=0, le=1, description="0: no nucleus cut.")
    stop: list[str] = []
    seed: int | None = Field(None, description="unset: the run's seed.")


class BenchmarkSpec(BaseModel):
    """finetune.v1.BenchmarkSpec: a standard benchmark from a local file or folder."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="mmlu | openbookqa | arc | truthfulqa_mc.")
    path: str = Field(description="A local file or folder in that benchmark's layout.")
    limit: int = Field(0, ge=0, description="Questions to ask; 0: all.")


class PromotionRule(BaseModel):
    """finetune.v1.PromotionRule. Unset thresholds are the evaluator's (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid")

    primary_metric: str = Field(
        "", description="The metric the candidate must beat the baseline on; empty: token_f1."
    )
    min_delta: float | None = Field(None, description="The delta interval's lower bound must exceed this.")
    min_refusal_rate: float | None = Field(None, description="On off-topic questions; 0: no refusal check.")
    max_wrong_refusal_rate: float | None = Field(None, description="On in-domain questions; 1: no check.")

    @field_validator("min_refusal_rate", "max_wrong_refusal_rate")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 1:  # NaN fails this too
            raise ValueError("must be a fraction between 0 and 1")
        return value

    @field_validator("min_delta")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class EvalSpec(BaseModel):
    """An evaluation run as asked: finetune.v1.CreateRunRequest."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field([], description="Ids, names or aliases; the first is the baseline.")
    data: EvalData = Field(default_factory=EvalData)
    metrics: list[str] = Field([], description="The metrics to compute; empty: all.")
    max_examples: int = Field(0, ge=0, description="0 evaluates the whole split.")
    generation: SamplingParams = Field(default_factory=SamplingParams)
    seed: int = 0
    benchmarks: list[BenchmarkSpec] = []
    off_topic_probes: list[str] = Field(
        [], description="Questions that must be refused; empty: the built-in set."
    )
    refusal_text: str = Field("", description="The refusal the model was taught.")
    promotion_rule: PromotionRule = Field(default_factory=PromotionRule)
    idempotency_key: str = Field("", description="Retrying with the same key returns the same run.")
    judge_model: str = Field(
        "", description="LLM-as-judge with this model, when 'judge' is among the metrics."
    )
    judge_rubric: str = ""
    in_domain_probes: list[str] = Field(
        [], description="In-domain questions that must not be refused, besides the split's own."
    )

    @field_validator("models", "metrics")
    @classmethod
    def _no_blanks(cls, value: list[str]) -> list[str]:
        return [item.strip() for item in value if item.strip()]

    def to_request(self, *, include_defaults: bool = False) -> eval_pb2.CreateRunRequest:
        return to_message(self, eval_pb2.CreateRunRequest, include_defaults=include_defaults)

    @classmethod
    def from_request(cls, request: eval_pb2.CreateRunRequest) -> "EvalSpec":
        return from_message(request, cls)
