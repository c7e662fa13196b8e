"""Whether an answer is a refusal: one rule for the evaluator's refusal rates (services/eval), the data
service's refusal preference pairs (services/data/refusal_pairs.py) and benchmarks/dpo_vs_sft.py.

Two kinds of answer refuse:
- The refusal the model was taught, reworded (RefusalDetector.is_refusal): the answer's opening words
  hold at least REFUSAL_SIMILARITY_THRESHOLD of the refusal text's words in order (LCS recall over
  SQuAD-normalised words, ftcommon/word_sequences.py). "Let's keep the discussion relevant to Lamini!" or
  the refusal naming another domain counts; an answer that merely mentions Lamini does not. This is all
  the evaluator counts: its refusal and wrong-refusal rates measure whether the taught refusal was learnt.
- A refusal in the model's own words (opens_with_a_refusal: "I'm sorry, but I can't ..."), as a base model
  gives. Whoever picks rejected answers for preference pairs sets these aside too: rejecting a refusal
  teaches the model to stop refusing.

The opening is the refusal's length plus OPENING_SLACK_WORDS words, so the refusal still counts after a
short preamble ("That is a fun question, but let's keep ..."), while a long answer cannot collect the
refusal's words from scattered sentences. The slack is 10 words, the evaluator's: every refusal rate
reported so far was measured with it, and a preference-pair builder using the same window never makes a
pair whose rejected answer the evaluator would count as a refusal (the data service had its own copy of
this rule, with 5 words of slack and a word split that kept articles and apostrophes).
"""

from dataclasses import dataclass

from ftcommon.word_sequences import lcs_length, tokens

# A fraction of the refusal's words that, found in order in an answer's opening, marks it as the
# refusal. 0.6 tolerates a changed domain name or a missing word, not a different sentence.
REFUSAL_SIMILARITY_THRESHOLD = 0.6
# Words past the refusal's own length that the opening takes in (see the module's docstring).
OPENING_SLACK_WORDS = 10
DEFAULT_REFUSAL_TEXT = "Let's keep the discussion relevant to"
# How answers that refuse in their own words begin (a base model's "I'm sorry, but I can't ...").
_REFUSING_OPENINGS = (
    "i'm sorry",
    "i am sorry",
    "sorry,",
    "i cannot",
    "i can't",
    "i can not",
    "i'm not able",
    "i am not able",
    "i'm unable",
    "i am unable",
    "as an ai",
)


@dataclass(frozen=True)
class RefusalDetector:
    """Tells the taught refusal, in any words, from an answer by its similarity to the refusal text.

    A blank refusal text means the default one: requests leave the field empty when the model was taught
    the default refusal, and every caller would otherwise have to spell that out."""

    refusal_text: str = DEFAULT_REFUSAL_TEXT
    threshold: float = REFUSAL_SIMILARITY_THRESHOLD

    def __post_init__(self) -> None:
        if not self.refusal_text.strip():
            object.__setattr__(self, "refusal_text", DEFAULT_REFUSAL_TEXT)  # frozen: set once, here

    def similarity(self, answer: str) -> float:
        """The share of the refusal's words found in order in the answer's opening (0 for no refusal)."""
        stem = tokens(self.refusal_text)
        if not stem:
            return 0.0
        opening = tokens(answer)[: len(stem) + OPENING_SLACK_WORDS]
        return lcs_length(opening, stem) / len(stem)

    def is_refusal(self, answer: str) -> bool:
        return self.similarity(answer) >= self.threshold


def opens_with_a_refusal(answer: str) -> bool:
    """Whether the answer begins by refusing in its own words ("I'm sorry", "I can't", "As an AI")."""
    return answer.strip().lower().startswith(_REFUSING_OPENINGS)
