"""`ftctl data generate`: documents to a question-answer dataset (DataService.GenerateDataset)."""

from pathlib import Path

import typer
from rich.markup import escape

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc
from ftcommon.specs.generate import (
    DEFAULT_CHUNK_MAX_CHARS,
    DEFAULT_CHUNK_OVERLAP_CHARS,
    DEFAULT_MIN_GROUNDING,
    DEFAULT_MODEL_ATTEMPTS,
    DEFAULT_MODEL_MAX_TOKENS,
    DEFAULT_PHRASINGS_PER_FACT,
    GenerateSpec,
)
from ftcommon.specs.proto_bridge import validate_spec
from ftctl.common import (
    JSON_OPTION,
    STATE_NAMES,
    addresses,
    console,
    follow_job,
    print_json,
    print_table,
    rpc_errors,
    spec_errors,
    stdout,
    stub,
)

# What the data service parses; folders given on the command line contribute only these.
DOCUMENT_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".txt", ".text", ".rst", ".pdf", ".docx")
SAMPLE_ROWS = 5


def generate(
    documents: list[Path] = typer.Argument(
        ...,
        help="Documents (Markdown, HTML, plain text, PDF, DOCX) or folders of them (searched recursively).",
    ),
    generator: str = typer.Option(
        "",
        "--generator",
        help="A served model (name, id or alias) that writes extra pairs per chunk. Without it only the "
        "structural generator runs: headings and their sections become questions with extractive answers.",
    ),
    name: str = typer.Option("", "--name", help="The dataset's name. Default: generated-<job id>."),
    styles: list[str] = typer.Option(
        [],
        "--style",
        help="Question style for the generator model (repeatable): factual, how-to, why, paraphrase.",
    ),
    eval_datasets: list[str] = typer.Option(
        [],
        "--eval-dataset",
        help="An evaluation dataset of the domain (repeatable): generated questions that duplicate its "
        "questions are removed (contamination guard).",
    ),
    chunk_max_chars: int | None = typer.Option(
        None, "--chunk-max-chars", help=f"Chunk size bound. Default: {DEFAULT_CHUNK_MAX_CHARS}."
    ),
    chunk_overlap_chars: int | None = typer.Option(
        None,
        "--chunk-overlap-chars",
        help=f"Overlap between chunks of one section. Default: {DEFAULT_CHUNK_OVERLAP_CHARS}.",
    ),
    phrasings: int | None = typer.Option(
        None,
        "--phrasings",
        help=f"Structural phrasings per fact, 1-5. Default: {DEFAULT_PHRASINGS_PER_FACT}.",
    ),
    min_grounding: float | None = typer.Option(
        None,
        "--min-grounding",
        help=f"Share of an answer's content words its chunk must hold, 0-1. Default: {DEFAULT_MIN_GROUNDING}.",
    ),
    model_attempts: int | None = typer.Option(
        None,
        "--model-attempts",
        help=f"Generator attempts per style and chunk, 1-5. Default: {DEFAULT_MODEL_ATTEMPTS}.",
    ),
    model_max_tokens: int | None = typer.Option(
        None,
        "--model-max-tokens",
        help=f"Longest generator reply in tokens. Default: {DEFAULT_MODEL_MAX_TOKENS}.",
    ),
    redact_pii: bool = typer.Option(
        False, "--redact-pii", help="Replace emails, phone numbers and keys in the text before generating."
    ),
    refusal_text: str = typer.Option(
        "",
        "--refusal-text",
        help="The refusal the model will be taught (`ftctl data prepare --refusal-text`): answers that read "
        "as it are rejected. Default: the default refusal.",
    ),
    server_paths: bool = typer.Option(
        False,
        "--server-paths",
        help="Send the paths, not the bytes: the data service reads them under its allowed roots.",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job's progress until it ends."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Generate grounded question-answer pairs from documents into a dataset (a job), and print its report:
    yield per document and chunk, rejected pairs by reason, and a sample."""
    files = document_files(documents)
    values = {
        "name": name,
        "generator": generator,
        "question_styles": styles,
        "eval_dataset_ids": eval_datasets,
        "redact_pii": redact_pii,
        "chunk_max_chars": chunk_max_chars,
        "chunk_overlap_chars": chunk_overlap_chars,
        "phrasings_per_fact": phrasings,
        "min_grounding": min_grounding,
        "model_attempts": model_attempts,
        "model_max_tokens": model_max_tokens,
        "refusal_text": refusal_text,
    }
    if server_paths:
        values["sources"] = [str(path.resolve()) for path in files]
    else:
        values["documents"] = [{"filename": path.name, "content": path.read_bytes()} for path in files]
    with spec_errors("options"):
        # Only what was given is sent; the server applies the same spec's defaults to the rest.
        spec = validate_spec(GenerateSpec, {k: v for k, v in values.items() if _given(v)})
    request = spec.to_request()
    client = stub(data_pb2_grpc.DataServiceStub, addresses().data_address)
    with rpc_errors():
        job = client.GenerateDataset(request, timeout=300)
        if not wait:
            print_json(job) if show_json else console.print(f"queued generate job {job.status.id}")
            return
        events = client.WatchGenerateJob(common_pb2.WatchRequest(id=job.status.id), timeout=24 * 3600)
        final = follow_job(events, f"generating from {len(files)} document(s)", show_json=show_json)
        job = client.GetGenerateJob(data_pb2.GetGenerateJobRequest(id=job.status.id))
    if show_json:
        print_json(job)
    if final != common_pb2.JOB_STATE_SUCCEEDED:
        console.print(
            f"[red]generate job {job.status.id} {STATE_NAMES.get(final, '')}[/red]: {escape(job.status.error)}"
        )
        raise typer.Exit(1)
    if not show_json:
        print_report(job)


def _given(value: object) -> bool:
    """A flag the user gave: not None and not an empty switch, text or list (0 is given: the spec judges it)."""
    return value is not None and value is not False and value != "" and value != []


def document_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES
            )
            if not found:
                console.print(
                    f"[red]error[/red]: {escape(str(path))} holds no document ({', '.join(DOCUMENT_SUFFIXES)})"
                )
                raise typer.Exit(1)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            console.print(f"[red]error[/red]: {escape(str(path))} is not a file or folder")
            raise typer.Exit(1)
    return files


def print_report(job: data_pb2.GenerateJob) -> None:
    report = job.report
    print_table(
        "documents",
        ["document", "chunks", "rejected"],
        [(d.name, d.chunks, d.rejected or "-") for d in report.documents],
    )
    model_pairs = sum(c.model_pairs for c in report.chunks)
    malformed = sum(c.model_malformed for c in report.chunks)
    failed = sum(c.model_failed_calls for c in report.chunks)
    barren = sum(1 for c in report.chunks if not c.kept)
    stdout.print(
        f"{report.pairs_kept} pairs kept ({report.facts_kept} facts) of {report.pairs_generated} generated "
        f"from {len(report.chunks)} chunks ({barren} yielded none); mean grounding {report.mean_grounding:.2f}",
        markup=False,
    )
    if job.request.generator:
        stdout.print(
            f"generator {job.request.generator}: {model_pairs} pairs, {malformed} malformed replies, "
            f"{failed} failed calls",
            markup=False,
        )
    if report.rejected_by_reason:
        print_table(
            "rejected pairs by reason",
            ["reason", "pairs"],
            sorted(report.rejected_by_reason.items(), key=lambda item: -item[1]),
        )
    print_table(
        "sample of kept pairs",
        ["question", "answer", "grounding", "from"],
        [
            (p.question, _short(p.answer), f"{p.grounding:.2f}", f"{p.document} {p.location}")
            for p in report.sample_kept[:SAMPLE_ROWS]
        ],
    )
    if report.sample_rejected:
        print_table(
            "sample of rejected pairs",
            ["reason", "question", "why"],
            [(p.reason, p.question, p.detail) for p in report.sample_rejected[: SAMPLE_ROWS * 2]],
        )
    stdout.print(
        f"dataset {job.dataset_id}; full report: artifact {report.report.uri}\n"
        f"next: ftctl data prepare {job.dataset_id} --base-model BASE_MODEL",
        markup=False,
    )


def _short(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"
