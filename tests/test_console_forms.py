"""The console's forms as a browser fills them, drawn from the job specs: blank inputs keep the spec's
defaults, every input shows its default and help text, and the command and pipeline YAML say the same."""

import pytest
import yaml
from pydantic import ValidationError

from ftcommon.specs.prepare import PrepareSpec
from ftcommon.specs.train import Hyperparameters
from services.console.peers import ConsoleError
from services.console.protocol_evaluations import EvalForm
from services.console.spec_forms import (
    PREPARE_COMMON,
    PREPARE_OWN_INPUTS,
    TRAIN_COMMON,
    fields_of,
    prepare_equivalents,
    prepare_spec,
    train_equivalents,
    train_spec,
)


def test_the_training_form_shows_every_hyperparameter_with_its_default_and_help() -> None:
    fields = {f.name: f for f in fields_of(Hyperparameters, set(), TRAIN_COMMON)}
    assert set(fields) == set(Hyperparameters.model_fields)
    assert fields["learning_rate"].default == "0.001" and fields["learning_rate"].common
    assert fields["epochs"].default == "auto" and "training rows" in fields["epochs"].help
    assert fields["method"].choices[:3] == ("lora", "full", "qlora") and fields["packing"].choices == (
        "yes",
        "no",
    )
    assert [f.name for f in fields_of(Hyperparameters, set(), TRAIN_COMMON)][:2] == [
        "learning_rate",
        "epochs",
    ]
    prepare = {f.name: f for f in fields_of(PrepareSpec, PREPARE_OWN_INPUTS, PREPARE_COMMON)}
    assert prepare["split"].default == "0.8,0.1,0.1" and "refusals.domain" in prepare
    assert "dataset_id" not in prepare and prepare["max_seq_len"].default == "2048"


def test_blank_inputs_keep_the_defaults_and_the_command_and_yaml_agree_with_the_request() -> None:
    form = {
        "base_model": "smollm2-135m-instruct",
        "prepared_version_id": "pv-1",
        "learning_rate": "",
        "epochs": "2",
        "lora_dropout": "0.1",
        "packing": "no",
        "csrf_token": "ignored",
    }
    spec = train_spec(form)
    assert spec.hyperparameters.learning_rate == 1e-3 and spec.hyperparameters.epochs == 2
    assert spec.hyperparameters.model_fields_set == {"epochs", "lora_dropout", "packing"}
    shown = train_equivalents(spec)
    assert "--epochs 2" in shown.command and "--learning-rate" not in shown.command
    assert shown.command.endswith("--config job.yaml")  # lora_dropout has no flag of its own
    assert yaml.safe_load(shown.yaml) == {
        "hyperparameters": {"epochs": 2.0, "lora_dropout": 0.1, "packing": False}
    }
    request = spec.to_request()
    assert request.hyperparameters.epochs == 2 and not request.hyperparameters.HasField("learning_rate")

    prepared = prepare_spec(
        "ds-1",
        {"base_model": "smollm2-135m-instruct", "split": "0.7,0.1,0.2", "refusals.domain": "our portal"},
    )
    shown = prepare_equivalents(prepared)
    assert "--split 0.7,0.1,0.2" in shown.command and "--refusal-domain 'our portal'" in shown.command
    section = yaml.safe_load(shown.yaml)["prepare"]
    assert section["split"] == [0.7, 0.1, 0.2] and section["refusals"]["domain"] == "our portal"


def test_bad_values_are_named_by_the_specs_field() -> None:
    with pytest.raises(ConsoleError, match="hyperparameters.lora_rank"):
        train_spec({"base_model": "m", "prepared_version_id": "pv", "lora_rank": "0"})
    with pytest.raises(ConsoleError, match="split"):
        prepare_spec("ds", {"base_model": "m", "split": "0.5,0.5"})
    with pytest.raises(ValidationError, match="baseline"):
        EvalForm.model_validate({"baseline": "", "prepared_version_id": "pv-1"})
    run = EvalForm(baseline="a", candidate="b", prepared_version_id="pv", max_tokens=8).request()
    assert list(run.models) == ["a", "b"] and run.generation.max_tokens == 8 and run.data.split == "test"
