"""Reads an evaluation run from the eval service (the trainer never reads the eval service's tables)."""

import grpc

from finetune.v1 import eval_pb2, eval_pb2_grpc
from ftcommon.errors import NotFound, Unavailable, describe_rpc_error
from ftcommon.grpc_client import open_channel
from ftcommon.settings import TransportSecurity


def fetch_eval_run(
    address: str, run_id: str, timeout: float, security: TransportSecurity
) -> eval_pb2.EvalRun:
    with open_channel(address, default_timeout=timeout, security=security) as channel:
        try:
            return eval_pb2_grpc.EvalServiceStub(channel).GetRun(eval_pb2.GetRunRequest(id=run_id))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"evaluation run {run_id} does not exist", field="eval_run_id") from err
            raise Unavailable(
                f"the eval service at {address} did not answer, so the evidence cannot be checked: "
                f"{describe_rpc_error(err)}"
            ) from err
