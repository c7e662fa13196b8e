"""RegistryService: promotion is decided on the server from the eval service's record of a run.

Real gRPC servers on loopback: the session's registry and data service, a second trainer process over the same
database whose eval address is a real eval service, and that eval service. Its worker is off: a run's outcome
is written through the eval service's own job store, as its worker writes it, so each verdict costs
milliseconds instead of minutes of generation (tests/test_eval_service.py runs real evaluations).
"""

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from data_fixtures import jsonl, qa_rows, upload

from finetune.v1 import (
    eval_pb2,
    eval_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database
from ftcommon.grpc_client import open_channel
from ftcommon.grpc_server import RunningServer
from ftcommon.jobs import JobState, JobStore
from services.eval import tables as eval_tables
from services.eval.config import EvalSettings
from services.eval.runner import candidate_verdicts
from services.eval.server import EvalServer
from services.eval.server import build_server as build_eval_server
from services.trainer import tables as trainer_tables
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings
from services.trainer.registry import MERGED, ModelFolderInfo, ModelRegistry
from services.trainer.server import build_server as build_trainer_server


@pytest.fixture(scope="module")
def eval_settings(tmp_path_factory, trainer_server, data_server) -> EvalSettings:
    return EvalSettings(
        data_dir=tmp_path_factory.mktemp("eval"),
        port=0,
        inference_address="127.0.0.1:9",  # never reached: the worker is off
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        worker_enabled=False,
    )


@pytest.fixture(scope="module")
def eval_server(eval_settings: EvalSettings) -> Iterator[EvalServer]:
    server = build_eval_server(eval_settings)
    yield server
    server.stop(grace=0)


@pytest.fixture(scope="module")
def eval_jobs(eval_settings: EvalSettings, eval_server: EvalServer) -> JobStore:
    db = Database(eval_settings.resolved_database_url("eval"), eval_tables.metadata, eval_tables.MIGRATIONS)
    return JobStore(db, eval_tables.jobs, eval_tables.job_events, id_prefix="eval")


@pytest.fixture(scope="module")
def registry_server(data_root: Path, trainer_server, eval_server: EvalServer) -> Iterator[RunningServer]:
    """A second trainer replica over the session's database, pointed at this module's eval service."""
    running = build_trainer_server(
        TrainerSettings(data_dir=data_root, port=0, eval_address=eval_server.address)
    )
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def registry(registry_server: RunningServer) -> Iterator[registry_pb2_grpc.RegistryServiceStub]:
    with open_channel(registry_server.address, 30) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def trainer(registry_server: RunningServer) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    with open_channel(registry_server.address, 30) as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)


@pytest.fixture(scope="module")
def dataset_id(data_stub) -> str:
    return upload(data_stub, jsonl(qa_rows(3)), "registry-evidence.jsonl").id


@pytest.fixture(scope="module")
def base_id(trainer_stub) -> str:
    return trainer_stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME)).id


@pytest.fixture(scope="module")
def make_candidate(data_root: Path, tmp_path_factory, base_id: str):
    """Registers a tiny merged model trained (by lineage) from the base: the gate reads ids and lineage,
    never weights, so a few bytes stand in for a 500 MB folder."""
    settings = TrainerSettings(data_dir=data_root)
    db = Database(
        settings.resolved_database_url("trainer"), trainer_tables.metadata, trainer_tables.MIGRATIONS
    )
    models = ModelRegistry(db, ArtifactStore(settings.resolved_artifact_store_url()))
    info = ModelFolderInfo(
        chat_template="{{ messages }}", eos_token="<|im_end|>", max_context=512, parameters=1
    )

    def make(name: str) -> str:
        folder = tmp_path_factory.mktemp(name)
        (folder / "weights.txt").write_text(name)
        record = models.register_folder(
            name=name, kind=MERGED, folder=folder, lineage={"base_model_id": base_id}, info=info
        )
        return record.id

    return make


@pytest.fixture(scope="module")
def finished_run(eval_server: EvalServer, eval_jobs: JobStore, dataset_id: str):
    """Creates a run through EvalService and records its outcome as the eval worker would."""
    stub = eval_pb2_grpc.EvalServiceStub(open_channel(eval_server.address, 30))

    def finish(models: list[str], verdicts: list[str], state: JobState = JobState.SUCCEEDED) -> str:
        run = stub.CreateRun(
            eval_pb2.CreateRunRequest(models=models, data=eval_pb2.EvalData(dataset_id=dataset_id))
        )
        run_id = run.status.id
        claimed = eval_jobs.claim("registry-test-worker")
        assert claimed is not None and claimed.id == run_id
        if state == JobState.RUNNING:
            return run_id
        labels = [f"{model}#{i}" if i else model for i, model in enumerate(models)]
        report = {
            "models": [
                {"label": label, "model_id": model} for label, model in zip(labels, models, strict=True)
            ],
            "verdicts": {
                label: {"verdict": verdict, "reasons": [f"{label}: token_f1 {verdict.lower()}"]}
                for label, verdict in zip(labels[1:], verdicts, strict=True)
            },
        }
        result = {"verdict": verdicts[-1], "verdict_reasons": [], **candidate_verdicts(report)}
        assert eval_jobs.transition(run_id, state, result=result)
        return run_id

    return finish


def _refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def _alias_model(registry, alias: str) -> str:
    return registry.GetAlias(trainer_pb2.GetAliasRequest(alias=alias)).model_id


def test_eval_run_carries_each_candidates_verdict(eval_server, finished_run, base_id, make_candidate):
    candidate = make_candidate("verdict-carrier")
    run_id = finished_run([base_id, candidate], ["PASS"])
    stub = eval_pb2_grpc.EvalServiceStub(open_channel(eval_server.address, 30))
    run = stub.GetRun(eval_pb2.GetRunRequest(id=run_id))
    assert run.baseline_model_id == base_id
    [verdict] = run.candidate_verdicts
    assert (verdict.model_id, verdict.verdict) == (candidate, eval_pb2.VERDICT_PASS)


def test_promotion_without_evidence_is_refused(registry, trainer, make_candidate):
    candidate = make_candidate("no-evidence")
    err = _refusal(registry.Promote, registry_pb2.PromoteRequest(model=candidate, alias="prod-a"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "field 'eval_run_id'" in err.details()
    # The trainer's SetAlias, which clients used to move aliases with, goes through the same gate.
    err = _refusal(trainer.SetAlias, trainer_pb2.SetAliasRequest(alias="prod-a", model=candidate))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _refusal(registry.GetAlias, trainer_pb2.GetAliasRequest(alias="prod-a")).code() == (
        grpc.StatusCode.NOT_FOUND
    )


def test_passing_evidence_promotes_and_stale_evidence_is_refused(
    registry, finished_run, base_id, make_candidate
):
    first, second, third = (make_candidate(f"stale-{i}") for i in range(3))
    promoted = registry.Promote(
        registry_pb2.PromoteRequest(
            model=first, alias="prod-b", eval_run_id=finished_run([base_id, first], ["PASS"]), actor="ana@ci"
        )
    )
    assert promoted.action == registry_pb2.ALIAS_ACTION_PROMOTE and promoted.model_id == first
    assert promoted.evidence.baseline_model_id == base_id and promoted.actor == "ana@ci"
    registry.Promote(
        registry_pb2.PromoteRequest(
            model=second, alias="prod-b", eval_run_id=finished_run([first, second], ["PASS"])
        )
    )
    # Evaluated against `first`, which prod-b pointed at before `second` replaced it.
    stale_run = finished_run([first, third], ["PASS"])
    err = _refusal(
        registry.Promote, registry_pb2.PromoteRequest(model=third, alias="prod-b", eval_run_id=stale_run)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"now points at {second}" in err.details()
    assert _alias_model(registry, "prod-b") == second


def test_a_failed_verdict_for_the_candidate_is_refused(registry, finished_run, base_id, make_candidate):
    passing, failing = make_candidate("verdict-pass"), make_candidate("verdict-fail")
    # The run's last candidate passed; the one asked for did not.
    run_id = finished_run([base_id, failing, passing], ["FAIL", "PASS"])
    err = _refusal(
        registry.Promote, registry_pb2.PromoteRequest(model=failing, alias="prod-c", eval_run_id=run_id)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is FAIL" in err.details() and "token_f1 fail" in err.details()
    promoted = registry.Promote(
        registry_pb2.PromoteRequest(model=passing, alias="prod-c", eval_run_id=run_id)
    )
    assert promoted.model_id == passing


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("running", "is running, not succeeded"),
        ("not-a-candidate", "did not evaluate model"),
        ("other-data", "not on prepared version"),
        ("base-without-lineage", "has no base model"),
    ],
)
def test_evidence_that_does_not_fit_is_refused(
    registry, finished_run, base_id, make_candidate, case: str, expected: str
):
    candidate = make_candidate(f"misfit-{case}")
    model, run_id, data = candidate, "", None
    if case == "running":
        run_id = finished_run([base_id, candidate], ["PASS"], state=JobState.RUNNING)
    elif case == "not-a-candidate":
        run_id = finished_run([candidate, base_id], ["PASS"])
    elif case == "other-data":
        run_id = finished_run([base_id, candidate], ["PASS"])
        data = eval_pb2.EvalData(prepared_version_id="prepared-elsewhere")
    else:
        model, run_id = base_id, finished_run([candidate, base_id], ["PASS"])
    request = registry_pb2.PromoteRequest(model=model, alias=f"prod-{case}", eval_run_id=run_id, data=data)
    err = _refusal(registry.Promote, request)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and expected in err.details()


def test_forced_promotion_needs_a_reason_and_records_it(registry, finished_run, base_id, make_candidate):
    candidate = make_candidate("forced")
    err = _refusal(registry.Promote, registry_pb2.PromoteRequest(model=candidate, alias="prod-d", force=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "field 'reason'" in err.details()
    failed_run = finished_run([base_id, candidate], ["FAIL"])
    forced = registry.Promote(
        registry_pb2.PromoteRequest(
            model=candidate, alias="prod-d", eval_run_id=failed_run, force=True, reason="incident 42 hotfix"
        )
    )
    assert forced.action == registry_pb2.ALIAS_ACTION_FORCE and forced.reason == "incident 42 hotfix"
    assert "is FAIL" in forced.gate_refusal and forced.evidence.eval_run_id == failed_run
    [recorded] = registry.ListAliasHistory(registry_pb2.ListAliasHistoryRequest(alias="prod-d")).revisions
    assert recorded == forced


def test_rollback_restores_the_previous_model(registry, trainer, finished_run, base_id, make_candidate):
    old, new = make_candidate("rollback-old"), make_candidate("rollback-new")
    first = registry.Promote(
        registry_pb2.PromoteRequest(
            model=old, alias="prod-e", eval_run_id=finished_run([base_id, old], ["PASS"])
        )
    )
    registry.Promote(
        registry_pb2.PromoteRequest(model=new, alias="prod-e", eval_run_id=finished_run([old, new], ["PASS"]))
    )
    back = registry.Rollback(
        registry_pb2.RollbackRequest(alias="prod-e", revision=first.revision, reason="new model rambles")
    )
    assert back.action == registry_pb2.ALIAS_ACTION_ROLLBACK and back.rolled_back_to == first.revision
    assert back.model_id == old and back.previous_model_id == new
    assert trainer.GetModel(trainer_pb2.GetModelRequest(name="prod-e")).id == old
    history = registry.ListAliasHistory(registry_pb2.ListAliasHistoryRequest(alias="prod-e")).revisions
    assert [r.model_id for r in history] == [old, new, old]  # newest first
    missing = _refusal(registry.Rollback, registry_pb2.RollbackRequest(alias="prod-e", revision=10**9))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "field 'revision'" in missing.details()


def test_ftctl_promotes_through_the_gate_shows_history_and_rolls_back(
    registry, registry_server, finished_run, base_id, make_candidate, monkeypatch
):
    from typer.testing import CliRunner

    from ftctl.main import app

    monkeypatch.setenv("FT_TRAINER_ADDRESS", registry_server.address)
    runner = CliRunner()
    old, new = make_candidate("cli-old"), make_candidate("cli-new")
    refused = runner.invoke(app, ["models", "promote", old, "--alias", "prod-f"])
    assert refused.exit_code == 1 and "FAILED_PRECONDITION" in refused.stderr
    promote = ["models", "promote", old, "--alias", "prod-f", "--json"]
    first = runner.invoke(app, [*promote, "--if-eval-passes", finished_run([base_id, old], ["PASS"])])
    assert first.exit_code == 0, first.output
    forced = runner.invoke(
        app, ["models", "promote", new, "--alias", "prod-f", "--force", "--reason", "load test"]
    )
    assert forced.exit_code == 0 and "forced" in forced.stderr
    history = runner.invoke(app, ["models", "history", "prod-f", "--json"])
    revisions = [(r["model_id"], r["action"]) for r in json.loads(history.stdout)["revisions"]]
    assert revisions == [(new, "ALIAS_ACTION_FORCE"), (old, "ALIAS_ACTION_PROMOTE")]
    first_revision = json.loads(first.stdout)["revision"]
    back = runner.invoke(app, ["models", "rollback", "prod-f", first_revision, "--reason", "load test over"])
    assert back.exit_code == 0, back.output
    assert _alias_model(registry, "prod-f") == old


def test_a_model_is_deleted_with_the_aliases_named_and_refused_while_another_points_at_it(
    registry, base_id, make_candidate
):
    model_id = make_candidate("to-delete")

    def move(alias: str, model: str) -> registry_pb2.AliasRevision:
        return registry.Promote(
            registry_pb2.PromoteRequest(model=model, alias=alias, force=True, reason="test", actor="test")
        )

    move("to-delete-own", model_id)
    move("to-delete-prod", model_id)
    delete = registry_pb2.DeleteModelRequest(
        model=model_id, with_aliases=["to-delete-own"], reason="no longer needed", actor="test"
    )
    refused = _refusal(registry.DeleteModel, delete)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "to-delete-prod" in refused.details()
    named_by_alias = _refusal(registry.DeleteModel, registry_pb2.DeleteModelRequest(model="to-delete-own"))
    assert named_by_alias.code() == grpc.StatusCode.INVALID_ARGUMENT

    move("to-delete-prod", base_id)
    deleted = registry.DeleteModel(delete)
    assert deleted.id == model_id and list(deleted.removed_aliases) == ["to-delete-own"]
    for lookup in ("to-delete", "to-delete-own"):
        gone = _refusal(registry.GetModel, trainer_pb2.GetModelRequest(name=lookup))
        assert gone.code() == grpc.StatusCode.NOT_FOUND
    removal = registry.ListAliasHistory(
        registry_pb2.ListAliasHistoryRequest(alias="to-delete-own")
    ).revisions[0]
    assert removal.action == registry_pb2.ALIAS_ACTION_REMOVED and removal.model_id == ""
    assert removal.previous_model_id == model_id and removal.reason == "no longer needed"
    # Revisions stay a cursor for WatchAliases: the next move numbers past the removal.
    assert move("to-delete-prod", make_candidate("after-delete")).revision > removal.revision
    assert _refusal(registry.DeleteModel, delete).code() == grpc.StatusCode.NOT_FOUND
