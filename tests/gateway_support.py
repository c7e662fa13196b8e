"""Gateway settings the tests share: free loopback ports, following the test session's trainer."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ftcommon.grpc_server import RunningServer
from services.inference.config import InferenceSettings

if TYPE_CHECKING:
    from services.inference.server import InferenceServer


def loopback_gateway_settings(
    data_root: Path, trainer_address: str, **overrides: object
) -> InferenceSettings:
    """The transformers engine (it starts in seconds) unless `overrides` names another."""
    values: dict[str, object] = {"engine": "transformers", **overrides}
    return InferenceSettings(
        data_dir=data_root, port=0, http_port=0, trainer_address=trainer_address, **values
    )


@contextmanager
def running_gateway(
    data_root: Path, trainer_address: str, **overrides: object
) -> Iterator["InferenceServer"]:
    """A gateway on loopback that asks for no API key (loopback_gateway_settings), stopped on exit."""
    from services.inference.server import build_server

    running = build_server(
        loopback_gateway_settings(data_root, trainer_address, require_api_key=False, **overrides)
    )
    try:
        yield running
    finally:
        running.stop(grace=1)


@pytest.fixture(scope="module", name="inference_server")
def one_request_at_a_time_gateway(
    data_root: Path, trainer_server: RunningServer
) -> Iterator["InferenceServer"]:
    """The gateway decoding one request at a time, for a module that imports this in place of conftest's
    `inference_server`: a model evaluated against itself gives the same answers twice only when its two runs
    decode in the same batch shapes, and dynamic batching shapes them by arrival time (in bfloat16 another
    batch's padding can tip a greedy token)."""
    with running_gateway(data_root, trainer_server.address, max_batch_size=1) as running:
        yield running
