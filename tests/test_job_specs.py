"""One typed spec per job kind (ftcommon/specs): every proto field has its spec field and back, spec -> proto
-> spec is the identity, "unset" stays apart from 0, and errors name the field; a pipeline file, a job file
and CLI flags asking for the same thing build the same request (through the functions the commands use)."""

import re
from pathlib import Path

import pytest
import typer
import yaml
from google.protobuf.message import Message
from pydantic import BaseModel

from finetune.v1 import data_pb2, eval_pb2, trainer_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.specs.evaluate import EvalSpec
from ftcommon.specs.prepare import DEFAULT_REFUSAL_FRACTION, PrepareSpec
from ftcommon.specs.proto_bridge import spec_fields_mismatch
from ftcommon.specs.train import Hyperparameters, TrainSpec
from ftctl.data import prepare_spec
from ftctl.evaluation import eval_spec
from ftctl.pipeline import eval_request, prepare_request
from ftctl.pipeline import train_spec as pipeline_train_spec
from ftctl.pipeline_spec import PipelineSpecError, load_spec
from ftctl.train import train_spec

SPECS: list[tuple[type[BaseModel], type[Message]]] = [
    (TrainSpec, trainer_pb2.CreateJobRequest),
    (Hyperparameters, trainer_pb2.Hyperparameters),
    (PrepareSpec, data_pb2.PrepareDatasetRequest),
    (EvalSpec, eval_pb2.CreateRunRequest),
]


@pytest.mark.parametrize(("spec", "message"), SPECS, ids=lambda item: getattr(item, "__name__", ""))
def test_every_proto_field_has_a_spec_field_and_back(spec: type[BaseModel], message: type[Message]) -> None:
    assert spec_fields_mismatch(spec, message.DESCRIPTOR) == []


def test_a_proto_field_without_its_spec_field_is_found() -> None:
    class Short(BaseModel):
        base_model: str
        prepared_version_id: str
        hyperparameters: Hyperparameters
        idempotency_key: str

    assert spec_fields_mismatch(Short, trainer_pb2.CreateJobRequest.DESCRIPTOR) == [
        "finetune.v1.CreateJobRequest.display_name: in the proto, not in Short"
    ]


def test_every_spec_field_has_its_help_text() -> None:
    for name, field in Hyperparameters.model_fields.items():
        assert field.description, name


FULL_TRAIN = TrainSpec(
    base_model="smollm2-135m-instruct",
    prepared_version_id="pv-1",
    hyperparameters=Hyperparameters(
        method="full",
        target_modules=["q_proj", "v_proj"],
        epochs=2.5,
        warmup_steps=0,
        schedule="linear",
        lora_dropout=0.0,
        packing=False,
        num_processes=2,
        strategy="fsdp",
        precision="fp32",
    ),
    idempotency_key="k",
    display_name="n",
)
FULL_PREPARE = PrepareSpec(
    dataset_id="ds-1",
    base_model="m",
    template="question_answer",
    system_prompt="Be brief.",
    max_seq_len=256,
    truncation="truncate",
    split=[0.7, 0.1, 0.2],
    seed=3,
    refusals={"domain": "the platform", "fraction": 0.0},
    pii={"redact": True, "allow": ["b.example", "a.example"]},
    preference_pairs={"from_refusals": True, "generator": "g", "max_new_tokens": 16},
)
FULL_EVAL = EvalSpec(
    models=["base", "tuned"],
    data={"prepared_version_id": "pv-1", "split": "validation"},
    metrics=["token_f1"],
    max_examples=5,
    generation={"max_tokens": 8, "stop": ["\n"], "seed": 0},
    benchmarks=[{"name": "mmlu", "path": "/x", "limit": 2}],
    promotion_rule={"min_delta": 0.0, "max_wrong_refusal_rate": 0.05},
    in_domain_probes=["How do I prepare a dataset?"],
)


@pytest.mark.parametrize("spec", [FULL_TRAIN, FULL_PREPARE, FULL_EVAL], ids=lambda s: type(s).__name__)
def test_spec_to_proto_to_spec_is_the_identity(spec: BaseModel) -> None:
    message = spec.to_request()
    again = type(spec).from_request(message)
    assert again == spec
    assert again.to_request() == message


def test_enums_are_spelled_by_their_short_name() -> None:
    message = TrainSpec(
        base_model="m", prepared_version_id="pv", hyperparameters={"method": "lora"}
    ).to_request()
    assert message.hyperparameters.method == trainer_pb2.TRAINING_METHOD_LORA
    assert FULL_PREPARE.to_request().template == data_pb2.PROMPT_TEMPLATE_QUESTION_ANSWER
    with pytest.raises(InvalidArgument) as err:
        Hyperparameters.from_proto(trainer_pb2.Hyperparameters(method=99))
    assert err.value.field == "hyperparameters.method"


def test_unset_stays_unset_and_zero_is_refused_by_name() -> None:
    unset = TrainSpec(base_model="m", prepared_version_id="pv")
    message = unset.to_request()
    assert not message.HasField("hyperparameters")
    assert TrainSpec.from_request(message).hyperparameters.epochs is None
    zero = trainer_pb2.CreateJobRequest(
        base_model="m", prepared_version_id="pv", hyperparameters=trainer_pb2.Hyperparameters(epochs=0)
    )
    with pytest.raises(InvalidArgument) as err:
        TrainSpec.from_request(zero)
    assert err.value.field == "hyperparameters.epochs"
    # Where 0 is a value, it travels as one: warmup 0 is "no warmup", not "the default".
    no_warmup = TrainSpec(base_model="m", prepared_version_id="pv", hyperparameters={"warmup_steps": 0})
    assert TrainSpec.from_request(no_warmup.to_request()).hyperparameters.warmup_steps == 0


def test_prepare_defaults_live_in_the_spec() -> None:
    plain = PrepareSpec.from_request(data_pb2.PrepareDatasetRequest(dataset_id="ds", base_model="m"))
    assert (plain.max_seq_len, plain.split.as_tuple(), plain.refusals.fraction) == (
        2048,
        (0.8, 0.1, 0.1),
        0.0,
    )
    asked = data_pb2.PrepareDatasetRequest(
        dataset_id="ds", base_model="m", refusals=data_pb2.RefusalOptions(domain="the platform")
    )
    assert PrepareSpec.from_request(asked).refusals.fraction == DEFAULT_REFUSAL_FRACTION
    asked.refusals.fraction = 0.0  # set: no refusal rows, though a domain is named
    assert PrepareSpec.from_request(asked).refusals.fraction == 0.0
    with pytest.raises(InvalidArgument) as err:
        PrepareSpec.from_request(
            data_pb2.PrepareDatasetRequest(dataset_id="ds", base_model="m", max_seq_len=0)
        )
    assert err.value.field == "max_seq_len"


# Every entry point builds its request through the spec: the same asked-for values give the same request.

HYPERPARAMETERS = {"method": "lora", "lora_rank": 8, "learning_rate": 0.0005, "epochs": 2, "batch_size": 4}
PREPARE = {
    "max_seq_len": 256,
    "split": [0.75, 0.05, 0.2],
    "seed": 3,
    "refusals": {"domain": "the platform"},
    "pii": {"redact": True, "allow": ["company.internal"]},
    "preference_pairs": {"from_refusals": True, "max_new_tokens": 32},
}


def pipeline_file(folder: Path, **sections: object) -> Path:
    path = folder / "pipeline.yaml"
    document = {
        "name": "same-request",
        "base_model": "smollm2-135m-instruct",
        "dataset": {"path": "data.jsonl", "name": "d"},
        **sections,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_pipeline_file_a_config_file_and_flags_ask_for_the_same_training_job(tmp_path: Path) -> None:
    pipeline = load_spec(pipeline_file(tmp_path, hyperparameters=HYPERPARAMETERS))
    from_pipeline = pipeline_train_spec(pipeline, "pv-1", attempt=0).to_request()
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"hyperparameters": HYPERPARAMETERS}))
    common = ("pv-1", "smollm2-135m-instruct")
    names = (pipeline.name, from_pipeline.idempotency_key)
    from_config = train_spec(*common, config, {}, *names).to_request()
    from_flags = train_spec(*common, None, HYPERPARAMETERS, *names).to_request()
    assert from_pipeline == from_config == from_flags
    assert from_flags.hyperparameters.method == trainer_pb2.TRAINING_METHOD_LORA
    assert not from_flags.hyperparameters.HasField("warmup_steps")  # not asked for: the trainer decides


def test_flags_override_the_config_file_and_only_given_flags_count(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(HYPERPARAMETERS))  # a bare mapping works too
    flags = {"lora_rank": 4, "max_steps": None, "seed": 0}
    request = train_spec("pv-1", "m", config, flags).to_request()
    assert request.hyperparameters.lora_rank == 4 and request.hyperparameters.HasField("seed")
    assert not request.hyperparameters.HasField("max_steps")
    with pytest.raises(typer.BadParameter, match="hyperparameters.epochs"):
        train_spec("pv-1", "m", config, {"epochs": 0})


def test_a_pipeline_file_and_prepare_flags_ask_for_the_same_prepare(tmp_path: Path) -> None:
    pipeline = load_spec(pipeline_file(tmp_path, prepare=PREPARE))
    from_pipeline = prepare_request(pipeline, "ds-1")
    flags = {
        "max_seq_len": 256,
        "split": "0.75,0.05,0.2",
        "seed": 3,
        "refusal_domain": "the platform",
        "redact_pii": True,
        "pii_allow": ["company.internal"],
        "refusal_pairs": True,
        "pair_max_new_tokens": 32,
        "template": None,
    }
    from_flags = prepare_spec("ds-1", "smollm2-135m-instruct", flags).to_request()
    assert from_pipeline == from_flags
    assert from_flags.refusals.fraction == DEFAULT_REFUSAL_FRACTION


def test_a_pipeline_file_and_eval_flags_ask_for_the_same_run(tmp_path: Path) -> None:
    section = {
        "data": {"split": "test"},
        "generation": {"max_tokens": 64},
        "promotion_rule": {"min_delta": 0.0},
    }
    pipeline = load_spec(pipeline_file(tmp_path, eval=section))
    from_pipeline = eval_request(pipeline, "base", "tuned", "pv-1", attempt=0)
    from_flags = eval_spec(
        "base,tuned",
        {"prepared_version_id": "pv-1", "split": "test"},
        [],
        0,
        "",
        {"min_delta": 0.0, "min_refusal_rate": None},
        {"off_topic_probes": None},
        max_tokens=64,
    ).to_request()
    from_flags.idempotency_key = from_pipeline.idempotency_key  # the pipeline's own, for its re-runs
    assert from_pipeline == from_flags
    assert from_flags.promotion_rule.HasField("min_delta")
    assert not from_flags.promotion_rule.HasField("min_refusal_rate")


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"hyperparameters": {"lora_rnak": 8}}, "hyperparameters.lora_rnak"),
        ({"prepare": {"max_seq": 128}}, "prepare.max_seq"),
        ({"eval": {"max_tokens": 8}}, "eval.max_tokens"),
        ({"eval": {"models": ["a"]}}, "eval.models: set by the pipeline"),
    ],
)
def test_an_unknown_key_in_a_pipeline_file_is_refused_by_name(
    tmp_path: Path, sections: dict[str, object], named: str
) -> None:
    with pytest.raises(PipelineSpecError, match=re.escape(named)):
        load_spec(pipeline_file(tmp_path, **sections))


def test_an_unknown_key_in_a_job_file_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("hyperparameters:\n  method: lora\n  lora_rnak: 8\n")
    with pytest.raises(typer.BadParameter, match="hyperparameters.lora_rnak: Extra inputs are not permitted"):
        train_spec("pv-1", "m", config, {})
