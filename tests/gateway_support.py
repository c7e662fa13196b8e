"""Gateway settings the tests share: free loopback ports, following the test session's trainer."""

from pathlib import Path

from services.inference.config import InferenceSettings


def loopback_gateway_settings(
    data_root: Path, trainer_address: str, **overrides: object
) -> InferenceSettings:
    """The transformers engine (it starts in seconds) unless `overrides` names another."""
    values: dict[str, object] = {"engine": "transformers", **overrides}
    return InferenceSettings(
        data_dir=data_root, port=0, http_port=0, trainer_address=trainer_address, **values
    )
