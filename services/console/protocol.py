"""The promote form, typed, and the job states that end a job. The prepare and training forms are drawn from
the job specs themselves (services/console/spec_forms.py); the evaluation form is in protocol_evaluations.py."""

from pydantic import BaseModel, Field

from finetune.v1 import common_pb2


class PromoteForm(BaseModel):
    model: str = Field(min_length=1)
    alias: str = Field("prod", min_length=1)
    eval_run_id: str = ""
    reason: str = ""


TERMINAL_STATES = {
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
}
