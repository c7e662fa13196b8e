"""Bootstrap of a gRPC service: interceptors, health, reflection, metrics, graceful SIGTERM drain."""

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from ftcommon.interceptors import ServerInterceptor
from ftcommon.settings import ServiceSettings

logger = logging.getLogger("ftcommon.server")

# (add_XServicer_to_server, servicer, full service name from the descriptor)
Registration = tuple[Callable[[object, grpc.Server], None], object, str]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    grace_seconds: float

    def stop(self, grace: float | None = None) -> None:
        """Fails health first so balancers stop routing, then drains calls in flight."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_seconds if grace is None else grace).wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_server(settings: ServiceSettings, registrations: Iterable[Registration]) -> RunningServer:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers),
        interceptors=[ServerInterceptor()],
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    for add, servicer, name in registrations:
        add(servicer, server)
        names.append(name)
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    server.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    logger.info("serving", extra={"fields": {"port": port, "services": names}})
    return RunningServer(server, port, health_servicer, settings.shutdown_grace_seconds)


def serve_until_signalled(running: RunningServer, on_stop: Callable[[], None] | None = None) -> None:
    """Blocks until SIGTERM or SIGINT, then drains gracefully."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    logger.info("draining")
    if on_stop:
        on_stop()
    running.stop()
    logger.info("stopped")
