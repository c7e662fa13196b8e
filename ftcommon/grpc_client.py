"""Client channels: every call gets a deadline and the service credentials, UNAVAILABLE is retried, the
request id travels along."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ftcommon.interceptors import AUTHORIZATION_HEADER, REQUEST_ID_HEADER, bearer
from ftcommon.logs import new_request_id, request_id_var
from ftcommon.settings import TransportSecurity

_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _DeadlineAndRequestId(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, default_timeout: float, token: str) -> None:
        self.default_timeout = default_timeout
        self.token = token

    def _details(self, details: Any, streaming_response: bool) -> Any:
        metadata = list(details.metadata or [])
        if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
            metadata.append((REQUEST_ID_HEADER, request_id_var.get() or new_request_id()))
        if self.token and not any(key == AUTHORIZATION_HEADER for key, _ in metadata):
            metadata.append((AUTHORIZATION_HEADER, bearer(self.token)))
        timeout = details.timeout
        if timeout is None and not streaming_response:
            # Streams (watch calls) may live long; their callers pass a timeout explicitly.
            timeout = self.default_timeout
        return details._replace(metadata=metadata, timeout=timeout)

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details, False), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details, True), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details, False), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details, True), requests)


def channel_credentials(security: TransportSecurity) -> grpc.ChannelCredentials | None:
    """TLS when the operator configured it: the CA verifies the server (system roots when unset), the
    certificate and key are this process's own for mutual TLS."""
    if not security.uses_tls:
        return None

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        read(security.tls_ca_file), read(security.tls_key_file), read(security.tls_cert_file)
    )


def open_channel(
    address: str, default_timeout: float = 30.0, security: TransportSecurity | None = None
) -> grpc.Channel:
    """A channel whose unary calls carry `default_timeout` unless the caller passes one, and the service
    credentials: those of `security`, or of the FT_SERVICE_TOKEN/FT_TLS_* variables (the CLI, scripts)."""
    security = security if security is not None else TransportSecurity()
    options = [
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    credentials = channel_credentials(security)
    if credentials:
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _DeadlineAndRequestId(default_timeout, security.token))
