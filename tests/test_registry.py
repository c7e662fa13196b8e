"""The model registry over real gRPC: the default base model, lookups, aliases and their watch stream."""

import grpc
import pytest

from finetune.v1 import common_pb2, trainer_pb2
from services.trainer.config import DEFAULT_BASE_MODEL_NAME


def test_default_model_is_registered_with_its_template(trainer_stub):
    model = trainer_stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
    assert model.kind == trainer_pb2.MODEL_KIND_BASE
    assert model.eos_token == "<|im_end|>"
    assert "<|im_start|>" in model.chat_template
    assert model.parameters == 134_515_008
    assert len(model.artifact.sha256) == 64


def test_registering_the_same_folder_again_returns_the_same_model(trainer_stub, default_model_dir):
    first = trainer_stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
    again = trainer_stub.RegisterBaseModel(
        trainer_pb2.RegisterBaseModelRequest(name=DEFAULT_BASE_MODEL_NAME, path=str(default_model_dir)),
        timeout=120,
    )
    assert again.id == first.id


def test_unknown_model_is_not_found(trainer_stub):
    with pytest.raises(grpc.RpcError) as err:
        trainer_stub.GetModel(trainer_pb2.GetModelRequest(name="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.value.details()


def test_register_rejects_a_folder_that_is_not_a_model(trainer_stub, data_root):
    # Under the trainer's model roots (its data dir's base_models), so the folder itself is what fails.
    folder = data_root / "base_models" / "broken"
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.raises(grpc.RpcError) as err:
        trainer_stub.RegisterBaseModel(trainer_pb2.RegisterBaseModelRequest(name="broken", path=str(folder)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'path'" in err.value.details()
    names = [m.name for m in trainer_stub.ListModels(trainer_pb2.ListModelsRequest()).models]
    assert "broken" not in names


def test_list_models_paginates(trainer_stub):
    page = trainer_stub.ListModels(trainer_pb2.ListModelsRequest(page=common_pb2.PageRequest(page_size=1)))
    assert len(page.models) == 1
    with pytest.raises(grpc.RpcError) as err:
        trainer_stub.ListModels(
            trainer_pb2.ListModelsRequest(page=common_pb2.PageRequest(page_token="not-a-token"))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_alias_resolves_and_watch_sees_changes(trainer_stub):
    model = trainer_stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
    stream = trainer_stub.WatchAliases(trainer_pb2.WatchAliasesRequest(alias="staging"), timeout=10)
    # Aliases move through the promotion gate; without an evaluation run that takes force and a reason.
    trainer_stub.SetAlias(
        trainer_pb2.SetAliasRequest(
            alias="staging", model=DEFAULT_BASE_MODEL_NAME, force=True, reason="watch stream test"
        )
    )
    first = next(stream)
    stream.cancel()
    assert first.alias == "staging" and first.model_id == model.id
    resolved = trainer_stub.GetModel(trainer_pb2.GetModelRequest(name="staging"))
    assert resolved.id == model.id and "staging" in resolved.aliases
