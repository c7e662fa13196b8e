"""Base models as the trainer's registry describes them (over gRPC), and their tokenizers.

The data service never reads the trainer's tables: it asks TrainerService.GetModel and loads the
tokenizer from the model's folder in the shared artifact store.
"""

import threading
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from finetune.v1 import trainer_pb2, trainer_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.errors import InvalidArgument, Unavailable
from ftcommon.grpc_client import open_channel
from ftcommon.settings import TransportSecurity


@dataclass(frozen=True)
class BaseModel:
    id: str
    name: str
    artifact_uri: str
    artifact_sha256: str
    chat_template: str
    eos_token: str
    max_context: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BaseModels:
    def __init__(
        self,
        trainer_address: str,
        timeout_seconds: float,
        store: ArtifactStore,
        security: TransportSecurity,
    ) -> None:
        self._channel = open_channel(trainer_address, timeout_seconds, security)
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)
        self._store = store
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> BaseModel:
        """The model a name, id or alias means now; InvalidArgument naming base_model when unknown."""
        if not name:
            raise InvalidArgument("is required", field="base_model")
        try:
            model = self._stub.GetModel(trainer_pb2.GetModelRequest(name=name))
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidArgument(
                    f"unknown base model '{name}': {err.details()}", field="base_model"
                ) from None
            raise Unavailable(
                f"the trainer service (model registry) did not answer: {err.code().name}"
            ) from None
        return BaseModel(
            id=model.id,
            name=model.name,
            artifact_uri=model.artifact.uri,
            artifact_sha256=model.artifact.sha256,
            chat_template=model.chat_template,
            eos_token=model.eos_token,
            max_context=model.max_context,
        )

    def tokenizer(self, model: BaseModel) -> Any:
        """The model's tokenizer, loaded once per model artifact."""
        with self._lock:
            if model.artifact_sha256 not in self._tokenizers:
                from transformers import AutoTokenizer  # heavy import, only when a prepare runs

                folder = self._store.local_dir(model.artifact_uri)
                self._tokenizers[model.artifact_sha256] = AutoTokenizer.from_pretrained(folder)
            return self._tokenizers[model.artifact_sha256]

    def close(self) -> None:
        self._channel.close()
