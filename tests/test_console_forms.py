"""The console's forms as a browser fills them: blank inputs mean "not given", the commands they show."""

import pytest
from pydantic import ValidationError

from services.console.protocol import JobForm
from services.console.protocol_evaluations import EvalForm


def test_blank_optional_numbers_keep_their_defaults_and_blank_required_fields_are_named() -> None:
    form = JobForm.model_validate({"prepared_version_id": "pv-1", "learning_rate": "", "epochs": "2"})
    assert form.learning_rate is None and form.epochs == 2
    assert "--learning-rate" not in form.command() and "--epochs 2.0" in form.command()
    with pytest.raises(ValidationError, match="baseline"):
        EvalForm.model_validate({"baseline": "", "prepared_version_id": "pv-1"})
