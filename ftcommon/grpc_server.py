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

from ftcommon.interceptors import ServerInterceptor, ServiceTokenInterceptor
from ftcommon.settings import ServiceSettings, TransportSecurity

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


class InsecureConfiguration(RuntimeError):
    """The service was given no credentials to check and no explicit local-development setting."""


def auth_interceptors(security: TransportSecurity) -> list[grpc.ServerInterceptor]:
    """The token check when a token is set; nothing when mutual TLS authenticates the peer instead.
    Without either, only the explicit local-development setting lets a service start."""
    if security.token:
        return [ServiceTokenInterceptor(security.token)]
    if security.tls_ca_file is not None and security.tls_cert_file is not None:
        return []
    if security.insecure_local_dev:
        logger.warning("no service credentials: any caller is served (FT_INSECURE_LOCAL_DEV=1)")
        return []
    raise InsecureConfiguration(
        "no service credentials configured: set FT_SERVICE_TOKEN (and optionally FT_TLS_CERT_FILE, "
        "FT_TLS_KEY_FILE, FT_TLS_CA_FILE for mutual TLS), or FT_INSECURE_LOCAL_DEV=1 on a development machine"
    )


def server_credentials(security: TransportSecurity) -> grpc.ServerCredentials | None:
    """TLS from the operator's PEM files; clients must present a certificate when a CA is given."""
    if security.tls_cert_file is None and security.tls_key_file is None:
        return None
    if security.tls_cert_file is None or security.tls_key_file is None:
        raise InsecureConfiguration("FT_TLS_CERT_FILE and FT_TLS_KEY_FILE must be set together")
    ca = security.tls_ca_file.read_bytes() if security.tls_ca_file else None
    return grpc.ssl_server_credentials(
        [(security.tls_key_file.read_bytes(), security.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def start_server(settings: ServiceSettings, registrations: Iterable[Registration]) -> RunningServer:
    security = settings.security
    credentials = server_credentials(security)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers),
        interceptors=[*auth_interceptors(security), ServerInterceptor()],
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
    where = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(where, credentials) if credentials else server.add_insecure_port(where)
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
