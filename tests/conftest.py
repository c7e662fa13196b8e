"""Shared fixtures: real gRPC servers on loopback over a temporary data root, the real default model."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from finetune.v1 import data_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.grpc_server import RunningServer
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings

if TYPE_CHECKING:
    from services.data.server import DataServer
    from services.inference.server import InferenceServer

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "var" / "base_models" / DEFAULT_BASE_MODEL_NAME
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
LAMINI_DOCS = SHARED_DATASETS / "lamini_docs" / "lamini_docs.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The test services run plaintext on loopback without a token (test_service_auth turns credentials on).
# Set here, before any settings are read, so services started as subprocesses inherit it too.
os.environ.setdefault("FT_INSECURE_LOCAL_DEV", "1")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} is missing: run `make setup` first")
    return DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def lamini_docs() -> Path:
    if not LAMINI_DOCS.exists():
        pytest.skip(f"{LAMINI_DOCS} is absent (shared datasets not mounted)")
    return LAMINI_DOCS


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root for the session's services, as `./var` is for a real deployment."""
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="session")
def trainer_server(data_root: Path, default_model_dir: Path) -> Iterator[RunningServer]:
    from services.trainer.server import build_server

    settings = TrainerSettings(data_dir=data_root, port=0)
    running = build_server(settings)
    with open_channel(running.address) as channel:
        trainer_pb2_grpc.TrainerServiceStub(channel).RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name=DEFAULT_BASE_MODEL_NAME, path=str(default_model_dir)),
            timeout=120,
        )
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def trainer_channel(trainer_server: RunningServer) -> Iterator[grpc.Channel]:
    with open_channel(trainer_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def trainer_stub(trainer_channel: grpc.Channel) -> trainer_pb2_grpc.TrainerServiceStub:
    return trainer_pb2_grpc.TrainerServiceStub(trainer_channel)


@pytest.fixture(scope="session")
def data_server(data_root: Path, trainer_server: RunningServer) -> Iterator["DataServer"]:
    """The data service on loopback over the shared data root; it reaches the trainer for base models."""
    from services.data.config import DataSettings
    from services.data.server import build_server

    settings = DataSettings(
        data_dir=data_root, port=0, trainer_address=trainer_server.address, job_poll_seconds=0.1
    )
    running = build_server(settings)
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="session")
def data_stub(data_server: "DataServer") -> Iterator[data_pb2_grpc.DataServiceStub]:
    with open_channel(data_server.address) as channel:
        yield data_pb2_grpc.DataServiceStub(channel)


@pytest.fixture(scope="session")
def inference_server(data_root: Path, trainer_server: RunningServer) -> Iterator["InferenceServer"]:
    """The gateway on loopback (gRPC and HTTP on free ports) with the transformers engine: it starts in seconds."""
    from gateway_support import running_gateway

    with running_gateway(data_root, trainer_server.address) as running:
        yield running


@pytest.fixture(scope="module")
def two_torch_threads() -> Iterator[None]:
    """Training tests pin torch to the machine's two cores and give the previous count back."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@dataclass
class _DiskLowWater:
    """The least free space on the disk that holds the tests' temporary files, sampled after each test: a
    run that fails in a cascade on a full disk then says so in its summary instead of leaving it to guesswork."""

    at_start: int = 0
    least: int = 0
    least_after: str = ""


_disk = _DiskLowWater()


def _free_bytes() -> int:
    return shutil.disk_usage(tempfile.gettempdir()).free


def pytest_sessionstart(session: pytest.Session) -> None:
    _disk.at_start = _disk.least = _free_bytes()


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    free = _free_bytes()
    if free < _disk.least:
        _disk.least, _disk.least_after = free, nodeid


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    gib = 1024**3
    where = f" (after {_disk.least_after})" if _disk.least_after else ""
    terminalreporter.write_line(
        f"disk free for temporary files: {_disk.at_start / gib:.1f} GiB at the start, "
        f"least {_disk.least / gib:.1f} GiB{where}"
    )
