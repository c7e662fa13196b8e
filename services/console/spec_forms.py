"""The prepare and training forms, drawn from the job specs (ftcommon/specs) and read back into them: each
input shows the spec's default and help text, a blank input leaves the field to that default (on the
server, as the CLI does), and the page shows the same request as an `ftctl` command and as YAML for a
pipeline file (`prepare:` / `hyperparameters:`, also what `ftctl train create --config` reads)."""

import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ftcommon.errors import InvalidArgument
from ftcommon.specs.prepare import PrepareSpec, SplitFractions
from ftcommon.specs.proto_bridge import validate_spec
from ftcommon.specs.train import Hyperparameters, TrainSpec
from services.console.peers import ConsoleError

# Fields the page asks for with inputs of its own (or that only a program sets).
PREPARE_OWN_INPUTS = {"dataset_id", "base_model"}
# The first ones a person changes; the rest sit under "More settings".
PREPARE_COMMON = ("template", "max_seq_len", "split", "system_prompt", "refusals.domain", "refusals.fraction")
TRAIN_COMMON = ("learning_rate", "epochs", "max_steps", "lora_rank", "batch_size", "method")

# `ftctl data prepare` / `ftctl train create` flags by spec field; a field without one needs the YAML file.
PREPARE_FLAGS = {
    "template": "--template",
    "system_prompt": "--system-prompt",
    "max_seq_len": "--max-seq-len",
    "truncation": "--truncation",
    "split": "--split",
    "seed": "--seed",
    "refusals.domain": "--refusal-domain",
    "refusals.fraction": "--refusal-fraction",
    "refusals.refusal_text": "--refusal-text",
    "pii.redact": "--redact-pii",
    "pii.strict": "--strict-pii",
    "pii.allow": "--pii-allow",
    "preference_pairs.from_refusals": "--refusal-pairs",
    "preference_pairs.generator": "--pair-generator",
    "preference_pairs.max_new_tokens": "--pair-max-new-tokens",
}
TRAIN_FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "method",
        "lora_rank",
        "learning_rate",
        "epochs",
        "max_steps",
        "batch_size",
        "gradient_accumulation_steps",
        "num_processes",
        "seed",
    )
}


@dataclass(frozen=True)
class FieldView:
    """One input of a spec form."""

    name: str  # dotted path in the spec: "refusals.domain"
    label: str
    help: str
    default: str  # as the input's placeholder shows it
    choices: tuple[str, ...]  # a select's options ("" keeps the default); empty: a text input
    common: bool


@dataclass(frozen=True)
class Equivalents:
    command: str
    yaml: str


def _leaf_type(info: FieldInfo) -> Any:
    """The annotation without `| None`."""
    annotation = info.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    return annotation


def _is_section(info: FieldInfo) -> bool:
    kind = _leaf_type(info)
    # A split is one input ("0.8,0.1,0.1"), as the CLI's --split spells it.
    return isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not SplitFractions


def _shown(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, SplitFractions):
        return ",".join(f"{share:g}" for share in value.as_tuple())
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _walk(spec_type: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, info in spec_type.model_fields.items():
        path = f"{prefix}{name}"
        if _is_section(info):
            yield from _walk(_leaf_type(info), f"{path}.")
        else:
            yield path, info


def fields_of(spec_type: type[BaseModel], own_inputs: set[str], common: tuple[str, ...]) -> list[FieldView]:
    views = []
    for path, info in _walk(spec_type):
        if path in own_inputs:
            continue
        kind = _leaf_type(info)
        if typing.get_origin(kind) is Literal:
            choices: tuple[str, ...] = tuple(str(arg) for arg in typing.get_args(kind))
        elif kind is bool:
            choices = ("yes", "no")
        else:
            choices = ()
        default = info.get_default(call_default_factory=True)
        views.append(
            FieldView(
                name=path,
                label=path.replace(".", " ").replace("_", " ").capitalize(),
                help=info.description or "",
                default=_shown(default),
                choices=choices,
                common=path in common,
            )
        )
    return sorted(views, key=lambda view: (not view.common, common.index(view.name) if view.common else 0))


def _value(info: FieldInfo, raw: str) -> Any:
    kind = _leaf_type(info)
    if kind is bool:
        return raw == "yes"
    if typing.get_origin(kind) is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw  # the spec parses numbers and validates choices


def _nested(spec_type: type[BaseModel], form: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """The spec's values from the form's filled inputs only: a blank one stays unset (the default)."""
    values: dict[str, Any] = {}
    for name, info in spec_type.model_fields.items():
        path = f"{prefix}{name}"
        if _is_section(info):
            section = _nested(_leaf_type(info), form, f"{path}.")
            if section:
                values[name] = section
        elif (raw := str(form.get(path, "")).strip()) != "":
            values[name] = _value(info, raw)
    return values


def _validated(spec_type: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return validate_spec(spec_type, values)
    except InvalidArgument as err:
        raise ConsoleError(f"field '{err.field}': {err.message}", 400) from None


def prepare_spec(dataset_id: str, form: Mapping[str, str]) -> PrepareSpec:
    values = _nested(PrepareSpec, form)
    values.update(dataset_id=dataset_id, base_model=str(form.get("base_model", "")).strip())
    return _validated(PrepareSpec, values)


def train_spec(form: Mapping[str, str]) -> TrainSpec:
    values = {
        "base_model": str(form.get("base_model", "")).strip(),
        "prepared_version_id": str(form.get("prepared_version_id", "")).strip(),
        "display_name": str(form.get("display_name", "")).strip(),
        "hyperparameters": _nested(Hyperparameters, form),
    }
    return _validated(TrainSpec, values)


def _given(spec: BaseModel) -> dict[str, Any]:
    """What the person set (spec defaults left out), in the spec's own JSON spelling."""
    return spec.model_dump(mode="json", exclude_unset=True)


def _flat(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in values.items():
        if isinstance(value, dict) and name != "split":
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _flags(given: dict[str, Any], flags: dict[str, str]) -> tuple[list[str], list[str]]:
    """Flags for what has one, and the names of what only a YAML file can say."""
    parts, without = [], []
    for path, value in _flat(given):
        flag = flags.get(path)
        if flag is None:
            without.append(path)
        elif isinstance(value, bool):
            parts.extend([flag] if value else [])
        elif path == "split":
            parts.append(f"{flag} {value['train']:g},{value['validation']:g},{value['test']:g}")
        elif isinstance(value, list):
            parts.extend(f"{flag} {_quoted(item)}" for item in value)
        else:
            parts.append(f"{flag} {_quoted(value)}")
    return parts, without


def _quoted(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return (
        text
        if text and all(c.isalnum() or c in "-_.,:/" for c in text)
        else "'" + text.replace("'", "'\\''") + "'"
    )


def _yaml(section: str, values: dict[str, Any]) -> str:
    if "split" in values:
        values = {**values, "split": [values["split"][k] for k in ("train", "validation", "test")]}
    body = yaml.safe_dump({section: values}, sort_keys=False, default_flow_style=False) if values else ""
    return body or f"{section}: {{}}  # every field at its default\n"


def prepare_equivalents(spec: PrepareSpec) -> Equivalents:
    given = {k: v for k, v in _given(spec).items() if k not in PREPARE_OWN_INPUTS}
    flags, without = _flags(given, PREPARE_FLAGS)
    command = " ".join(
        [
            f"ftctl data prepare {spec.dataset_id or 'DATASET_ID'} --base-model {_quoted(spec.base_model)}",
            *flags,
        ]
    )
    if without:
        command += f"  # {', '.join(without)}: in a pipeline file only"
    return Equivalents(command, f"base_model: {spec.base_model}\n" + _yaml("prepare", given))


def train_equivalents(spec: TrainSpec) -> Equivalents:
    given = _given(spec.hyperparameters)
    flags, without = _flags(given, TRAIN_FLAGS)
    parts = [
        f"ftctl train create --dataset {spec.prepared_version_id or 'VERSION_ID'}",
        f"--base-model {_quoted(spec.base_model)}",
        *flags,
    ]
    if spec.display_name:
        parts.append(f"--name {_quoted(spec.display_name)}")
    if without:
        parts.append("--config job.yaml")
    return Equivalents(" ".join(parts), _yaml("hyperparameters", given))
