"""Structural pairs per fact inside a section (services/data/documents/fact_pairs.py): a sentence, list item,
table row or commented command that states a key fact (by the evaluator's rule) gets pairs of its own."""

import json
from pathlib import Path

from ftcommon.key_facts import key_fact, states_fact
from services.data.documents.checks import CheckSettings, EvalQuestion, check_pairs
from services.data.documents.chunking import Chunk, ChunkSettings, chunk_blocks
from services.data.documents.fact_pairs import StatedFacts, fact_pairs, fact_units
from services.data.documents.generation import GenerationSettings, SourceFile, generate
from services.data.documents.parsers import parse_document
from services.data.documents.structural import structural_pairs

ROOT = Path(__file__).resolve().parent.parent

# The port is in the section's third sentence, past the 300 characters its opening answer may take.
GUIDE_MD = """# Service guide

## Data service

The data service stores every uploaded file in the artifact store and keeps a validation report for it, so a
rejected row can be traced back to its line. It checks each row against the schema detected from its fields
before anything is prepared, and names the field that failed. It listens on port 50051 unless told otherwise.

It writes its logs as JSON lines on standard error.

| setting | default | meaning |
|---|---|---|
| `FT_DATA_MAX_DOCUMENT_BYTES` | 20 MiB | the largest document a generation job reads |

```bash
ftctl stack down      # stops exactly the processes stack up started
ftctl stack status
```
"""


def guide_chunks() -> list[Chunk]:
    return chunk_blocks("guide.md", parse_document("guide.md", GUIDE_MD.encode()), ChunkSettings())


def test_a_port_in_a_sections_third_sentence_gets_its_own_pairs():
    [section] = guide_chunks()
    pairs = structural_pairs(section, 3, 300, False, StatedFacts())
    opening = [p for p in pairs if p.style != "fact"]
    assert opening and all("50051" not in p.answer for p in opening)  # the opening stops before it
    port = [p for p in pairs if p.style == "fact" and "50051" in p.answer]
    assert [p.answer for p in port] == ["It listens on port 50051 unless told otherwise."] * 3
    assert len({p.question for p in port}) == 3 and len({p.fact_id for p in port}) == 1
    assert all("50051" not in p.question for p in port)  # the fact is asked for, never given away
    assert (
        port[0].question == "Data service, in Service guide: It listens on which port unless told otherwise?"
    )


def test_only_units_with_a_key_fact_worth_asking_get_pairs():
    [section] = guide_chunks()
    answers = [p.answer for p in fact_pairs(section, "Data service", "Service guide", 3, 300, StatedFacts())]
    assert "It writes its logs as JSON lines on standard error." not in answers  # no key fact: no pair
    assert set(answers) == {
        "It listens on port 50051 unless told otherwise.",
        "setting: `FT_DATA_MAX_DOCUMENT_BYTES`; default: 20 MiB; meaning: the largest document a generation "
        "job reads",
        "`ftctl stack down`: stops exactly the processes stack up started",
    }
    for text in (
        "It writes its logs as JSON lines on standard error.",
        "Deploy it with Kubernetes manifests.",  # a name, not a fact worth a pair
        "It keeps 3 copies.",  # a one-digit count
    ):
        assert list(fact_units(text, StatedFacts(), 300)) == []


def test_each_asked_fact_is_the_answers_key_fact_by_the_evaluators_rule_or_follows_it():
    [section] = guide_chunks()
    for unit in fact_units(section.text, StatedFacts(), 300):
        assert states_fact(unit.answer, unit.fact.text)
    # The rule the evaluator scores with picks the same fact from the answer when nothing was stated before.
    [port] = list(fact_units("It listens on port 50051 unless told otherwise.", StatedFacts(), 300))
    assert port.fact.text == key_fact(port.answer) == "50051" and port.kind == "port"


def test_a_fact_answered_before_is_not_asked_again_but_one_only_mentioned_is():
    stated = StatedFacts()
    stated.add("The data service listens on port 50051.")  # a heading pair's answer: all its facts count
    units = list(fact_units("It listens on port 50051; the gateway on port 8000 and 8001.", stated, 300))
    assert [u.fact.text for u in units] == [
        "8000"
    ]  # the first fact was answered: the rule goes on to the next
    assert list(fact_units("The gateway's HTTP port is 8000 there too.", stated, 300)) == []  # asked above
    # 8001 was only mentioned in that answer, never asked for: it gets a pair of its own.
    assert [u.fact.text for u in fact_units("The metrics port is 8001 unless set.", stated, 300)] == ["8001"]


def test_a_long_sentence_is_cut_at_clause_ends_around_its_fact():
    sentence = (
        "Every generation has a server-side deadline, `FT_INFERENCE_GENERATION_TIMEOUT_SECONDS` (300): past it "
        "the request ends with a 504 and the engine is asked to abort it, which frees its slot for the next "
        "request, and the log says which request it was, how long it ran, which model served it, and what "
        "the client asked for in its parameters."
    )
    [unit] = list(fact_units(sentence, StatedFacts(), 150))
    assert len(unit.answer) <= 150 and sentence.startswith(unit.answer)
    assert "FT_INFERENCE_GENERATION_TIMEOUT_SECONDS" in unit.answer


def docs_sources() -> list[SourceFile]:
    paths = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    return [SourceFile(p.name, p.read_bytes(), "sha") for p in paths]


def test_generation_on_the_docs_is_deterministic_and_covers_the_hand_written_facts():
    """The documents demo's corpus and settings: most key facts of samples/docs_questions.jsonl are in some
    kept answer (15 of 48 before per-fact pairs), no hand-written question is generated, and the set stays
    small enough to train on for 8 epochs."""
    rows = [json.loads(line) for line in (ROOT / "samples" / "docs_questions.jsonl").read_text().splitlines()]
    evaluation = [EvalQuestion("docs-questions", i + 1, row["question"]) for i, row in enumerate(rows)]
    settings = GenerationSettings(phrasings_per_fact=3, max_answer_chars=300)

    def run() -> list[dict[str, object]]:
        result = generate(docs_sources(), settings, None, evaluation, lambda *_: None, lambda: None)
        return result.rows()

    kept = run()
    assert kept == run()
    answers = [str(row["answer"]) for row in kept]
    covered = [row for row in rows if any(states_fact(a, key_fact(row["answer"])) for a in answers)]
    assert len(covered) >= 38
    assert not {row["question"] for row in rows} & {row["question"] for row in kept}
    assert len(kept) <= 800


def test_fact_pairs_pass_the_checks_as_extractive_answers():
    pairs = [p for c in guide_chunks() for p in structural_pairs(c, 3, 300, False, StatedFacts())]
    outcome = check_pairs(pairs, [], CheckSettings())
    assert not outcome.rejected
    assert all(outcome.grounding[id(p)] == 1.0 for p in outcome.kept if p.style == "fact")
