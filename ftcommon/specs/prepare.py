"""PrepareSpec: a prepare job as asked (DataService.PrepareDataset), with its defaults in this one place.

The defaults, and why:
- split 0.8/0.1/0.1: the promotion rule judges every rate by its 95% interval, and a test split of 5% leaves
  most data sets with too few test rows to decide anything (see services/data/split_advice.py); a tenth
  held out for test and for validation is the usual choice that still leaves most rows to train on.
- max_seq_len 2048 (and never more than the base model's context): long enough for the Q&A and
  instruction rows this platform is for (lamini_docs' median row is 107 tokens), so a default prepare
  drops almost nothing; packing makes the limit cost nothing for shorter rows.
- refusal fraction 0.15 when a refusal domain (or refusal text) is given, none otherwise: 36 refusal rows in
  1,137 taught SmolLM2 nothing (STACK.md), 15% adds enough distinct off-topic questions to learn from.
- preference_pairs.max_new_tokens 128: the rejected answer only has to show that the model answers instead
  of refusing, which its first sentences do (DPO's signal is where the two answers part); longer answers
  cost generation time on every off-topic row and rarely fit beside the prompt in short max_seq_len.
"""

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from finetune.v1 import data_pb2
from ftcommon.specs.proto_bridge import SpecFieldError, from_message, to_message

Template = Literal["chat", "alpaca", "question_answer"]
Truncation = Literal["drop", "truncate"]
SplitBy = Literal["auto", "row", "fact_phrasing"]

DEFAULT_MAX_SEQ_LEN = 2048
MIN_SEQ_LEN = 16
DEFAULT_REFUSAL_FRACTION = 0.15
DEFAULT_PAIR_MAX_NEW_TOKENS = 128
MAX_PAIR_NEW_TOKENS = 4096


class SplitFractions(BaseModel):
    """finetune.v1.SplitFractions. Each share is 0 unless given: a split is asked for as a whole."""

    model_config = ConfigDict(extra="forbid")

    train: float = 0.0
    validation: float = 0.0
    test: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _from_three_numbers(cls, value: Any) -> Any:
        """Also `[0.8, 0.1, 0.1]` (pipeline files) and "0.8,0.1,0.1" (the CLI's --split)."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) != 3:
                raise ValueError("give three fractions: train, validation, test (e.g. 0.8,0.1,0.1)")
            return dict(zip(("train", "validation", "test"), value, strict=True))
        return value

    @model_validator(mode="after")
    def _fractions(self) -> "SplitFractions":
        fractions = self.as_tuple()
        finite = all(math.isfinite(f) for f in fractions)
        if not finite or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6 or self.train <= 0:
            raise ValueError(
                f"fractions must be finite, non-negative, sum to 1 and give train a share (got {fractions})"
            )
        return self

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.validation, self.test)


DEFAULT_SPLIT = SplitFractions(train=0.8, validation=0.1, test=0.1)


class RefusalOptions(BaseModel):
    """finetune.v1.RefusalOptions: teach refusing off-topic questions."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(
        "", description="Used in the refusal answer: 'Let's keep the discussion relevant to D.'"
    )
    fraction: float = Field(
        0.0,
        description=f"Refusal rows as a fraction of the kept rows; unset: {DEFAULT_REFUSAL_FRACTION} with a "
        "domain or refusal text, else 0.",
    )
    refusal_text: str = Field("", description="A fixed refusal answer instead of the default.")

    @model_validator(mode="before")
    @classmethod
    def _default_fraction(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("fraction") is None:
            wanted = str(value.get("domain", "")).strip() or str(value.get("refusal_text", "")).strip()
            value = {**value, "fraction": DEFAULT_REFUSAL_FRACTION if wanted else 0.0}
        return value

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 <= value <= 1:  # NaN fails this too
            raise ValueError("must be between 0 and 1")
        return value

    @model_validator(mode="after")
    def _domain_for_rows(self) -> "RefusalOptions":
        if self.fraction > 0 and not (self.domain.strip() or self.refusal_text.strip()):
            raise SpecFieldError("domain", "is required when refusals.fraction > 0")
        return self


class PiiOptions(BaseModel):
    """finetune.v1.PiiOptions: what prepare does with emails, phone numbers and API keys."""

    model_config = ConfigDict(extra="forbid")

    redact: bool = Field(False, description="Replace them with placeholders in the prepared rows.")
    strict: bool = Field(False, description="Refuse to prepare while any would remain unredacted.")
    allow: list[str] = Field([], description="Email domains, addresses or phone numbers to keep as written.")

    @field_validator("allow")
    @classmethod
    def _sorted(cls, value: list[str]) -> list[str]:
        # The same allow-list in any order or spacing is the same request (and the same version id).
        return sorted({entry.strip() for entry in value})


class PreferencePairOptions(BaseModel):
    """finetune.v1.PreferencePairOptions: refusal preference pairs built from an SFT dataset."""

    model_config = ConfigDict(extra="forbid")

    from_refusals: bool = Field(
        False,
        description="Build preference pairs: off-topic prompts (refusal rows) prefer the refusal over the "
        "generator's own answer; in-domain prompts prefer the reference answer over the refusal.",
    )
    generator: str = Field(
        "",
        description="Registry name, id or alias of the model whose answers are rejected; empty: the base "
        "model prepared for.",
    )
    max_new_tokens: int = Field(
        DEFAULT_PAIR_MAX_NEW_TOKENS, description="Longest generated answer in tokens (greedy decoding)."
    )

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new_tokens(cls, value: int) -> int:
        if not 1 <= value <= MAX_PAIR_NEW_TOKENS:
            raise ValueError(f"must be between 1 and {MAX_PAIR_NEW_TOKENS} (leave it unset for the default)")
        return value

    @field_validator("generator")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class PrepareSpec(BaseModel):
    """A prepare job as asked: finetune.v1.PrepareDatasetRequest."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(description="The uploaded dataset to prepare.")
    base_model: str = Field(min_length=1, description="Registry name, id or alias of the base model.")
    template: Template = Field(
        "chat", description="chat (the model's own chat template) | alpaca | question_answer."
    )
    system_prompt: str = Field("", description="Added as the first message of every row.")
    max_seq_len: int = Field(
        DEFAULT_MAX_SEQ_LEN, description="Longest example in tokens; never more than the model's context."
    )
    truncation: Truncation = Field("drop", description="Longer examples: drop | truncate.")
    split: SplitFractions = Field(DEFAULT_SPLIT, description="train, validation and test fractions.")
    seed: int = Field(0, description="Seed of the split and of the refusal questions.")
    refusals: RefusalOptions = Field(default_factory=RefusalOptions)
    pii: PiiOptions = Field(default_factory=PiiOptions)
    validation_dataset_id: str = Field(
        "", description="Another dataset that forms the whole validation split (its share must then be 0)."
    )
    split_by: SplitBy = Field(
        "auto",
        description="row: every duplicate group (exact or near) in one split | fact_phrasing: the phrasings "
        "of a fact (rows sharing a fact_id, as GenerateDataset writes) split between train and the held-out "
        "splits, so test asks trained facts in words never trained on | auto: fact_phrasing when rows carry "
        "a fact_id, else row.",
    )
    preference_pairs: PreferencePairOptions = Field(default_factory=PreferencePairOptions)

    @field_validator("split", mode="before")
    @classmethod
    def _zero_split_is_the_default(cls, value: Any) -> Any:
        # A split message with every share 0 is what older clients sent for "the default".
        if isinstance(value, dict) and not any(value.get(k) for k in ("train", "validation", "test")):
            return DEFAULT_SPLIT
        return value

    @field_validator("max_seq_len")
    @classmethod
    def _max_seq_len(cls, value: int) -> int:
        if value < MIN_SEQ_LEN:
            raise ValueError(f"must be at least {MIN_SEQ_LEN} (leave it unset for the default)")
        return value

    @field_validator("system_prompt")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _validation_rows(self) -> "PrepareSpec":
        if self.validation_dataset_id and self.split.validation > 0:
            raise SpecFieldError(
                "split",
                "must give validation no share when validation_dataset_id supplies the validation rows",
            )
        return self

    def to_request(self, *, include_defaults: bool = False) -> data_pb2.PrepareDatasetRequest:
        return to_message(self, data_pb2.PrepareDatasetRequest, include_defaults=include_defaults)

    @classmethod
    def from_request(cls, request: data_pb2.PrepareDatasetRequest) -> "PrepareSpec":
        return from_message(request, cls)
