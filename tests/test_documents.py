"""Documents to Q&A: parsers, chunking by headings, the structural generator and the checks on pairs."""

import pytest
from document_fixtures import RUNBOOK_HTML, RUNBOOK_MD, blank_pdf_bytes, docx_bytes, pdf_bytes

from ftcommon.errors import InvalidArgument
from services.data.documents.checks import CheckSettings, EvalQuestion, check_pairs
from services.data.documents.chunking import ChunkSettings, chunk_blocks
from services.data.documents.fact_pairs import StatedFacts
from services.data.documents.model_generation import parse_pair
from services.data.documents.pairs import Pair, fact_id
from services.data.documents.parsers import DocumentRejected, parse_document
from services.data.documents.structural import structural_pairs


def test_markdown_blocks_keep_heading_path_and_line():
    blocks = parse_document("runbook.md", RUNBOOK_MD.encode())
    install = next(b for b in blocks if "make setup" in b.text)
    assert install.heading_path == ("Runbook", "Install")
    assert install.location == "line 7"
    assert "`make setup`" in install.text  # Markdown kept: commands stay in backticks
    item = next(b for b in blocks if "stack status" in b.text)
    assert item.heading_path == ("Runbook", "Wipe local data") and item.location == "line 13"


def test_html_blocks_follow_headings_and_drop_scripts_and_navigation():
    blocks = parse_document("runbook.html", RUNBOOK_HTML)
    texts = [b.text for b in blocks]
    assert texts == [
        "The platform runs four services on one machine.",
        "Run make setup to create the virtual environment.",
        "It needs Python 3.11.",
    ]
    assert blocks[1].heading_path == ("Runbook", "Install") and blocks[1].location == "line 6"


def test_pdf_text_by_page_with_outline_as_headings():
    data = pdf_bytes(
        [["Run make setup first.", "It needs Python 3.11."], ["Run make clean to wipe var/."]],
        outline=[("Install", 0), ("Wipe", 1)],
    )
    blocks = parse_document("guide.pdf", data)
    assert [(b.heading_path, b.location) for b in blocks] == [(("Install",), "page 1"), (("Wipe",), "page 2")]
    assert "Python 3.11" in blocks[0].text and "make clean" in blocks[1].text


def test_docx_headings_and_paragraphs():
    data = docx_bytes([("h1", "Runbook"), ("p", "Intro."), ("h2", "Install"), ("p", "Run make setup.")])
    blocks = parse_document("runbook.docx", data)
    assert [(b.text, b.heading_path, b.location) for b in blocks] == [
        ("Intro.", ("Runbook",), "paragraph 2"),
        ("Run make setup.", ("Runbook", "Install"), "paragraph 4"),
    ]


def test_plain_text_short_lines_become_headings():
    blocks = parse_document(
        "notes.txt", b"Install\n\nRun make setup.\nIt takes minutes.\n\nWipe\n\nRun make clean.\n"
    )
    assert [(b.heading_path, b.location) for b in blocks] == [(("Install",), "line 3"), (("Wipe",), "line 8")]


@pytest.mark.parametrize(
    ("filename", "data", "reason"),
    [
        ("scan.pdf", blank_pdf_bytes(), "hold no text"),
        ("empty.pdf", b"", "not a readable PDF"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "not a readable DOCX"),
        ("blank.html", b"<html><body><script>var x = 1;</script></body></html>", "no text"),
        ("empty.md", b"   \n\n", "no text"),
        ("sheet.xlsx", b"PK", "unsupported document type '.xlsx'"),
        ("latin.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_documents_are_rejected_with_a_reason(filename, data, reason):
    with pytest.raises(DocumentRejected, match=reason):
        parse_document(filename, data)


def test_chunks_never_span_headings_and_respect_the_size_bound():
    blocks = parse_document("runbook.md", RUNBOOK_MD.encode())
    chunks = chunk_blocks("runbook.md", blocks, ChunkSettings(max_chars=60, overlap_chars=20))
    assert all(len(c.text) <= 60 for c in chunks)
    for chunk in chunks:
        # Each chunk's text comes from its own section only.
        assert ("make clean" in chunk.text) <= (chunk.heading_path == ("Runbook", "Wipe local data"))
    paths = [c.heading_path for c in chunks]
    assert paths == sorted(paths, key=paths.index)  # a section's chunks are consecutive
    wipe = [c for c in chunks if c.heading_path[-1] == "Wipe local data" and c.location == "line 11"]
    assert len(wipe) == 2 and wipe[1].text.startswith("folder with every")  # the overlap
    whole = chunk_blocks("runbook.md", blocks, ChunkSettings())
    assert [c.heading_path[-1] for c in whole] == ["Runbook", "Install", "Wipe local data"]


@pytest.mark.parametrize(
    ("settings", "field"),
    [(ChunkSettings(max_chars=0), "chunk_max_chars"), (ChunkSettings(100, 60), "chunk_overlap_chars")],
)
def test_bad_chunk_settings_name_the_field(settings, field):
    with pytest.raises(InvalidArgument) as caught:
        chunk_blocks("runbook.md", parse_document("runbook.md", RUNBOOK_MD.encode()), settings)
    assert caught.value.field == field


def runbook_chunks() -> list:
    return chunk_blocks("runbook.md", parse_document("runbook.md", RUNBOOK_MD.encode()), ChunkSettings())


def test_structural_generator_asks_about_headings_with_extractive_answers():
    pairs = [p for c in runbook_chunks() for p in structural_pairs(c, 3, 600, False, StatedFacts())]
    by_fact: dict[str, list] = {}
    for pair in pairs:
        by_fact.setdefault(pair.fact_id, []).append(pair)
    assert len(by_fact) == 4  # overview, install, wipe, and the `ftctl stack status` term
    assert all(len(phrasings) == 3 for phrasings in by_fact.values())
    for pair in pairs:
        assert pair.answer in pair.chunk.text  # extractive
        assert len({p.question for p in by_fact[pair.fact_id]}) == 3  # three different phrasings
    wipe = [p for p in pairs if p.chunk.heading_path[-1] == "Wipe local data" and p.style == "how"]
    assert wipe[0].question == "How do I wipe local data in Runbook?"
    assert wipe[0].answer.startswith("Run `make clean` to delete the var/ folder")
    term = [p for p in pairs if p.style == "term"]
    assert term[0].question == "What does `ftctl stack status` do in Runbook?"
    # A continuation asks no heading question again, and no fact an earlier answer of the run states.
    install, stated = runbook_chunks()[1], StatedFacts()
    structural_pairs(install, 3, 600, False, stated)
    assert structural_pairs(install, 3, 600, True, stated) == []
    assert {p.style for p in structural_pairs(install, 3, 600, True, StatedFacts())} == {"fact"}


def invented(chunk, answer: str) -> Pair:
    return Pair(
        "How do I wipe local data in Runbook?", answer, fact_id(chunk, answer), chunk, "model", "how-to"
    )


def test_grounding_keeps_an_extractive_answer_and_rejects_an_invented_one():
    wipe = next(c for c in runbook_chunks() if c.heading_path[-1] == "Wipe local data")
    extractive = invented(wipe, "Run make clean: it deletes the var/ folder with every dataset.")
    made_up = invented(wipe, "Use the ftctl data create command with the purge option.")
    wrong_number = invented(wipe, "Run make clean 3 times to delete the var folder.")
    outcome = check_pairs([extractive, made_up, wrong_number], [], CheckSettings())
    assert outcome.kept == [extractive]
    assert outcome.grounding[id(extractive)] >= 0.7 > outcome.grounding[id(made_up)]
    reasons = {r.pair.answer: (r.reason, r.detail) for r in outcome.rejected}
    assert reasons[made_up.answer][0] == "ungrounded" and "grounding 0." in reasons[made_up.answer][1]
    assert reasons[wrong_number.answer] == ("ungrounded", "the answer states 3, which its chunk does not")


def test_an_answer_that_quotes_the_refusal_is_not_kept():
    # A document may quote the refusal; trained on, it would teach refusing an in-domain question.
    guide = (
        "# Refusals\n\nThe taught refusal opens with the words: Let's keep the discussion relevant to Acme.\n"
    )
    chunk = chunk_blocks("guide.md", parse_document("guide.md", guide.encode()), ChunkSettings())[0]
    quoting = Pair(
        "What does the taught refusal say?",
        "Let's keep the discussion relevant to Acme.",
        "f1",
        chunk,
        "structural",
        "what",
    )
    describing = Pair(
        "What opens the taught refusal?",
        "The taught refusal opens with the words of the guide.",
        "f2",
        chunk,
        "structural",
        "what",
    )
    outcome = check_pairs([quoting, describing], [], CheckSettings())
    assert outcome.kept == [describing]
    assert [(r.pair, r.reason) for r in outcome.rejected] == [(quoting, "reads_as_refusal")]


def test_the_refusal_checked_is_the_one_the_model_will_be_taught():
    guide = "# Scope\n\nOur bot answers: I only answer questions about the Acme billing system.\n"
    chunk = chunk_blocks("guide.md", parse_document("guide.md", guide.encode()), ChunkSettings())[0]
    quoting = Pair(
        "What does the bot answer off topic?",
        "I only answer questions about the Acme billing system.",
        "f1",
        chunk,
        "structural",
        "what",
    )
    assert check_pairs([quoting], [], CheckSettings()).kept == [quoting]  # not the default refusal
    custom = CheckSettings(refusal_text="I only answer questions about the Acme billing system.")
    assert [r.reason for r in check_pairs([quoting], [], custom).rejected] == ["reads_as_refusal"]


def test_questions_that_are_only_the_heading_and_out_of_bounds_lengths_are_rejected():
    install = next(c for c in runbook_chunks() if c.heading_path[-1] == "Install")
    answer = "Run `make setup` to create the virtual environment."
    pairs = [
        Pair("What is Install?", answer, "f1", install, "model", "factual"),
        Pair("How?", answer, "f1", install, "model", "factual"),
        Pair("How do I set up the platform?", "make", "f1", install, "model", "factual"),
        Pair("How do I set up the platform?", answer, "f1", install, "model", "factual"),
    ]
    outcome = check_pairs(pairs, [], CheckSettings())
    assert [p.question for p in outcome.kept] == ["How do I set up the platform?"]
    assert [r.reason for r in outcome.rejected] == ["heading_only", "question_too_short", "answer_too_short"]


def test_duplicates_within_the_set_keep_the_first_and_say_why():
    pairs = [p for c in runbook_chunks() for p in structural_pairs(c, 2, 600, False, StatedFacts())]
    outcome = check_pairs(pairs + pairs[:2], [], CheckSettings())
    assert len(outcome.kept) == len(pairs)
    assert [r.reason for r in outcome.rejected] == ["duplicate", "duplicate"]
    assert outcome.rejected[0].detail == "the same question as kept pair 1"


def test_contamination_guard_removes_pairs_that_repeat_an_evaluation_question():
    pairs = [p for c in runbook_chunks() for p in structural_pairs(c, 3, 600, False, StatedFacts())]
    evaluation = [
        EvalQuestion("ds-eval", 7, "How do I wipe local data in Runbook?"),  # exactly a generated phrasing
        EvalQuestion("ds-eval", 9, "What are the steps to install for Runbook, please?"),  # nearly one
        EvalQuestion("ds-eval", 12, "Which port does the gateway listen on?"),  # about nothing generated
    ]
    outcome = check_pairs(pairs, evaluation, CheckSettings())
    removed = {r.pair.question: r.detail for r in outcome.rejected if r.reason == "eval_contamination"}
    assert (
        removed["How do I wipe local data in Runbook?"]
        == "the same question as line 7 of evaluation set ds-eval"
    )
    assert "line 9 of evaluation set ds-eval" in removed["What are the steps to install for Runbook?"]
    assert len(removed) == 2 and len(outcome.kept) == len(pairs) - 2
    # The other phrasings of the same facts stay: the fact is trained, the evaluation's wording is not.
    assert any(p.question == "In Runbook, how do you wipe local data?" for p in outcome.kept)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"question": "What is X?", "answer": "X is Y."}', ("What is X?", "X is Y.")),
        ('Sure! Here it is:\n{"question": "Q?", "answer": "A."} Hope it helps', ("Q?", "A.")),
        ('{"question": "Q?"}', None),
        ('{"question": "Q?", "answer": ', None),
        # SmolLM2-135M's usual reply to the prompt: labelled lines instead of JSON.
        (
            'Question: "What is the purpose of make clean?"\n\nAnswer: "It deletes var/."',
            (
                "What is the purpose of make clean?",
                "It deletes var/.",
            ),
        ),
        ("Question: what is it\nAnswer: that.", None),  # not a question
        ("Here is a question about the text.", None),
        ('["not", "an", "object"]', None),
    ],
)
def test_model_replies_are_parsed_or_refused(reply, expected):
    assert parse_pair(reply) == expected


def test_generate_spec_matches_its_message_and_names_bad_fields():
    from finetune.v1 import data_pb2
    from ftcommon.specs.generate import GenerateSpec
    from ftcommon.specs.proto_bridge import spec_fields_mismatch

    assert spec_fields_mismatch(GenerateSpec, data_pb2.GenerateDatasetRequest.DESCRIPTOR) == []
    spec = GenerateSpec(documents=[{"filename": "a.md", "content": b"# A"}], chunk_max_chars=400)
    assert GenerateSpec.from_request(spec.to_request()) == spec
    assert not spec.to_request().HasField("phrasings_per_fact")  # unset stays unset: the server's default
    for request, field in (
        (data_pb2.GenerateDatasetRequest(chunk_max_chars=0), "chunk_max_chars"),
        (data_pb2.GenerateDatasetRequest(chunk_overlap_chars=800), "chunk_overlap_chars"),
        (data_pb2.GenerateDatasetRequest(question_styles=["poetic"]), "question_styles"),
        (data_pb2.GenerateDatasetRequest(model_max_tokens=5000), "model_max_tokens"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            GenerateSpec.from_request(request)
        assert caught.value.field == field


def test_a_fenced_code_block_with_blank_lines_is_never_an_answer():
    text = "# Guide\n\n## Setup\n\n```sh\nmake setup\n\nmake test\n```\n\nSetup takes about 4 minutes on a laptop.\n"
    [chunk] = [
        c for c in chunk_blocks("guide.md", parse_document("guide.md", text.encode()), ChunkSettings())
    ]
    answers = {p.answer for p in structural_pairs(chunk, 3, 600, False, StatedFacts())}
    assert answers == {"Setup takes about 4 minutes on a laptop."}


def test_the_shipped_docs_questions_each_have_a_key_fact_and_are_never_generated():
    """samples/docs_questions.jsonl: hand-written questions about docs/*.md and README.md for evaluation.
    Each reference states a key fact (so fact accuracy scores every row), and with them as the evaluation
    set, no pair generated from the same documents repeats one of their questions."""
    import json
    from pathlib import Path

    from services.eval.metrics import key_fact

    root = Path(__file__).resolve().parent.parent
    rows = [json.loads(line) for line in (root / "samples" / "docs_questions.jsonl").read_text().splitlines()]
    assert len(rows) >= 40 and all(key_fact(row["answer"]) for row in rows)
    chunks = [
        chunk
        for path in [*sorted((root / "docs").glob("*.md")), root / "README.md"]
        for chunk in chunk_blocks(path.name, parse_document(path.name, path.read_bytes()), ChunkSettings())
    ]
    pairs = [p for c in chunks for p in structural_pairs(c, 3, 600, False, StatedFacts())]
    evaluation = [EvalQuestion("docs-questions", i + 1, row["question"]) for i, row in enumerate(rows)]
    outcome = check_pairs(pairs, evaluation, CheckSettings())
    asked = {row["question"] for row in rows}
    assert not asked & {p.question for p in outcome.kept}


def test_pii_is_redacted_before_generation_when_asked():
    from services.data.documents.generation import GenerationSettings, SourceFile, generate

    text = b"# Support\n\n## Escalation\n\nWrite to oncall@example.com or call +44 20 7946 0958 when the gateway is down.\n"
    source = [SourceFile("support.md", text, "sha")]

    def answers(redact: bool) -> set[str]:
        result = generate(
            source, GenerationSettings(redact_pii=redact), None, [], lambda *_: None, lambda: None
        )
        return {p.answer for p in result.outcome.kept}

    assert answers(redact=True) == {"Write to [EMAIL] or call [PHONE] when the gateway is down."}
    assert all("oncall@example.com" in answer for answer in answers(redact=False))
