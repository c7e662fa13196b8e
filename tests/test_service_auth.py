"""Service credentials: without the shared token every gRPC call but health gets UNAUTHENTICATED; with it
the four services answer and call each other; plaintext without a token needs the local-development setting."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from finetune.v1 import (
    data_pb2,
    data_pb2_grpc,
    eval_pb2,
    eval_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon.grpc_client import open_channel
from ftcommon.grpc_server import InsecureConfiguration, RunningServer
from ftcommon.settings import TransportSecurity
from services.data.config import DataSettings
from services.eval.config import EvalSettings
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings

TOKEN = "a-long-random-service-token"
SECURED = TransportSecurity(service_token=TOKEN, insecure_local_dev=False)
NO_CREDENTIALS = TransportSecurity(service_token="", insecure_local_dev=False)
WRONG_TOKEN = TransportSecurity(service_token="not-the-token", insecure_local_dev=False)


@dataclass
class SecuredStack:
    trainer: str
    data: str
    eval: str
    inference: str


@pytest.fixture(scope="module")
def stack(data_root: Path, trainer_server: RunningServer) -> Iterator[SecuredStack]:
    """The four services with a token, over the session's data root (the default model is registered)."""
    from gateway_support import loopback_gateway_settings

    from services.data.server import build_server as build_data
    from services.eval.server import build_server as build_eval
    from services.inference.server import build_server as build_inference
    from services.trainer.server import build_server as build_trainer

    trainer = build_trainer(TrainerSettings(data_dir=data_root, port=0, security=SECURED))
    data = build_data(
        DataSettings(data_dir=data_root, port=0, trainer_address=trainer.address, security=SECURED)
    )
    # Loading the default model goes through the secured trainer: the gateway's calls carry the token.
    inference = build_inference(
        loopback_gateway_settings(data_root, trainer.address, require_api_key=False, security=SECURED)
    )
    evaluator = build_eval(
        EvalSettings(
            data_dir=data_root,
            port=0,
            trainer_address=trainer.address,
            data_address=data.address,
            inference_address=inference.grpc_address,
            worker_enabled=False,
            security=SECURED,
        )
    )
    yield SecuredStack(trainer.address, data.address, evaluator.address, inference.grpc_address)
    for server in (evaluator, inference, data, trainer):
        server.stop(grace=0)


def _one_call(stack: SecuredStack, service: str, security: TransportSecurity) -> object:
    """A cheap read on `service` over a channel with `security`'s credentials."""
    address = getattr(stack, service)
    with open_channel(address, 10, security) as channel:
        if service == "trainer":
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            return stub.GetModel(trainer_pb2.GetModelRequest(name=DEFAULT_BASE_MODEL_NAME))
        if service == "data":
            return data_pb2_grpc.DataServiceStub(channel).ListDatasets(data_pb2.ListDatasetsRequest())
        if service == "eval":
            return eval_pb2_grpc.EvalServiceStub(channel).ListRuns(eval_pb2.ListRunsRequest())
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub.ListModels(inference_pb2.ListServedModelsRequest())


SERVICES = ["trainer", "data", "eval", "inference"]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("credentials", [NO_CREDENTIALS, WRONG_TOKEN], ids=["no-token", "wrong-token"])
def test_a_call_without_the_token_is_unauthenticated(stack, service, credentials):
    with pytest.raises(grpc.RpcError) as err:
        _one_call(stack, service, credentials)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "FT_SERVICE_TOKEN" in err.value.details() and TOKEN not in err.value.details()


@pytest.mark.parametrize("service", SERVICES)
def test_a_call_with_the_token_is_served(stack, service):
    _one_call(stack, service, SECURED)


def test_the_gateway_loaded_its_model_through_the_secured_trainer(stack):
    served = _one_call(stack, "inference", SECURED)
    assert [m.name for m in served.models] == [DEFAULT_BASE_MODEL_NAME]


def test_the_evaluator_calls_its_peers_with_the_token(stack):
    """CreateRun checks the models in the registry before queuing: it reaches the secured trainer."""
    with open_channel(stack.eval, 10, SECURED) as channel:
        with pytest.raises(grpc.RpcError) as err:
            eval_pb2_grpc.EvalServiceStub(channel).CreateRun(
                eval_pb2.CreateRunRequest(
                    models=[DEFAULT_BASE_MODEL_NAME, "no-such-model"],
                    data=eval_pb2.EvalData(dataset_id="ds-none"),
                )
            )
    # The trainer answered (a refused call would read UNAUTHENTICATED): it knows no such model.
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-model" in err.value.details() and "field 'models'" in err.value.details()


def test_health_is_open_for_probes_and_reflection_needs_the_token(stack):
    with grpc.insecure_channel(stack.trainer) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as err:
            list(listing)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with open_channel(stack.trainer, 5, SECURED) as channel:
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = [s.name for reply in listing for s in reply.list_services_response.service]
    assert "finetune.v1.TrainerService" in names


def test_the_cli_sends_the_token_from_the_environment(stack):
    from typer.testing import CliRunner

    from ftctl.main import app

    environment = {"FT_TRAINER_ADDRESS": stack.trainer}
    refused = CliRunner().invoke(app, ["models", "list"], env={**environment, "FT_SERVICE_TOKEN": ""})
    assert refused.exit_code != 0 and "UNAUTHENTICATED" in refused.output.upper()
    served = CliRunner().invoke(app, ["models", "list"], env={**environment, "FT_SERVICE_TOKEN": TOKEN})
    assert served.exit_code == 0, served.output
    assert DEFAULT_BASE_MODEL_NAME in served.output


def test_a_service_without_credentials_refuses_to_start(tmp_path: Path):
    from services.trainer.server import build_server

    with pytest.raises(InsecureConfiguration, match="FT_INSECURE_LOCAL_DEV"):
        build_server(TrainerSettings(data_dir=tmp_path, port=0, security=NO_CREDENTIALS))


def test_the_local_development_setting_serves_plaintext_without_a_token(tmp_path: Path):
    from services.trainer.server import build_server

    development = TransportSecurity(service_token="", insecure_local_dev=True)
    running = build_server(TrainerSettings(data_dir=tmp_path, port=0, security=development))
    try:
        with grpc.insecure_channel(running.address) as channel:
            trainer_pb2_grpc.TrainerServiceStub(channel).ListModels(
                trainer_pb2.ListModelsRequest(), timeout=5
            )
    finally:
        running.stop(grace=0)


def _certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA, and a certificate it signed for 127.0.0.1 that serves as server and client."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key, issuer_name, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, service_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = issue("test CA", ca_key, ca_name, ca_key, ca=True)
    service = issue("service", service_key, ca_name, ca_key, ca=False)
    paths = {"ca": folder / "ca.pem", "cert": folder / "service.pem", "key": folder / "service.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(service.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        service_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_mutual_tls_alone_authenticates_and_a_client_without_a_certificate_is_refused(tmp_path: Path):
    from services.trainer.server import build_server

    pem = _certificates(tmp_path)
    mutual = TransportSecurity(
        service_token="",
        insecure_local_dev=False,
        tls_cert_file=pem["cert"],
        tls_key_file=pem["key"],
        tls_ca_file=pem["ca"],
    )
    running = build_server(TrainerSettings(data_dir=tmp_path / "data", port=0, security=mutual))
    try:
        with open_channel(running.address, 10, mutual) as channel:
            trainer_pb2_grpc.TrainerServiceStub(channel).ListModels(trainer_pb2.ListModelsRequest())
        anonymous = TransportSecurity(service_token="", insecure_local_dev=False, tls_ca_file=pem["ca"])
        with open_channel(running.address, 10, anonymous) as channel:
            with pytest.raises(grpc.RpcError) as err:
                trainer_pb2_grpc.TrainerServiceStub(channel).ListModels(trainer_pb2.ListModelsRequest())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails before any call
    finally:
        running.stop(grace=0)
