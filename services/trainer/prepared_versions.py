"""Finds a prepared dataset version through the data service (the trainer never reads its tables)."""

from dataclasses import dataclass

import grpc

from finetune.v1 import data_pb2, data_pb2_grpc
from ftcommon.errors import InvalidArgument, NotFound, Unavailable
from ftcommon.grpc_client import open_channel
from ftcommon.settings import TransportSecurity


@dataclass(frozen=True)
class PreparedVersionRef:
    id: str
    artifact_uri: str
    base_model_id: str
    train_rows: int
    validation_rows: int
    preference_pairs: bool  # every row is a preference pair (what method dpo trains on)


def resolve_prepared_version(
    data_address: str, version_id: str, timeout: float, security: TransportSecurity
) -> PreparedVersionRef:
    if not version_id:
        raise InvalidArgument("is required", field="prepared_version_id")
    with open_channel(data_address, default_timeout=timeout, security=security) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        try:
            version = stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=version_id))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    f"prepared version {version_id} does not exist", field="prepared_version_id"
                ) from err
            raise Unavailable(
                f"the data service at {data_address} did not answer: {err.code().name}"
            ) from err
    if not version.artifact.uri:
        raise InvalidArgument(f"prepared version {version_id} has no artifact", field="prepared_version_id")
    stats = version.split_stats
    train_rows = stats["train"].examples if "train" in stats else 0
    if train_rows < 1:
        raise InvalidArgument(
            f"prepared version {version_id} has no training rows", field="prepared_version_id"
        )
    validation_rows = stats["validation"].examples if "validation" in stats else 0
    return PreparedVersionRef(
        version.id,
        version.artifact.uri,
        version.base_model_id,
        train_rows,
        validation_rows,
        version.preference_pairs,
    )
