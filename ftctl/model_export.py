"""`ftctl models export MODEL DIR`: a portable copy of a registered model, built by the trainer service.

The CLI opens no database and no artifact store: the trainer streams the files (ExportModel) and this
command writes them into a staging folder beside DIR, checks every file's sha256, and renames the staging
folder to DIR only when all arrived, so DIR is either complete or untouched.

Mounted by ftctl/models.py as `app.command("export")(export_model)`.
"""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import typer
from rich.text import Text

from finetune.v1 import trainer_pb2, trainer_pb2_grpc
from ftctl.common import addresses, console, rpc_errors, stub

FORMATS = {"merged": trainer_pb2.EXPORT_FORMAT_MERGED, "adapter": trainer_pb2.EXPORT_FORMAT_ADAPTER}
DTYPES = ("bf16", "fp32")
# A merged model of a few GB streams in minutes on a slow link; the call has no other deadline.
EXPORT_TIMEOUT_SECONDS = 3600


class ExportStreamError(Exception):
    """The trainer sent something a well-formed export never holds."""


def export_model(
    model: str = typer.Argument(..., metavar="MODEL", help="The model to export: id, name or alias."),
    directory: Path = typer.Argument(
        ..., metavar="DIR", help="Where to write it; must not exist or be empty."
    ),
    export_format: str = typer.Option(
        "merged", "--format", help="merged (plain transformers) or adapter (PEFT, names its base model)."
    ),
    dtype: str = typer.Option("", "--dtype", help="bf16 or fp32; default: the stored weights' dtype."),
) -> None:
    """Write MODEL as a folder that loads with transformers or PEFT elsewhere, with a model card."""
    if export_format not in FORMATS:
        raise typer.BadParameter("one of merged, adapter", param_hint="--format")
    if dtype and dtype not in DTYPES:
        raise typer.BadParameter("one of bf16, fp32", param_hint="--dtype")
    target = directory.expanduser().absolute()
    _check_target(target)
    trainer = stub(trainer_pb2_grpc.TrainerServiceStub, addresses().trainer_address)
    request = trainer_pb2.ExportModelRequest(model=model, format=FORMATS[export_format], dtype=dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    try:
        with rpc_errors():
            written = _write_files(trainer.ExportModel(request, timeout=EXPORT_TIMEOUT_SECONDS), staging)
        _check_target(target)  # nothing appeared there while the files streamed
        # rename(2) replaces an empty folder in one step; DIR is never seen half-written.
        os.replace(staging, target)
    except ExportStreamError as err:
        console.print(Text(f"error: the trainer's export stream is malformed: {err}"), soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    total = sum(written.values())
    console.print(
        Text(f"exported {model} ({export_format}) to {target}: {len(written)} files, {total:,} bytes")
    )


def _check_target(target: Path) -> None:
    """DIR must be new or an empty folder: an export never mixes with files already there."""
    if target.exists() and not target.is_dir():
        _refuse_target(f"{target} is a file; name a folder that does not exist")
    if target.is_dir() and any(target.iterdir()):
        _refuse_target(f"{target} is not empty; name a new or empty folder (nothing was written)")


def _refuse_target(reason: str) -> None:
    console.print(Text(f"error: DIR {reason}"), soft_wrap=True)
    raise typer.Exit(2)


def _write_files(chunks: Iterable[trainer_pb2.ExportChunk], staging: Path) -> dict[str, int]:
    """Writes the streamed files under `staging`; returns each file's size by relative path."""
    written: dict[str, int] = {}
    receiving: _ReceivedFile | None = None
    try:
        for chunk in chunks:
            if receiving is None:
                if chunk.path in written:
                    raise ExportStreamError(f"{chunk.path} was sent twice")
                receiving = _ReceivedFile(chunk.path, staging / _safe_relative(chunk.path))
            elif chunk.path != receiving.relative:
                raise ExportStreamError(f"{receiving.relative} ended without its last chunk")
            receiving.append(chunk)
            if chunk.last:
                written[receiving.relative] = receiving.finish(chunk.sha256)
                receiving = None
    finally:
        if receiving is not None:
            receiving.handle.close()
    if receiving is not None:
        raise ExportStreamError(f"the stream ended inside {receiving.relative}")
    return written


class _ReceivedFile:
    def __init__(self, relative: str, path: Path) -> None:
        self.relative = relative
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by finish() or by _write_files on failure
        self.digest = hashlib.sha256()

    def append(self, chunk: trainer_pb2.ExportChunk) -> None:
        if chunk.offset != self.handle.tell():
            raise ExportStreamError(
                f"{self.relative}: chunk at offset {chunk.offset}, expected {self.handle.tell()}"
            )
        self.handle.write(chunk.data)
        self.digest.update(chunk.data)

    def finish(self, sha256: str) -> int:
        size = self.handle.tell()
        self.handle.close()
        if self.digest.hexdigest() != sha256:
            raise ExportStreamError(f"{self.relative}: sha256 {self.digest.hexdigest()} != {sha256}")
        return size


def _safe_relative(path: str) -> Path:
    """A path the trainer sends stays inside the export folder."""
    relative = PurePosixPath(path)
    if not path or relative.is_absolute() or ".." in relative.parts:
        raise ExportStreamError(f"refused file path {path!r}: not a relative path inside the folder")
    return Path(*relative.parts)
