"""Entry point of the data service: `python -m services.data.server`."""

from finetune.v1 import data_pb2, data_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database
from ftcommon.grpc_server import RunningServer, serve_until_signalled, start_server
from ftcommon.job_runtime import JobRuntime
from ftcommon.jobs import JobStore
from ftcommon.logs import configure_logging
from services.data import tables
from services.data.base_models import BaseModels
from services.data.catalog import Catalog
from services.data.config import DataSettings
from services.data.generate_jobs import GenerateJobs
from services.data.prepare import PrepareRunner
from services.data.refusal_pairs import InferenceAccess
from services.data.servicer import DataServicer
from services.data.worker import prepare_runtime

SERVICE_NAME = data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name


class DataServer:
    """The running gRPC server plus the prepare and generate workers it owns; stop() ends them all."""

    def __init__(
        self,
        running: RunningServer,
        workers: JobRuntime,
        generate_workers: JobRuntime,
        base_models: BaseModels,
    ) -> None:
        self.running = running
        self.workers = workers
        self.generate_workers = generate_workers
        self.base_models = base_models

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return self.running.address

    def stop(self, grace: float | None = None) -> None:
        self.running.stop(grace)
        self.stop_workers()
        self.base_models.close()

    def stop_workers(self) -> None:
        self.workers.stop()
        self.generate_workers.stop()


def build_server(settings: DataSettings) -> DataServer:
    db = Database(settings.resolved_database_url("data"), tables.metadata, tables.MIGRATIONS)
    db.migrate()
    store = ArtifactStore(settings.resolved_artifact_store_url())
    catalog = Catalog(db)
    jobs = JobStore(db, tables.prepare_jobs, tables.prepare_job_events, id_prefix="prep")
    base_models = BaseModels(
        settings.trainer_address, settings.trainer_timeout_seconds, store, settings.security
    )
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    runner = PrepareRunner(
        store,
        catalog,
        base_models,
        scratch,
        InferenceAccess.from_settings(settings),
        settings.encoding_helper_min_rows,
    )
    workers = prepare_runtime(jobs, runner, settings)
    generate_jobs = JobStore(db, tables.generate_jobs, tables.generate_job_events, id_prefix="gen")
    generation = GenerateJobs(settings, store, catalog, generate_jobs, base_models)
    servicer = DataServicer(settings, store, catalog, jobs, base_models, workers, generation)
    running = start_server(
        settings, [(data_pb2_grpc.add_DataServiceServicer_to_server, servicer, SERVICE_NAME)]
    )
    workers.start()
    generation.runtime.start()
    return DataServer(running, workers, generation.runtime, base_models)


def main() -> None:
    settings = DataSettings()
    configure_logging("data", settings.log_level)
    server = build_server(settings)
    serve_until_signalled(server.running, on_stop=server.stop_workers)


if __name__ == "__main__":
    main()
