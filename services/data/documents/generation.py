"""One generation run: documents -> chunks -> structural and model pairs -> checks -> rows and a report.

Nothing is stored here: the job (services/data/generate_jobs.py) stores the report and registers the rows
as a dataset only once this returned, so a failed or killed run leaves nothing half-registered.
"""

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftcommon.specs.generate import DEFAULT_MAX_ANSWER_CHARS, DEFAULT_PHRASINGS_PER_FACT
from services.data.documents.checks import CheckOutcome, CheckSettings, EvalQuestion, check_pairs
from services.data.documents.chunking import Chunk, ChunkSettings, chunk_blocks
from services.data.documents.fact_pairs import StatedFacts
from services.data.documents.model_generation import ChunkYield, ModelGenerator
from services.data.documents.pairs import STRUCTURAL, Pair, Rejected
from services.data.documents.parsers import DocumentRejected, parse_document
from services.data.documents.structural import structural_pairs
from services.data.pii import redact_text, scan_text

SAMPLE_KEPT = 10
SAMPLE_REJECTED_PER_REASON = 3

# fraction done (0-1), a message for the job's events
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SourceFile:
    name: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class GenerationSettings:
    chunking: ChunkSettings = ChunkSettings()
    checks: CheckSettings = CheckSettings()
    phrasings_per_fact: int = DEFAULT_PHRASINGS_PER_FACT
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS
    redact_pii: bool = False


@dataclass
class GenerationResult:
    documents: list[dict[str, Any]]
    chunks: list[Chunk]
    generated: list[Pair]
    outcome: CheckOutcome
    model_yield: dict[str, ChunkYield] = field(default_factory=dict)  # chunk id -> what the model gave

    def rows(self) -> list[dict[str, object]]:
        return [{**p.row(), "grounding": round(self.outcome.grounding[id(p)], 4)} for p in self.outcome.kept]

    def report(self, eval_questions: int, generator_model_id: str) -> dict[str, Any]:
        """Everything the run decided: per document, per chunk, every pair kept and rejected."""
        kept, rejected = self.outcome.kept, self.outcome.rejected
        kept_by_chunk = Counter(p.chunk.chunk_id for p in kept)
        rejected_by_chunk: dict[str, Counter] = defaultdict(Counter)
        for r in rejected:
            rejected_by_chunk[r.pair.chunk.chunk_id][r.reason] += 1
        structural_by_chunk = Counter(p.chunk.chunk_id for p in self.generated if p.generator == STRUCTURAL)
        chunks = []
        for chunk in self.chunks:
            model = self.model_yield.get(chunk.chunk_id)
            chunks.append(
                {
                    "document": chunk.document,
                    "location": chunk.location,
                    "heading_path": list(chunk.heading_path),
                    "structural_pairs": structural_by_chunk[chunk.chunk_id],
                    "model_pairs": len(model.pairs) if model else 0,
                    "model_malformed": model.malformed if model else 0,
                    "model_failed_calls": model.failed_calls if model else 0,
                    "kept": kept_by_chunk[chunk.chunk_id],
                    "rejected": dict(rejected_by_chunk[chunk.chunk_id]),
                }
            )
        scores = [self.outcome.grounding[id(p)] for p in kept]
        return {
            "documents": self.documents,
            "chunks": chunks,
            "pairs_generated": len(self.generated),
            "pairs_kept": len(kept),
            "facts_kept": len({p.fact_id for p in kept}),
            "rejected_by_reason": dict(Counter(r.reason for r in rejected)),
            "mean_grounding": round(sum(scores) / len(scores), 4) if scores else 0.0,
            "sample_kept": self.rows()[:SAMPLE_KEPT],
            "sample_rejected": _sample_rejected(rejected, self.outcome),
            "generator_model_id": generator_model_id,
            "eval_questions": eval_questions,
            "kept": self.rows(),
            "rejected": [_rejected_json(r, self.outcome) for r in rejected],
        }


def generate(
    sources: Sequence[SourceFile],
    settings: GenerationSettings,
    model: ModelGenerator | None,
    eval_questions: Sequence[EvalQuestion],
    progress: Progress,
    stop_if_asked: Callable[[], None],
) -> GenerationResult:
    documents: list[dict[str, Any]] = []
    chunks: list[Chunk] = []
    for source in sources:
        outcome: dict[str, Any] = {
            "name": source.name,
            "sha256": source.sha256,
            "size_bytes": len(source.data),
        }
        try:
            document_chunks = chunk_blocks(
                source.name, parse_document(source.name, source.data), settings.chunking
            )
        except DocumentRejected as err:
            documents.append({**outcome, "chunks": 0, "rejected": str(err)})
            continue
        if settings.redact_pii:
            document_chunks = [_redacted(c) for c in document_chunks]
        documents.append({**outcome, "chunks": len(document_chunks), "rejected": ""})
        chunks.extend(document_chunks)
    progress(0.05, f"{len(chunks)} chunks from {sum(1 for d in documents if not d['rejected'])} documents")
    generated: list[Pair] = []
    stated = StatedFacts()  # a fact is asked about once per run, however many documents state it
    previous_path: tuple[str, ...] | None = None
    previous_document = ""
    for chunk in chunks:
        continuation = chunk.heading_path == previous_path and chunk.document == previous_document
        generated.extend(
            structural_pairs(
                chunk, settings.phrasings_per_fact, settings.max_answer_chars, continuation, stated
            )
        )
        previous_path, previous_document = chunk.heading_path, chunk.document
    model_yield: dict[str, ChunkYield] = {}
    if model is not None and chunks:

        def on_chunk(index: int, result: ChunkYield) -> None:
            stop_if_asked()
            model_yield[chunks[index].chunk_id] = result
            generated.extend(result.pairs)
            progress(
                0.05 + 0.9 * (index + 1) / len(chunks),
                f"chunk {index + 1}/{len(chunks)}: {len(result.pairs)} model pairs, {result.malformed} malformed, "
                f"{result.failed_calls} failed calls",
            )

        model.pairs_for(chunks, on_chunk)
    outcome = check_pairs(generated, eval_questions, settings.checks)
    progress(0.97, f"{len(outcome.kept)} of {len(generated)} pairs kept")
    return GenerationResult(documents, chunks, generated, outcome, model_yield)


def _redacted(chunk: Chunk) -> Chunk:
    spans = scan_text(chunk.text)
    if not spans:
        return chunk
    return Chunk(
        chunk.document, chunk.index, chunk.heading_path, chunk.location, redact_text(chunk.text, spans)
    )


def _rejected_json(rejected: Rejected, outcome: CheckOutcome) -> dict[str, object]:
    score = outcome.grounding.get(id(rejected.pair))
    return {**rejected.to_json(), "grounding": round(score, 4) if score is not None else 0.0}


def _sample_rejected(rejected: list[Rejected], outcome: CheckOutcome) -> list[dict[str, object]]:
    taken: Counter = Counter()
    sample = []
    for r in rejected:
        if taken[r.reason] < SAMPLE_REJECTED_PER_REASON:
            taken[r.reason] += 1
            sample.append(_rejected_json(r, outcome))
    return sample
