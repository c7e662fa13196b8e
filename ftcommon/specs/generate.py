"""GenerateSpec: a generate job as asked (DataService.GenerateDataset), with its defaults in this one place.

The defaults, and why:
- chunks of at most 1,500 characters (about 375 tokens) with 150 of overlap: a section of a runbook or a
  wiki page usually fits whole, and a chunk plus the instructions stays far inside a small generator's
  context (SmolLM2's 2,048 tokens) with room for its reply.
- 3 phrasings per fact: enough to train on some and hold others out (split by phrasing within a fact).
- grounding 0.7: an extractive answer scores 1.0; a paraphrase keeps most of its content words; an
  answer with under 70% of its content words in its chunk says something the chunk does not.
- answers of at most 600 characters: a section's opening, not the whole section.
- 2 attempts per question style and chunk, replies of at most 192 tokens: a small model that fails twice
  rarely succeeds a third time, and a JSON question-answer pair fits in 192 tokens.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finetune.v1 import data_pb2
from ftcommon.specs.proto_bridge import SpecFieldError, from_message, to_message

QuestionStyle = Literal["factual", "how-to", "why", "paraphrase"]

DEFAULT_CHUNK_MAX_CHARS = 1500
DEFAULT_CHUNK_OVERLAP_CHARS = 150
DEFAULT_PHRASINGS_PER_FACT = 3
DEFAULT_MIN_GROUNDING = 0.7
DEFAULT_MAX_ANSWER_CHARS = 600
DEFAULT_MODEL_ATTEMPTS = 2
DEFAULT_MODEL_MAX_TOKENS = 192


class SourceDocument(BaseModel):
    """finetune.v1.SourceDocument: a document sent with the request."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(
        min_length=1,
        description="Its suffix picks the parser: .md .markdown .html .htm .txt .text .rst .pdf .docx.",
    )
    content: bytes = Field(b"", description="The document's bytes.")


class GenerateSpec(BaseModel):
    """A generate job as asked: finetune.v1.GenerateDatasetRequest."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", description="The dataset's name; unset: generated-<job id>.")
    documents: list[SourceDocument] = Field([], description="Documents sent with the request.")
    sources: list[str] = Field([], description="Document paths under the data service's allowed roots.")
    generator: str = Field(
        "", description="A served model (name, id or alias) that writes extra pairs; unset: structural only."
    )
    question_styles: list[QuestionStyle] = Field(
        [], description="Question styles for the generator model; unset: all four."
    )
    chunk_max_chars: int = Field(DEFAULT_CHUNK_MAX_CHARS, gt=0, description="Chunk size bound in characters.")
    chunk_overlap_chars: int = Field(
        DEFAULT_CHUNK_OVERLAP_CHARS, ge=0, description="Overlap between chunks of one section, in characters."
    )
    phrasings_per_fact: int = Field(
        DEFAULT_PHRASINGS_PER_FACT, ge=1, le=5, description="Structural phrasings of each fact."
    )
    min_grounding: float = Field(
        DEFAULT_MIN_GROUNDING,
        ge=0,
        le=1,
        description="Share of an answer's content words its chunk must hold.",
    )
    eval_dataset_ids: list[str] = Field(
        [],
        description="Evaluation sets of the domain: generated questions that duplicate theirs are removed.",
    )
    redact_pii: bool = Field(False, description="Replace emails, phone numbers and keys before generating.")
    max_answer_chars: int = Field(
        DEFAULT_MAX_ANSWER_CHARS, ge=20, description="Longest structural answer in characters."
    )
    model_attempts: int = Field(
        DEFAULT_MODEL_ATTEMPTS, ge=1, le=5, description="Generator attempts per question style and chunk."
    )
    model_max_tokens: int = Field(
        DEFAULT_MODEL_MAX_TOKENS, ge=16, le=1024, description="The longest generator reply in tokens."
    )
    refusal_text: str = Field(
        "",
        description="The refusal the tuned model will be taught (prepare's refusals.refusal_text): answers "
        "the evaluator would read as it are rejected; empty: the default refusal.",
    )

    @model_validator(mode="after")
    def _overlap_under_half(self) -> "GenerateSpec":
        if self.chunk_overlap_chars >= self.chunk_max_chars // 2:
            raise SpecFieldError(
                "chunk_overlap_chars", f"must be under half of chunk_max_chars ({self.chunk_max_chars // 2})"
            )
        return self

    def to_request(self, *, include_defaults: bool = False) -> data_pb2.GenerateDatasetRequest:
        return to_message(self, data_pb2.GenerateDatasetRequest, include_defaults=include_defaults)

    @classmethod
    def from_request(cls, request: data_pb2.GenerateDatasetRequest) -> "GenerateSpec":
        return from_message(request, cls)
