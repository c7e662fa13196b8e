"""Peer addresses: a service's own variable wins, else the shared one clients use, else loopback."""

import pytest

from services.data.config import DataSettings
from services.eval.config import EvalSettings
from services.inference.config import InferenceSettings
from services.trainer.config import TrainerSettings


@pytest.fixture(autouse=True)
def no_address_variables(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("FT_") and name.endswith("_ADDRESS"):
            monkeypatch.delenv(name)


def test_peer_addresses_default_to_loopback_ports():
    assert TrainerSettings().data_address == "127.0.0.1:50051"
    assert DataSettings().trainer_address == "127.0.0.1:50052"
    evaluator = EvalSettings()
    assert (evaluator.data_address, evaluator.trainer_address, evaluator.inference_address) == (
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50054",
    )
    assert InferenceSettings().trainer_address == "127.0.0.1:50052"


def test_the_shared_variable_reaches_every_service(monkeypatch):
    monkeypatch.setenv("FT_TRAINER_ADDRESS", "trainer:50052")
    monkeypatch.setenv("FT_DATA_ADDRESS", "data:50051")
    assert DataSettings().trainer_address == "trainer:50052"
    assert EvalSettings().trainer_address == "trainer:50052"
    assert InferenceSettings().trainer_address == "trainer:50052"
    assert TrainerSettings().data_address == "data:50051"


def test_a_service_variable_wins_over_the_shared_one(monkeypatch):
    monkeypatch.setenv("FT_DATA_ADDRESS", "data:50051")
    monkeypatch.setenv("FT_EVAL_DATA_ADDRESS", "data-replica:50051")
    assert EvalSettings().data_address == "data-replica:50051"
    assert TrainerSettings().data_address == "data:50051"
