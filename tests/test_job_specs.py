"""One typed spec per job kind (ftcommon/specs): every proto field has its spec field and back, spec -> proto
-> spec is the identity, "unset" stays apart from 0, and errors name the field."""

import pytest
from google.protobuf.message import Message
from pydantic import BaseModel

from finetune.v1 import data_pb2, eval_pb2, trainer_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.specs.evaluate import EvalSpec
from ftcommon.specs.prepare import DEFAULT_REFUSAL_FRACTION, PrepareSpec
from ftcommon.specs.proto_bridge import spec_fields_mismatch
from ftcommon.specs.train import Hyperparameters, TrainSpec

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
