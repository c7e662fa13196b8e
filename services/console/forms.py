"""What every console form shares: a browser sends an empty input as "", which means "not given"."""

from typing import Any

from pydantic import BaseModel, model_validator


class FormModel(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        # An empty optional number ("learning rate: blank") takes the field's default instead of failing
        # to parse; a required field left blank is still reported as missing.
        if isinstance(data, dict):
            return {name: value for name, value in data.items() if value != ""}
        return data
