"""A training job's spec in its payload: stored once, as TrainSpec JSON, and read back through TrainSpec."""

from typing import Any

from ftcommon.specs.train import TrainSpec

SPEC_KEY = "spec"


def spec_payload(spec: TrainSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def stored_spec(payload: dict[str, Any]) -> TrainSpec:
    """The job's spec, with the hyperparameters it runs with (the schedule's choices filled in)."""
    if SPEC_KEY in payload:
        return TrainSpec.model_validate(payload[SPEC_KEY])
    # Jobs queued before the spec was stored kept only the hyperparameters, and 0 for "no step limit".
    hyperparameters = dict(payload["hyperparameters"])
    if hyperparameters.get("max_steps") == 0:
        hyperparameters["max_steps"] = None
    return TrainSpec(
        base_model=payload.get("base_model_name", payload["base_model_id"]),
        prepared_version_id=payload["prepared_version_id"],
        hyperparameters=hyperparameters,
        display_name=payload.get("display_name", ""),
    )
