"""Defaults that learn: epochs, warmup and the validation interval chosen from the data's size, recorded in
the job and printed; zero or negative hyperparameters and non-finite splits refused by name, with nothing
stored; a test split too small to judge a model warned about, with a split proposed."""

import math
import sqlite3
import time
from pathlib import Path

import grpc
import pytest
from data_fixtures import prepared_qa_version
from trainer_support import FACTS
from typer.testing import CliRunner

from finetune.v1 import common_pb2, data_pb2, trainer_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.specs.train import Hyperparameters
from ftctl.main import app
from services.data.split_advice import MIN_TEST_ROWS, small_test_split_warning
from services.trainer.job_spec import stored_spec
from services.trainer.schedule import MAX_AUTO_EPOCHS, MIN_OPTIMIZER_STEPS, MIN_VALIDATIONS, plan

from_proto = Hyperparameters.from_proto
DEFAULTS = from_proto(trainer_pb2.Hyperparameters())
# Fields where zero means nothing sensible: set to 0 (or below), each is refused by its name.
MUST_BE_POSITIVE = [
    "lora_rank",
    "lora_alpha",
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "num_processes",
]
# Fields where zero is a real choice (no dropout, no warmup, no decay, no clipping, never stop early).
ZERO_IS_A_VALUE = [
    "lora_dropout",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "early_stopping_patience",
    "seed",
]


def validations_run(total_steps: int, every: int) -> int:
    """What the recipe does: validate every `every` steps and at the last step."""
    return sum(1 for step in range(1, total_steps + 1) if step % every == 0 or step == total_steps)


@pytest.mark.parametrize("field", MUST_BE_POSITIVE)
@pytest.mark.parametrize("value", [0, -1])
def test_zero_or_negative_is_refused_by_name_not_replaced_by_a_default(field: str, value: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        from_proto(trainer_pb2.Hyperparameters(**{field: value}))
    assert err.value.field == f"hyperparameters.{field}"


@pytest.mark.parametrize("field", ZERO_IS_A_VALUE)
def test_zero_is_kept_where_it_means_something(field: str) -> None:
    assert getattr(from_proto(trainer_pb2.Hyperparameters(**{field: 0})), field) == 0


def test_unset_fields_take_the_defaults_and_leave_the_schedule_to_the_data() -> None:
    assert (DEFAULTS.lora_rank, DEFAULTS.batch_size, DEFAULTS.learning_rate) == (16, 8, 1e-3)
    assert DEFAULTS.epochs is DEFAULTS.max_steps is DEFAULTS.warmup_steps is DEFAULTS.eval_every_steps is None
    message = DEFAULTS.to_proto(include_defaults=True)
    assert not message.HasField("epochs") and message.lora_rank == 16
    assert from_proto(message) == DEFAULTS


def test_jobs_stored_before_unset_and_zero_were_told_apart_still_read() -> None:
    stored = DEFAULTS.model_dump() | {"epochs": 1.0, "max_steps": 0, "eval_every_steps": 50}
    payload = {"hyperparameters": stored, "base_model_id": "m-1", "prepared_version_id": "pv-1"}
    assert stored_spec(payload).hyperparameters.max_steps is None


def test_the_readme_flow_s_80_row_csv_gets_100_steps_not_10() -> None:
    schedule = plan(DEFAULTS, train_rows=80, validation_rows=4)
    chosen = schedule.hyperparameters
    assert (chosen.epochs, schedule.total_steps) == (10.0, 100)
    assert (chosen.warmup_steps, chosen.eval_every_steps) == (5, 20)
    assert schedule.chosen_defaults[0].startswith("epochs 10 (100 optimizer steps): 80 training rows")
    assert "validation every 20 steps: 5 validation losses" in schedule.chosen_defaults[2]


@pytest.mark.parametrize(
    ("train_rows", "epochs", "total_steps"),
    [
        (339, 3, 128),  # the demo's training split
        (1137, 1, 143),  # lamini_docs: one epoch is past the floor already
        (20, MAX_AUTO_EPOCHS, 25),  # too small for 100 steps in 10 epochs: capped, and it says so
    ],
)
def test_epochs_reach_the_step_floor_within_the_cap(train_rows: int, epochs: int, total_steps: int) -> None:
    schedule = plan(DEFAULTS, train_rows)
    assert (schedule.hyperparameters.epochs, schedule.total_steps) == (epochs, total_steps)
    if total_steps < MIN_OPTIMIZER_STEPS:
        assert "add rows" in schedule.chosen_defaults[0]


@pytest.mark.parametrize("train_rows", [1, 7, 8, 9, 40, 80, 333, 800, 801, 5000, 123_457])
def test_validation_shows_at_least_five_times_whatever_the_size(train_rows: int) -> None:
    schedule = plan(DEFAULTS, train_rows)
    every = schedule.hyperparameters.eval_every_steps
    assert validations_run(schedule.total_steps, every) >= min(MIN_VALIDATIONS, schedule.total_steps)
    assert 1 <= schedule.hyperparameters.warmup_steps <= max(1, math.ceil(0.05 * schedule.total_steps))


def test_what_the_caller_set_is_kept() -> None:
    given = from_proto(trainer_pb2.Hyperparameters(epochs=1, warmup_steps=0, eval_every_steps=7))
    schedule = plan(given, train_rows=80)
    assert (schedule.total_steps, schedule.hyperparameters.warmup_steps) == (10, 0)
    assert schedule.hyperparameters.eval_every_steps == 7 and schedule.chosen_defaults == []
    limited = plan(from_proto(trainer_pb2.Hyperparameters(max_steps=6, batch_size=2)), train_rows=80)
    assert limited.total_steps == 6 and limited.hyperparameters.epochs is None


def test_a_small_test_split_is_warned_about_with_a_split_that_fixes_it() -> None:
    assert small_test_split_warning(484, 25, (0.9, 0.05, 0.05)) is None
    warning = small_test_split_warning(84, 4, (0.9, 0.05, 0.05))
    assert warning.startswith(f"the test split holds 4 rows, fewer than {MIN_TEST_ROWS}")
    assert "--split 0.70,0.05,0.25 (about 21 test rows of 84)" in warning
    hopeless = small_test_split_warning(40, 2, (0.9, 0.05, 0.05))
    assert "no split fixes it: add rows (at least 67" in hopeless


# Through the services: real gRPC servers on loopback; no worker runs, so queued jobs stay queued.


def _create(stub, version_id: str = "pv-none", **fields: object) -> trainer_pb2.TrainingJob:
    return stub.CreateJob(
        trainer_pb2.CreateJobRequest(
            base_model="smollm2-135m-instruct",
            prepared_version_id=version_id,
            hyperparameters=trainer_pb2.Hyperparameters(**fields),
        )
    )


@pytest.mark.parametrize("field", ["epochs", "batch_size", "lora_rank", "num_processes"])
def test_create_job_with_a_zero_is_invalid_argument_and_queues_nothing(trainer_stub, field: str) -> None:
    before = len(trainer_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs)
    with pytest.raises(grpc.RpcError) as err:
        _create(trainer_stub, **{field: 0})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"hyperparameters.{field}" in err.value.details()
    assert len(trainer_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs) == before


@pytest.mark.parametrize(
    "fractions", [(math.nan, 0, 0), (math.inf, 0, 0), (1.2, -0.1, -0.1), (0.5, 0.2, 0.2)]
)
def test_a_split_that_is_not_finite_non_negative_and_summing_to_1_stores_nothing(
    data_stub, data_root: Path, fractions: tuple[float, float, float]
) -> None:
    source = data_root / "split-check.jsonl"
    source.write_text('{"question": "Q?", "answer": "A."}\n')
    dataset = data_stub.RegisterDataset(
        data_pb2.RegisterDatasetRequest(
            options=data_pb2.IngestOptions(name="split-check"), source=str(source)
        )
    )
    train, validation, test = fractions
    with pytest.raises(grpc.RpcError) as err:
        data_stub.PrepareDataset(
            data_pb2.PrepareDatasetRequest(
                dataset_id=dataset.id,
                base_model="smollm2-135m-instruct",
                split=data_pb2.SplitFractions(train=train, validation=validation, test=test),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "split" in err.value.details() and "finite, non-negative, sum to 1" in err.value.details()
    versions = data_stub.ListPreparedVersions(data_pb2.ListPreparedVersionsRequest(dataset_id=dataset.id))
    assert list(versions.versions) == []
    with sqlite3.connect(data_root / "data.db") as db:
        (queued,) = db.execute(
            "SELECT count(*) FROM prepare_jobs WHERE payload LIKE ?", (f"%{dataset.id}%",)
        ).fetchone()
    assert queued == 0


@pytest.fixture(scope="module")
def trainer_beside_data(data_root, data_server, trainer_server):
    """A trainer that knows where the data service listens (CreateJob reads the version's size there)."""
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_root, port=0, data_address=data_server.address))
    yield running.address
    running.stop(grace=1)


def test_the_chosen_defaults_are_printed_and_recorded_in_the_job(
    data_stub, trainer_stub, data_root, trainer_beside_data
) -> None:
    split = data_pb2.SplitFractions(train=0.8, validation=0.2, test=0.0)
    version_id = prepared_qa_version(data_stub, data_root, "defaults-chosen", FACTS, split, seed=3)
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=version_id))
    # No test rows at all: the version says so, and proposes a split (20 rows: no split gets 20 test rows).
    assert len(version.warnings) == 1 and "the test split holds 0 rows" in version.warnings[0]
    train_rows = version.split_stats["train"].examples
    name = f"defaults-{time.monotonic_ns()}"
    result = CliRunner().invoke(
        app,
        ["train", "create", "--dataset", version_id, "--name", name],
        env={"FT_TRAINER_ADDRESS": trainer_beside_data},
    )
    assert result.exit_code == 0, result.output
    expected = plan(DEFAULTS, train_rows)
    assert (
        f"default chosen: epochs {MAX_AUTO_EPOCHS} ({expected.total_steps} optimizer steps)" in result.output
    )
    assert "default chosen: validation every" in result.output
    (job,) = [j for j in trainer_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs if j.display_name == name]
    try:
        recorded = job.hyperparameters
        assert recorded.epochs == expected.hyperparameters.epochs
        assert recorded.warmup_steps == expected.hyperparameters.warmup_steps
        assert recorded.eval_every_steps == expected.hyperparameters.eval_every_steps
        assert job.total_steps == expected.total_steps
        assert list(job.chosen_defaults) == expected.chosen_defaults
        events = trainer_stub.WatchJob(common_pb2.WatchRequest(id=job.status.id), timeout=5)
        logged = []
        for event in events:
            if event.kind == common_pb2.EVENT_KIND_LOG:
                logged.append(event.message)
            if len(logged) == len(expected.chosen_defaults):
                events.cancel()
                break
        assert logged == [f"default chosen: {sentence}" for sentence in expected.chosen_defaults]
    finally:
        # No worker runs here, but a worker of another test module sharing this data root must not train it.
        trainer_stub.CancelJob(trainer_pb2.GetJobRequest(id=job.status.id))
