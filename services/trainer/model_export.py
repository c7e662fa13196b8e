"""ExportModel: a registered model as a portable folder, streamed to the client file by file.

The folder loads with plain transformers (format merged) or PEFT (format adapter) on a machine that has never
seen this platform: the adapter names its base by registry name instead of a path on this host, the tokenizer
knows the model's context length, and a README.md model card says what made the model and how it was judged.
Files the export leaves as stored stream straight from the artifact store; only changed or new files are
written, into a staging folder that is removed when the stream ends.
"""

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from finetune.v1 import trainer_pb2
from ftcommon.errors import FailedPrecondition, InvalidArgument
from ftcommon.ids import sha256_file
from services.trainer.adapter_config import ADAPTER_CONFIG, name_base_model
from services.trainer.config import TrainerSettings
from services.trainer.export_evidence import DataLineage, data_lineage, latest_evaluation
from services.trainer.model_card import CardFacts, render
from services.trainer.registry import ADAPTER, BASE, MERGED, ModelRecord, ModelRegistry

CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB message limit
FORMATS = {
    trainer_pb2.EXPORT_FORMAT_UNSPECIFIED: "merged",
    trainer_pb2.EXPORT_FORMAT_MERGED: "merged",
    trainer_pb2.EXPORT_FORMAT_ADAPTER: "adapter",
}
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
MODEL_CARD = "README.md"
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_CONFIG = "config.json"
WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ExportPlan:
    model: ModelRecord  # the registered model whose folder is exported
    export_format: str
    dtype: str  # a torch dtype name, or "" to keep the stored one


class ModelExporter:
    def __init__(self, settings: TrainerSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry

    def plan(self, request: trainer_pb2.ExportModelRequest) -> ExportPlan:
        """Checks the request and finds the folder to export, before anything is written."""
        if not request.model:
            raise InvalidArgument("is required", field="model")
        if request.format not in FORMATS:
            raise InvalidArgument(f"unknown format {request.format}; use merged or adapter", field="format")
        if request.dtype and request.dtype not in DTYPES:
            raise InvalidArgument(f"unknown dtype '{request.dtype}'; use bf16 or fp32", field="dtype")
        export_format = FORMATS[request.format]
        record = self.registry.get(request.model, field="model")
        return ExportPlan(self._source(record, export_format), export_format, DTYPES.get(request.dtype, ""))

    def chunks(self, plan: ExportPlan) -> Iterator[trainer_pb2.ExportChunk]:
        store = self.registry.store
        stored = store.local_dir(plan.model.artifact.uri)
        # Dot files are the platform's own markers (a converted base model's `.converted`), not the model's.
        entries = [
            e for e in store.manifest(plan.model.artifact.uri)["files"] if not e["path"].startswith(".")
        ]
        files = {entry["path"]: stored / entry["path"] for entry in entries}
        # A stored file is sent with the sha256 its manifest recorded at registration, so the client's check
        # also proves the artifact store returned what was registered.
        digests = {entry["path"]: entry["sha256"] for entry in entries}
        staging_root = self.settings.data_dir / "exports"
        staging_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging_root) as staging:
            written = self._rewritten_files(plan, files, Path(staging))
            files.update(written)
            digests.update({relative: sha256_file(path) for relative, path in written.items()})
            for relative in sorted(files):
                yield from _file_chunks(relative, files[relative], digests[relative])

    # Internals

    def _source(self, record: ModelRecord, export_format: str) -> ModelRecord:
        """The model of the same training job when the format asks for the other kind."""
        wanted = ADAPTER if export_format == "adapter" else MERGED
        if record.kind == wanted or (record.kind == BASE and wanted == MERGED):
            return record
        if record.kind == BASE:
            raise InvalidArgument(
                f"'{record.name}' is a base model: it has no adapter; export it with format merged",
                field="format",
            )
        job_id = record.lineage.get("job_id", "")
        sibling = self.registry.job_model(job_id, wanted) if job_id else None
        if sibling is None:
            what = "was fully fine-tuned and has no adapter" if wanted == ADAPTER else "has no merged model"
            raise FailedPrecondition(
                f"'{record.name}' {what} (training job '{job_id or 'unknown'}'); export format "
                f"{'merged' if wanted == ADAPTER else 'adapter'} instead",
                field="format",
            )
        return sibling

    def _rewritten_files(self, plan: ExportPlan, files: dict[str, Path], staging: Path) -> dict[str, Path]:
        """Writes every file the export changes or adds into `staging`; returns them by relative path."""
        model = plan.model
        base = None if model.kind == BASE else self.registry.get(model.lineage["base_model_id"])
        written: dict[str, Path] = {}
        if ADAPTER_CONFIG in files and base is not None:
            written[ADAPTER_CONFIG] = _copy(files[ADAPTER_CONFIG], staging / ADAPTER_CONFIG)
            name_base_model(staging, base.name)
        model_config = _read_json(files.get(MODEL_CONFIG))
        max_length = int(model_config.get("max_position_embeddings") or (base or model).max_context)
        if TOKENIZER_CONFIG in files:
            written[TOKENIZER_CONFIG] = staging / TOKENIZER_CONFIG
            tokenizer_config = _read_json(files[TOKENIZER_CONFIG])
            tokenizer_config["model_max_length"] = max_length
            _write_json(written[TOKENIZER_CONFIG], tokenizer_config)
        weights = sorted(name for name in files if name.endswith(WEIGHTS_SUFFIX))
        if plan.dtype:
            for relative in weights:
                written[relative] = staging / relative
                written[relative].parent.mkdir(parents=True, exist_ok=True)
                _convert_weights(files[relative], written[relative], plan.dtype)
            if model_config:
                # transformers 5 writes `dtype`; folders from older versions say `torch_dtype`.
                names = [key for key in ("dtype", "torch_dtype") if key in model_config] or ["dtype"]
                written[MODEL_CONFIG] = staging / MODEL_CONFIG
                _write_json(written[MODEL_CONFIG], {**model_config, **dict.fromkeys(names, plan.dtype)})
        facts = CardFacts(
            model=model,
            export_format=plan.export_format,
            dtype=plan.dtype or _stored_dtype([files[name] for name in weights]),
            model_max_length=max_length,
            base=base,
            lineage=None if base is None else self._data_lineage(model),
            evaluation=latest_evaluation(
                self.settings.eval_address,
                self._same_weights(model),
                self.settings.eval_timeout_seconds,
                self.settings.security,
            ),
        )
        written[MODEL_CARD] = staging / MODEL_CARD
        written[MODEL_CARD].write_text(render(facts))
        return written

    def _data_lineage(self, model: ModelRecord) -> DataLineage:
        return data_lineage(
            self.settings.data_address,
            model.lineage.get("prepared_version_id", ""),
            self.settings.data_timeout_seconds,
            self.settings.security,
        )

    def _same_weights(self, model: ModelRecord) -> set[str]:
        """A job's adapter and merged model are one model: an evaluation of either speaks for both."""
        ids = {model.id}
        job_id = model.lineage.get("job_id", "")
        for kind in (ADAPTER, MERGED):
            sibling = self.registry.job_model(job_id, kind) if job_id else None
            if sibling is not None:
                ids.add(sibling.id)
        return ids


def _file_chunks(relative: str, path: Path, digest: str) -> Iterator[trainer_pb2.ExportChunk]:
    offset = 0
    with open(path, "rb") as handle:
        while True:
            data = handle.read(CHUNK_BYTES)
            last = len(data) < CHUNK_BYTES
            yield trainer_pb2.ExportChunk(
                path=relative, offset=offset, data=data, last=last, sha256=digest if last else ""
            )
            if last:
                return
            offset += len(data)


def _convert_weights(source: Path, target: Path, dtype_name: str) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {
            key: (tensor.to(dtype) if tensor.is_floating_point() else tensor)
            for key in handle.keys()
            for tensor in [handle.get_tensor(key)]
        }
    save_file(tensors, str(target), metadata=metadata)


def _stored_dtype(weights: list[Path]) -> str:
    """The floating-point dtypes of the stored tensors, read from the safetensors headers."""
    from safetensors import safe_open

    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
    found = set()
    for path in weights:
        with safe_open(str(path), framework="numpy") as handle:
            found |= {handle.get_slice(key).get_dtype() for key in handle.keys()}
    return ", ".join(sorted(names[code] for code in found if code in names)) or "unknown"


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def _read_json(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path is not None else {}


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
