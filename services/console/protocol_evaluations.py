"""The evaluation form, typed: what it accepts, the CreateRunRequest it becomes (through EvalSpec, the job
spec the CLI and pipelines use), and the equivalent `ftctl eval run` command shown beside it."""

from pydantic import Field

from finetune.v1 import eval_pb2
from ftcommon.errors import InvalidArgument
from ftcommon.specs.evaluate import EvalSpec
from ftcommon.specs.proto_bridge import validate_spec
from services.console.forms import FormModel
from services.console.peers import ConsoleError

SPLITS = ("test", "validation", "train")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class EvalForm(FormModel):
    baseline: str = Field(min_length=1)  # the first model: what the candidate must beat
    candidate: str = ""  # empty: the baseline alone (metrics, no verdict)
    prepared_version_id: str = Field(min_length=1)
    split: str = Field("test", pattern="^(test|validation|train)$")
    max_examples: int = Field(0, ge=0)  # 0: the whole split
    max_tokens: int = Field(0, ge=0, le=4096)  # 0: the service's default
    # One question a line; empty: the eval service's built-in set (100 questions, minutes on a CPU).
    off_topic_probes: str = ""

    @property
    def models(self) -> list[str]:
        return [self.baseline.strip(), *([self.candidate.strip()] if self.candidate.strip() else [])]

    def spec(self) -> EvalSpec:
        """The run as the eval service's spec reads it: only what the form set is sent."""
        values: dict[str, object] = {
            "models": self.models,
            "data": {"prepared_version_id": self.prepared_version_id, "split": self.split},
        }
        if self.max_examples:
            values["max_examples"] = self.max_examples
        if self.max_tokens:
            values["generation"] = {"max_tokens": self.max_tokens}
        if probes := _lines(self.off_topic_probes):
            values["off_topic_probes"] = probes
        try:
            return validate_spec(EvalSpec, values)
        except InvalidArgument as err:
            raise ConsoleError(f"field '{err.field}': {err.message}", 400) from None

    def request(self) -> eval_pb2.CreateRunRequest:
        return self.spec().to_request()

    @classmethod
    def from_request(cls, request: eval_pb2.CreateRunRequest) -> "EvalForm":
        """The form that would have asked for `request` (what a run page shows as its ftctl command)."""
        models = list(request.models) or [""]
        return cls.model_construct(
            baseline=models[0],
            candidate=models[-1] if len(models) > 1 else "",
            prepared_version_id=request.data.prepared_version_id or request.data.dataset_id,
            split=request.data.split or "test",
            max_examples=request.max_examples,
            max_tokens=request.generation.max_tokens,
            off_topic_probes="\n".join(request.off_topic_probes),
        )

    def command(self) -> str:
        parts = [
            f"ftctl eval run --models {','.join(self.models)} --dataset {self.prepared_version_id}",
            f"--split {self.split}",
        ]
        if self.max_examples:
            parts.append(f"--max-examples {self.max_examples}")
        if self.max_tokens:
            parts.append(f"--max-tokens {self.max_tokens}")
        if self.off_topic_probes.strip():
            parts.append("--off-topic-probes probes.txt")
        return " ".join(parts)
