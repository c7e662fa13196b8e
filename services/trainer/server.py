"""Entry point of the trainer service: `python -m services.trainer.server`."""

from finetune.v1 import registry_pb2, registry_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database
from ftcommon.grpc_server import RunningServer, serve_until_signalled, start_server
from ftcommon.logs import configure_logging
from services.trainer import tables
from services.trainer.config import TrainerSettings
from services.trainer.job_queue import job_store
from services.trainer.registry import ModelRegistry
from services.trainer.registry_service.servicer import RegistryServicer
from services.trainer.servicer import TrainerServicer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
REGISTRY_SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


def build_server(settings: TrainerSettings) -> RunningServer:
    db = Database(settings.resolved_database_url("trainer"), tables.metadata, tables.MIGRATIONS)
    db.migrate()
    registry = ModelRegistry(db, ArtifactStore(settings.resolved_artifact_store_url()))
    servicer = TrainerServicer(settings, registry, db, job_store(db), settings.data_address)
    return start_server(
        settings,
        [
            (trainer_pb2_grpc.add_TrainerServiceServicer_to_server, servicer, SERVICE_NAME),
            (
                registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                RegistryServicer(settings, registry),
                REGISTRY_SERVICE_NAME,
            ),
        ],
    )


def main() -> None:
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    serve_until_signalled(build_server(settings))


if __name__ == "__main__":
    main()
