"""The default base model in the registry of the data directory a stack uses: registered when absent, so a
fresh data directory serves and trains at once (the gateway otherwise waits for a model forever)."""

from pathlib import Path

import grpc

from finetune.v1 import trainer_pb2, trainer_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.settings import DEFAULT_BASE_MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
# `make setup` converts it here; a trainer data directory may hold its own converted copy.
SETUP_MODEL_DIR = REPO_ROOT / "var" / "base_models" / DEFAULT_BASE_MODEL_NAME
REGISTER_TIMEOUT_SECONDS = 300  # hashes and copies about 0.5 GB into the artifact store


class BaseModelMissing(Exception):
    """The converted default model is nowhere on disk: `make setup` has not run."""


def default_model_folder(trainer_data_dir: Path) -> Path:
    for folder in (trainer_data_dir / "base_models" / DEFAULT_BASE_MODEL_NAME, SETUP_MODEL_DIR):
        if (folder / "config.json").exists():
            return folder
    raise BaseModelMissing(
        f"the default base model '{DEFAULT_BASE_MODEL_NAME}' is not converted yet "
        f"(no {SETUP_MODEL_DIR}): run `make setup` first"
    )


def ensure_default_base_model(trainer_address: str, trainer_data_dir: Path) -> str:
    """Registers the default base model through the trainer unless it is already there; says which."""
    with open_channel(trainer_address) as channel:
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
        try:
            model = trainer.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
            return f"base model {model.name} already registered ({model.id})"
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        folder = default_model_folder(trainer_data_dir)
        model = trainer.RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name=DEFAULT_BASE_MODEL_NAME, path=str(folder)),
            timeout=REGISTER_TIMEOUT_SECONDS,
        )
        return f"base model {model.name} registered from {folder} ({model.id})"
