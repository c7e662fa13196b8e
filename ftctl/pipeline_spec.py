"""The declarative pipeline file: dataset, base model, preparation, hyperparameters, evaluation, promotion.

Its `prepare`, `hyperparameters` and `eval` sections are the job specs themselves (ftcommon/specs), spelled
as `ftctl data prepare`, `ftctl train create --config` and `ftctl eval run` spell them, with the same
defaults; only what the pipeline supplies (the dataset it uploaded, the base model, the models it compares)
is left out of them.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftcommon.specs.evaluate import EvalSpec
from ftcommon.specs.generate import GenerateSpec
from ftcommon.specs.prepare import PrepareSpec
from ftcommon.specs.train import Hyperparameters

# What the pipeline fills in itself: a section that sets one of these is refused, naming it.
SUPPLIED_BY_THE_PIPELINE = {
    "prepare": ("dataset_id", "base_model"),
    "eval": ("models", "idempotency_key"),
    "eval.data": ("prepared_version_id", "dataset_id"),
    "documents.generate": ("documents", "sources", "name"),
}


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


class DocumentsSpec(Strict):
    """Documents GenerateDataset turns into the dataset, as `ftctl data generate` does: files or folders of
    them (relative to the pipeline file), the dataset's name, and GenerateSpec's settings."""

    paths: list[Path] = Field(min_length=1)
    name: str
    generate: GenerateSpec = GenerateSpec()


class PipelineSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    base_model: str
    # One of the two: a file of Q&A rows to upload, or documents to generate them from.
    dataset: DatasetSpec | None = None
    documents: DocumentsSpec | None = None
    # `dataset_id` is the uploaded dataset's, filled in when the pipeline has uploaded it.
    prepare: PrepareSpec
    hyperparameters: Hyperparameters = Hyperparameters()
    eval: EvalSpec = EvalSpec()
    promote_alias: str = "prod"

    @model_validator(mode="after")
    def _one_source_of_rows(self) -> "PipelineSpec":
        if (self.dataset is None) == (self.documents is None):
            raise ValueError("give either dataset (a file of rows) or documents (to generate rows from)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _pipeline_supplies(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        for section, keys in SUPPLIED_BY_THE_PIPELINE.items():
            values: Any = raw
            for part in section.split("."):
                values = values.get(part) if isinstance(values, dict) else None
            for key in keys:
                if isinstance(values, dict) and key in values:
                    raise ValueError(f"{section}.{key}: set by the pipeline, not by the file")
        prepare = raw.get("prepare") or {}
        if not isinstance(prepare, dict):
            return raw
        return {**raw, "prepare": {**prepare, "dataset_id": "", "base_model": raw.get("base_model", "")}}


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
    evaluation = raw.get("eval")
    if isinstance(evaluation, dict):
        raw["eval"] = {
            **evaluation,
            **{
                name: _probes(path, f"eval.{name}", evaluation[name])
                for name in ("off_topic_probes", "in_domain_probes")
                if name in evaluation
            },
        }
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PipelineSpecError(f"{path}: {problems}") from exc
    if spec.dataset is not None and not spec.dataset.path.is_absolute():
        spec.dataset.path = (path.parent / spec.dataset.path).resolve()
    if spec.documents is not None:
        spec.documents.paths = [(path.parent / p).resolve() for p in spec.documents.paths]
    return spec


def _probes(spec_path: Path, field: str, value: Any) -> Any:
    """Probes given as a text file (one question a line, relative to the pipeline file) become the list."""
    if not isinstance(value, str):
        return value
    probes_path = Path(value) if Path(value).is_absolute() else spec_path.parent / value
    try:
        lines = probes_path.read_text().splitlines()
    except OSError as exc:
        raise PipelineSpecError(f"{spec_path}: {field}: {exc}") from exc
    return [line.strip() for line in lines if line.strip()]
