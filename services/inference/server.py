"""Entry point of the inference gateway: `python -m services.inference.server`.

One process serves the OpenAI-compatible HTTP API (uvicorn) and the gRPC InferenceService over the same
engines. The engines and the HTTP server share one event loop in a background thread; gRPC handlers bridge
onto it. `build_server(settings)` starts everything (tests use port 0 for both) and returns a handle.
"""

import asyncio
import logging
import socket
import threading
from concurrent.futures import Future

import uvicorn

from finetune.v1 import data_pb2_grpc, inference_pb2, inference_pb2_grpc, registry_pb2_grpc, trainer_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.grpc_client import open_channel
from ftcommon.grpc_server import RunningServer, serve_until_signalled, start_server
from ftcommon.logs import configure_logging, log_fields
from services.inference.app import create_app
from services.inference.auth import AdminTokenStore, KeyStore
from services.inference.config import InferenceSettings
from services.inference.fine_tuning_follower import FineTuningFollower
from services.inference.fine_tuning_results import ResultFiles
from services.inference.fine_tuning_store import FineTuningRecords
from services.inference.grpc_servicer import InferenceServicer
from services.inference.keys import open_gateway_database
from services.inference.model_manager import ModelManager
from services.inference.serving_files import OpenAIServingFiles
from services.inference.state import GatewayState

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name

logger = logging.getLogger(__name__)


def open_key_store(settings: InferenceSettings) -> KeyStore:
    """The API keys live in the gateway's own database; clients manage them through /admin/keys."""
    return KeyStore(open_gateway_database(settings))


class InferenceServer:
    """A running gateway: HTTP on `http_port`, gRPC on `grpc.port`, engines on `loop`."""

    def __init__(self, settings: InferenceSettings) -> None:
        database = open_gateway_database(settings)
        keys = KeyStore(database)
        store = ArtifactStore(settings.resolved_artifact_store_url())
        self._trainer_channel = open_channel(
            settings.trainer_address, settings.rpc_timeout_seconds, settings.security
        )
        trainer = trainer_pb2_grpc.TrainerServiceStub(self._trainer_channel)
        # Models and alias moves come from the registry, served in the trainer process.
        manager = ModelManager(settings, registry_pb2_grpc.RegistryServiceStub(self._trainer_channel), store)
        # The OpenAI fine-tuning surface: files go to the data service, jobs to data and trainer.
        self._data_channel = open_channel(
            settings.data_address, settings.rpc_timeout_seconds, settings.security
        )
        data = data_pb2_grpc.DataServiceStub(self._data_channel)
        records = FineTuningRecords(database)
        self.follower = FineTuningFollower(settings, records, data, trainer, ResultFiles(records, store))
        files = OpenAIServingFiles(settings, data, store, records)
        self.state = GatewayState.build(
            settings, manager, keys, AdminTokenStore(database), files, self.follower
        )
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)
        self._loop_thread.start()

        sock = _bind(settings.host, settings.http_port)
        self.http_port: int = sock.getsockname()[1]
        self._http = uvicorn.Server(
            uvicorn.Config(create_app(self.state), log_config=None, access_log=False, lifespan="off")
        )
        self._http_done = asyncio.run_coroutine_threadsafe(self._http.serve(sockets=[sock]), self.loop)
        servicer = InferenceServicer(self.state.core, self.loop, settings.model)
        self.grpc: RunningServer = start_server(
            settings, [(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer, SERVICE_NAME)]
        )
        self._model_loaded: Future = asyncio.run_coroutine_threadsafe(manager.start(), self.loop)
        self.follower.start()
        log_fields(
            logger, logging.INFO, "gateway listening", http_port=self.http_port, grpc_port=self.grpc.port
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return self.grpc.address

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Returns once the default model serves; raises what its loading raised."""
        self._model_loaded.result(timeout)
        if not self.state.manager.ready:
            raise RuntimeError(
                f"nothing to serve: neither '{self.state.settings.model}' nor the fallback exists"
            )

    def stop(self, grace: float | None = None) -> None:
        """Stops taking requests, lets those in flight finish, then frees the engines."""
        self.grpc.stop(grace)
        self.follower.stop()
        self._http.should_exit = True
        self._http_done.result()
        self._model_loaded.cancel()
        asyncio.run_coroutine_threadsafe(self.state.manager.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join()
        self._trainer_channel.close()
        self._data_channel.close()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def build_server(settings: InferenceSettings, wait_until_ready: bool = True) -> InferenceServer:
    """Starts HTTP and gRPC at once (so /healthz answers during a long vLLM load) and loads the default
    model; with wait_until_ready it returns once that model serves."""
    server = InferenceServer(settings)
    if wait_until_ready:
        try:
            server.wait_until_ready()
        except BaseException:
            server.stop(grace=0)
            raise
    return server


def main() -> None:
    settings = InferenceSettings()
    configure_logging("inference", settings.log_level)
    server = build_server(settings, wait_until_ready=False)
    serve_until_signalled(server.grpc, on_stop=lambda: server.stop())


if __name__ == "__main__":
    main()
