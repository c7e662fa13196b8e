"""Entry point of the eval service: `python -m services.eval.server`."""

from dataclasses import dataclass

from finetune.v1 import eval_pb2, eval_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database
from ftcommon.grpc_server import RunningServer, serve_until_signalled, start_server
from ftcommon.job_runtime import JobRuntime
from ftcommon.jobs import JobStore
from ftcommon.logs import configure_logging
from services.eval import tables
from services.eval.clients import Clients
from services.eval.config import EvalSettings
from services.eval.runner import RunExecutor
from services.eval.servicer import EvalServicer
from services.eval.worker import eval_runtime

SERVICE_NAME = eval_pb2.DESCRIPTOR.services_by_name["EvalService"].full_name


@dataclass
class EvalServer:
    """The gRPC server and the worker thread beside it; `stop` ends both."""

    running: RunningServer
    worker: JobRuntime | None
    clients: Clients

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self, grace: float | None = None) -> None:
        if self.worker:
            self.worker.stop()
        self.running.stop(grace)
        self.clients.close()


def build_server(settings: EvalSettings) -> EvalServer:
    db = Database(settings.resolved_database_url("eval"), tables.metadata, tables.MIGRATIONS)
    db.migrate()
    store = JobStore(db, tables.jobs, tables.job_events, id_prefix="eval")
    artifacts = ArtifactStore(settings.resolved_artifact_store_url())
    clients = Clients(settings)
    worker = None
    if settings.worker_enabled:
        worker = eval_runtime(settings, store, RunExecutor(settings, store, artifacts, clients))
        worker.start()
    running = start_server(
        settings,
        [
            (
                eval_pb2_grpc.add_EvalServiceServicer_to_server,
                EvalServicer(store, artifacts, settings, clients),
                SERVICE_NAME,
            )
        ],
    )
    return EvalServer(running, worker, clients)


def main() -> None:
    settings = EvalSettings()
    configure_logging("eval", settings.log_level)
    server = build_server(settings)
    serve_until_signalled(server.running, on_stop=server.worker.stop if server.worker else None)
    server.clients.close()


if __name__ == "__main__":
    main()
