"""`ftctl data`: upload, register, inspect and prepare datasets on the data service."""

import hashlib
import json
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import typer
from pydantic import BaseModel
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from finetune.v1 import common_pb2, data_pb2, data_pb2_grpc
from ftcommon.specs.prepare import PiiOptions, PreferencePairOptions, PrepareSpec, RefusalOptions
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
    stub,
)
from ftctl.data_generate import generate

app = typer.Typer(no_args_is_help=True)
app.command("generate")(generate)

CHUNK_BYTES = 1024 * 1024
# Trailing metadata of a failed schema detection: the field mapping that would work, as JSON.
SUGGESTED_MAPPING_KEY = "suggested-field-mapping"
FORMATS = {
    name.removeprefix("DATASET_FORMAT_").lower(): value for name, value in data_pb2.DatasetFormat.items()
}
SCHEMAS = {
    name.removeprefix("DATASET_SCHEMA_").lower(): value for name, value in data_pb2.DatasetSchema.items()
}
for choices in (FORMATS, SCHEMAS):
    choices.pop("unspecified")


def _option(name: str, spec: type[BaseModel] = PrepareSpec, flag: str = "") -> Any:
    """A prepare flag: unset unless given, with the spec's help text and default."""
    field = spec.model_fields[name]
    default = "" if field.default in (None, "", 0.0) else f" Default: {field.default}."
    return typer.Option(None, flag or "--" + name.replace("_", "-"), help=f"{field.description}{default}")


def _data_stub() -> data_pb2_grpc.DataServiceStub:
    return stub(data_pb2_grpc.DataServiceStub, addresses().data_address)


def _choice(value: str | None, choices: dict[str, int], option: str) -> int:
    if value is None:
        return 0
    if value.lower() not in choices:
        raise typer.BadParameter(f"choose one of {', '.join(choices)}", param_hint=option)
    return choices[value.lower()]


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            raise typer.BadParameter(f"'{pair}' is not field=column", param_hint="--map")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def _options(
    name: str,
    file_format: str | None,
    schema: str | None,
    mapping: list[str],
    strict: bool,
    redact_pii: bool,
    encoding: str,
    pii_allow: list[str],
) -> data_pb2.IngestOptions:
    return data_pb2.IngestOptions(
        name=name,
        format=_choice(file_format, FORMATS, "--format"),
        schema=_choice(schema, SCHEMAS, "--schema"),
        field_mapping=_mapping(mapping),
        strict=strict,
        redact_pii=redact_pii,
        encoding=encoding,
        pii_allow=pii_allow,
    )


def _retry_command(
    command: str, target: str, options: data_pb2.IngestOptions, mapping: dict[str, str]
) -> str:
    """The same `ftctl data` command with `mapping` as its field mapping."""
    words = ["ftctl", "data", command, target]
    if options.name:
        words += ["--name", options.name]
    for flag, value, choices in (
        ("--format", options.format, FORMATS),
        ("--schema", options.schema, SCHEMAS),
    ):
        if value:
            words += [flag, next(name for name, number in choices.items() if number == value)]
    words += ["--strict"] * options.strict + ["--redact-pii"] * options.redact_pii
    if options.encoding:
        words += ["--encoding", options.encoding]
    for entry in options.pii_allow:
        words += ["--pii-allow", entry]
    for ours, theirs in mapping.items():
        words += ["--map", f"{ours}={theirs}"]
    return shlex.join(words)


@contextmanager
def _suggesting_mapping(command: str, target: str, options: data_pb2.IngestOptions) -> Iterator[None]:
    """After the error of a failed schema detection, prints the exact command whose --map flags would work."""
    suggestion: dict[str, str] = {}
    try:
        with rpc_errors():
            try:
                yield
            except grpc.RpcError as err:
                metadata = dict(err.trailing_metadata() or ())
                suggestion = json.loads(metadata.get(SUGGESTED_MAPPING_KEY, "{}"))
                raise
    except typer.Exit:
        if suggestion:
            # Not wrapped, so the command can be copied as one line.
            console.print(
                f"this would work:\n  {_retry_command(command, target, options, suggestion)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        raise


def _print_dataset(dataset: data_pb2.Dataset, show_json: bool) -> None:
    if show_json:
        print_json(dataset)
        return
    counts = dataset.counts
    print_table(
        f"dataset {dataset.id}",
        ["name", "format", "schema", "rows", "kept", "rejected", "exact dup", "near dup", "pii"],
        [
            [
                dataset.name,
                data_pb2.DatasetFormat.Name(dataset.format).removeprefix("DATASET_FORMAT_").lower(),
                data_pb2.DatasetSchema.Name(dataset.schema).removeprefix("DATASET_SCHEMA_").lower(),
                counts.rows_total,
                counts.rows_kept,
                counts.rows_rejected,
                counts.exact_duplicates,
                counts.near_duplicates,
                counts.pii_found,
            ]
        ],
    )


NAME = typer.Option("", "--name", help="Dataset name (default: the file name).")
FORMAT = typer.Option(None, "--format", help=f"File format: {', '.join(FORMATS)} (default: detected).")
SCHEMA = typer.Option(None, "--schema", help=f"Schema: {', '.join(SCHEMAS)} (default: detected).")
MAP = typer.Option([], "--map", help="Our field=the file's column, e.g. --map question=q (repeatable).")
STRICT = typer.Option(False, "--strict", help="Reject the whole file when any row is bad.")
REDACT = typer.Option(
    False, "--redact-pii", help="Replace emails, phone numbers and API keys with placeholders."
)
ENCODING = typer.Option(
    "", "--encoding", help="Text encoding of a JSONL, JSON or CSV file, e.g. cp1252 (default: utf-8)."
)
PII_ALLOW = typer.Option(
    [],
    "--pii-allow",
    help="An email domain (company.internal), address or phone number the model should learn: never "
    "redacted (repeatable).",
)


def upload_requests(
    metadata: data_pb2.UploadMetadata, path: Path, on_sent: Callable[[int], None] = lambda _: None
) -> Iterator[data_pb2.UploadDatasetRequest]:
    """The UploadDataset stream: metadata first, then the file in chunks. gRPC pulls the next chunk when
    it can send it, so `on_sent` follows the bytes on the wire."""
    yield data_pb2.UploadDatasetRequest(metadata=metadata)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield data_pb2.UploadDatasetRequest(chunk=chunk)
            on_sent(len(chunk))


@app.command()
def upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="The file to upload."),
    name: str = NAME,
    file_format: str | None = FORMAT,
    schema: str | None = SCHEMA,
    mapping: list[str] = MAP,
    strict: bool = STRICT,
    redact_pii: bool = REDACT,
    encoding: str = ENCODING,
    pii_allow: list[str] = PII_ALLOW,
    show_json: bool = JSON_OPTION,
) -> None:
    """Upload a JSONL, JSON, CSV or Parquet file; it is validated and stored with a report."""
    options = _options(name, file_format, schema, mapping, strict, redact_pii, encoding, pii_allow)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    metadata = data_pb2.UploadMetadata(
        options=options, filename=path.name, size_bytes=size, sha256=digest.hexdigest()
    )
    with Progress(
        "[bold]uploading",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=show_json,
    ) as progress:
        task = progress.add_task("upload", total=size)
        with _suggesting_mapping("upload", str(path), options):
            dataset = _data_stub().UploadDataset(
                upload_requests(metadata, path, lambda sent: progress.advance(task, sent)), timeout=600
            )
    _print_dataset(dataset, show_json)


@app.command()
def register(
    source: str = typer.Argument(..., help="A path under the service's allowed roots, or a URL it can read."),
    name: str = NAME,
    file_format: str | None = FORMAT,
    schema: str | None = SCHEMA,
    mapping: list[str] = MAP,
    strict: bool = STRICT,
    redact_pii: bool = REDACT,
    encoding: str = ENCODING,
    pii_allow: list[str] = PII_ALLOW,
    show_json: bool = JSON_OPTION,
) -> None:
    """Register a file the data service reads itself (no upload)."""
    options = _options(name, file_format, schema, mapping, strict, redact_pii, encoding, pii_allow)
    request = data_pb2.RegisterDatasetRequest(source=source, options=options)
    with _suggesting_mapping("register", source, options):
        dataset = _data_stub().RegisterDataset(request, timeout=600)
    _print_dataset(dataset, show_json)


@app.command("list")
def list_datasets(
    page_size: int = typer.Option(50, "--page-size", help="Datasets per page."),
    page_token: str = typer.Option("", "--page-token", help="Token from the previous page."),
    show_json: bool = JSON_OPTION,
) -> None:
    """List datasets, newest first."""
    with rpc_errors():
        response = _data_stub().ListDatasets(
            data_pb2.ListDatasetsRequest(
                page=common_pb2.PageRequest(page_size=page_size, page_token=page_token)
            )
        )
    if show_json:
        print_json(response)
        return
    print_table(
        "datasets",
        ["id", "name", "schema", "kept", "rejected", "created"],
        [
            [
                d.id,
                d.name,
                data_pb2.DatasetSchema.Name(d.schema).removeprefix("DATASET_SCHEMA_").lower(),
                d.counts.rows_kept,
                d.counts.rows_rejected,
                d.created_at.ToDatetime().isoformat(timespec="seconds"),
            ]
            for d in response.datasets
        ],
    )
    if response.next_page_token:
        console.print(f"more: --page-token {response.next_page_token}")


@app.command()
def show(dataset_id: str = typer.Argument(...), show_json: bool = JSON_OPTION) -> None:
    """One dataset's summary."""
    with rpc_errors():
        dataset = _data_stub().GetDataset(data_pb2.GetDatasetRequest(id=dataset_id))
    _print_dataset(dataset, show_json)


@app.command()
def report(
    dataset_id: str = typer.Argument(...),
    limit: int = typer.Option(50, "--limit", help="Rows of each list to show (tables only)."),
    show_json: bool = JSON_OPTION,
) -> None:
    """The validation report: rejected rows with line and reason, duplicates, PII."""
    with rpc_errors():
        result = _data_stub().GetValidationReport(data_pb2.GetDatasetRequest(id=dataset_id))
    if show_json:
        print_json(result)
        return
    counts = result.counts
    print_table(
        f"report {dataset_id}",
        ["rows", "kept", "rejected", "exact dup", "near dup", "empty fields", "pii"],
        [
            [
                counts.rows_total,
                counts.rows_kept,
                counts.rows_rejected,
                counts.exact_duplicates,
                counts.near_duplicates,
                counts.empty_fields,
                counts.pii_found,
            ]
        ],
    )
    if result.rejected:
        print_table(
            "rejected rows",
            ["line", "field", "reason"],
            [[r.line, r.field, r.reason] for r in result.rejected[:limit]],
        )
    if result.duplicates:
        print_table(
            "duplicates",
            ["lines", "kind", "similarity"],
            [
                [", ".join(map(str, d.lines)), "exact" if d.exact else "near", f"{d.similarity:.2f}"]
                for d in result.duplicates[:limit]
            ],
        )
    if result.pii:
        print_table(
            "pii",
            ["line", "kind", "field", "redacted", "allowed"],
            [[p.line, p.kind, p.field, p.redacted, p.allowed] for p in result.pii[:limit]],
        )


@app.command()
def preview(
    dataset_id: str = typer.Argument(...),
    offset: int = typer.Option(0, "--offset"),
    limit: int = typer.Option(10, "--limit"),
    show_json: bool = JSON_OPTION,
) -> None:
    """Kept rows as conversations."""
    with rpc_errors():
        response = _data_stub().PreviewDataset(
            data_pb2.PreviewDatasetRequest(id=dataset_id, offset=offset, limit=limit)
        )
    if show_json:
        print_json(response)
        return
    print_table(
        f"{dataset_id}: rows {offset + 1}-{offset + len(response.rows)} of {response.total}",
        ["line", "role", "content"],
        [
            [row.source_line, role, content[:200]]
            for row in response.rows
            for role, content in _preview_lines(row)
        ],
    )


def _preview_lines(row: data_pb2.Conversation) -> list[tuple[str, str]]:
    """A row's messages, then a preference pair's rejected answer (shown with the role "rejected")."""
    lines = [(m.role, m.content) for m in row.messages]
    return lines + ([("rejected", row.rejected)] if row.rejected else [])


@app.command()
def delete(dataset_id: str = typer.Argument(...), show_json: bool = JSON_OPTION) -> None:
    """Delete a dataset (its prepared versions stay)."""
    with rpc_errors():
        _data_stub().DeleteDataset(data_pb2.DeleteDatasetRequest(id=dataset_id))
    if show_json:
        print_json({"deleted": dataset_id})
    else:
        console.print(f"deleted {escape(dataset_id)}")


def prepare_spec(dataset_id: str, base_model: str, options: dict[str, Any]) -> PrepareSpec:
    """What `data prepare` asks for. `options` are PrepareSpec's fields, flattened as the flags spell them
    (split as "0.8,0.1,0.1", refusal_domain/fraction/text, redact_pii/strict_pii/pii_allow,
    refusal_pairs/pair_generator/pair_max_new_tokens); None: not given, left to the spec's default."""
    refusals = {
        "domain": options.pop("refusal_domain", None),
        "fraction": options.pop("refusal_fraction", None),
        "refusal_text": options.pop("refusal_text", None),
    }
    pii = {
        "redact": options.pop("redact_pii", None),
        "strict": options.pop("strict_pii", None),
        "allow": options.pop("pii_allow", None),
    }
    preference_pairs = {
        "from_refusals": options.pop("refusal_pairs", None),
        "generator": options.pop("pair_generator", None),
        "max_new_tokens": options.pop("pair_max_new_tokens", None),
    }
    values: dict[str, Any] = {"dataset_id": dataset_id, "base_model": base_model, **options}
    for name, section in (("refusals", refusals), ("pii", pii), ("preference_pairs", preference_pairs)):
        if given := {key: value for key, value in section.items() if value is not None}:
            values[name] = given
    with spec_errors("options"):
        return validate_spec(PrepareSpec, {k: v for k, v in values.items() if v is not None})


def _print_version(version: data_pb2.PreparedVersion, show_json: bool) -> None:
    if show_json:
        print_json(version)
        return
    print_table(
        f"prepared version {version.id} (dropped too long {version.dropped_too_long}, "
        f"truncated {version.truncated}, refusal rows {version.refusal_rows})",
        ["split", "examples", "tokens", "trained tokens", "mean", "median", "p95", "max"],
        [
            [name, s.examples, s.total_tokens, s.trained_tokens, f"{s.mean:.1f}", s.median, s.p95, s.max]
            for name, s in sorted(version.split_stats.items())
        ],
    )
    for warning in version.warnings:
        console.print(f"warning: {warning}", markup=False)
    pii = sorted(version.split_pii.items())
    if any(p.findings or p.redacted or p.allowed for _, p in pii):
        print_table(
            "PII per split (left in the rows, redacted, kept by --pii-allow)",
            ["split", "rows with PII", "left", "redacted", "allowed", "source lines"],
            [
                [
                    name,
                    p.rows,
                    ", ".join(f"{count} {kind}" for kind, count in sorted(p.kinds.items())) or 0,
                    p.redacted,
                    p.allowed,
                    ", ".join(map(str, p.lines[:10])) + (" ..." if p.rows > 10 else ""),
                ]
                for name, p in pii
            ],
        )
    if any(p.findings for _, p in pii):
        console.print(
            "PII is left in the prepared rows: prepare again with --redact-pii (and --pii-allow for "
            "addresses the model should learn), or refuse such data with --strict-pii",
            markup=False,
        )


@app.command()
def prepare(
    dataset_id: str = typer.Argument(...),
    base_model: str = typer.Option(..., "--base-model", help="Registry name, id or alias of the base model."),
    template: str | None = _option("template"),
    system_prompt: str | None = _option("system_prompt"),
    max_seq_len: int | None = _option("max_seq_len"),
    truncation: str | None = _option("truncation"),
    split: str | None = typer.Option(
        None, "--split", help="train,validation,test fractions. Default: 0.8,0.1,0.1."
    ),
    seed: int | None = _option("seed"),
    split_by: str | None = _option("split_by"),
    refusal_domain: str | None = _option("domain", RefusalOptions, "--refusal-domain"),
    refusal_fraction: float | None = _option("fraction", RefusalOptions, "--refusal-fraction"),
    refusal_text: str | None = _option("refusal_text", RefusalOptions, "--refusal-text"),
    redact_pii: bool = typer.Option(
        False, "--redact-pii", help=PiiOptions.model_fields["redact"].description
    ),
    strict_pii: bool = typer.Option(
        False, "--strict-pii", help=PiiOptions.model_fields["strict"].description
    ),
    pii_allow: list[str] = PII_ALLOW,
    refusal_pairs: bool = typer.Option(
        False, "--refusal-pairs", help=PreferencePairOptions.model_fields["from_refusals"].description
    ),
    pair_generator: str | None = _option("generator", PreferencePairOptions, "--pair-generator"),
    pair_max_new_tokens: int | None = _option(
        "max_new_tokens", PreferencePairOptions, "--pair-max-new-tokens"
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job's progress until it ends."),
    show_json: bool = JSON_OPTION,
) -> None:
    """Template, tokenize, mask and split a dataset into an immutable prepared version (a job)."""
    options = {
        "template": template,
        "system_prompt": system_prompt,
        "max_seq_len": max_seq_len,
        "truncation": truncation,
        "split": split,
        "seed": seed,
        "split_by": split_by,
        "refusal_domain": refusal_domain,
        "refusal_fraction": refusal_fraction,
        "refusal_text": refusal_text,
        # Switches: only an explicit --redact-pii / --strict-pii / --pii-allow counts as given.
        "redact_pii": redact_pii or None,
        "strict_pii": strict_pii or None,
        "pii_allow": pii_allow or None,
        "refusal_pairs": refusal_pairs or None,
        "pair_generator": pair_generator,
        "pair_max_new_tokens": pair_max_new_tokens,
    }
    request = prepare_spec(dataset_id, base_model, options).to_request()
    client = _data_stub()
    with rpc_errors():
        job = client.PrepareDataset(request)
        if not wait:
            if show_json:
                print_json(job)
            else:
                console.print(f"queued prepare job {job.status.id}")
            return
        events = client.WatchPrepareJob(common_pb2.WatchRequest(id=job.status.id), timeout=24 * 3600)
        final = follow_job(events, f"preparing {dataset_id}", show_json=show_json)
        job = client.GetPrepareJob(data_pb2.GetPrepareJobRequest(id=job.status.id))
        if final != common_pb2.JOB_STATE_SUCCEEDED:
            console.print(
                f"[red]prepare job {job.status.id} {STATE_NAMES.get(final, '')}[/red]: {escape(job.status.error)}"
            )
            raise typer.Exit(1)
        version = client.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))
    _print_version(version, show_json)
