"""The declarative pipeline file: dataset, base model, preparation, hyperparameters, evaluation, promotion."""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(Strict):
    path: Path
    name: str
    format: Literal["", "jsonl", "json", "csv", "parquet"] = ""  # empty: detected
    field_mapping: dict[str, str] = {}
    strict: bool = False
    redact_pii: bool = False
    encoding: str = ""  # empty: utf-8
    # Email domains, addresses or phone numbers the model should learn: never redacted.
    pii_allow: list[str] = []


class RefusalSpec(Strict):
    domain: str
    fraction: float = Field(0.15, ge=0, le=1)
    text: str = ""


class PrepareSpec(Strict):
    template: Literal["chat", "alpaca", "question_answer"] = "chat"
    system_prompt: str = ""
    max_seq_len: int = Field(512, gt=0)
    truncation: Literal["drop", "truncate"] = "drop"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    refusals: RefusalSpec | None = None
    redact_pii: bool = False
    strict_pii: bool = False  # refuse to prepare while unredacted PII remains
    pii_allow: list[str] = []


class EvalSpec(Strict):
    split: str = "test"
    max_examples: int = Field(0, ge=0)
    max_tokens: int = Field(96, gt=0)
    benchmarks: list[dict[str, Any]] = []
    promotion_rule: dict[str, Any] = {}
    # Each: the questions themselves, or a text file of them, one a line (relative to the pipeline file).
    off_topic_probes: list[str] | Path = []  # empty: the evaluator's built-in set
    in_domain_probes: list[str] | Path = []  # asked besides the split's own in-domain questions


class PipelineSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    base_model: str
    dataset: DatasetSpec
    prepare: PrepareSpec = PrepareSpec()
    # Keys are finetune.v1.Hyperparameters fields; unknown ones are rejected by name.
    hyperparameters: dict[str, Any] = {}
    eval: EvalSpec = EvalSpec()
    promote_alias: str = "prod"


class PipelineSpecError(ValueError):
    pass


def load_spec(path: Path) -> PipelineSpec:
    """Reads and validates a pipeline file; errors name the field and the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineSpecError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise PipelineSpecError(f"{path}: expected a mapping at the top level")
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PipelineSpecError(f"{path}: {problems}") from exc
    if not spec.dataset.path.is_absolute():
        spec.dataset.path = (path.parent / spec.dataset.path).resolve()
    spec.eval.off_topic_probes = _probes(path, "eval.off_topic_probes", spec.eval.off_topic_probes)
    spec.eval.in_domain_probes = _probes(path, "eval.in_domain_probes", spec.eval.in_domain_probes)
    return spec


def _probes(spec_path: Path, field: str, value: list[str] | Path) -> list[str]:
    if isinstance(value, list):
        return value
    probes_path = value if value.is_absolute() else spec_path.parent / value
    try:
        lines = probes_path.read_text().splitlines()
    except OSError as exc:
        raise PipelineSpecError(f"{spec_path}: {field}: {exc}") from exc
    return [line.strip() for line in lines if line.strip()]
