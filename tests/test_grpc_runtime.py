"""The gRPC runtime on a real server: error mapping, request ids, health, reflection, pagination."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from finetune.v1 import trainer_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.pagination import next_page_token, page_bounds


def test_health_reports_the_service_as_serving(trainer_channel):
    health = health_pb2_grpc.HealthStub(trainer_channel)
    for service in ("", "finetune.v1.TrainerService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(trainer_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(trainer_channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(replies).list_services_response.service}
    assert {"finetune.v1.TrainerService", "grpc.health.v1.Health"} <= names


def test_invalid_argument_names_the_field_in_details_and_metadata(trainer_stub):
    with pytest.raises(grpc.RpcError) as err:
        trainer_stub.RegisterBaseModel(trainer_pb2.RegisterBaseModelRequest(name="x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "field 'path': is required"
    assert ("error-field", "path") in err.value.trailing_metadata()


def test_the_caller_gets_a_request_id_back(trainer_stub):
    _, call = trainer_stub.ListModels.with_call(
        trainer_pb2.ListModelsRequest(), metadata=(("x-request-id", "req-abc"),)
    )
    assert ("x-request-id", "req-abc") in call.initial_metadata()


def test_page_tokens_round_trip_and_end():
    offset, limit = page_bounds(2, "")
    assert (offset, limit) == (0, 2)
    token = next_page_token(offset, limit, returned=2)
    assert page_bounds(2, token) == (2, 2)
    assert next_page_token(2, 2, returned=1) == ""
    with pytest.raises(InvalidArgument):
        page_bounds(-1, "")
