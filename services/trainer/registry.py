"""The model registry: base models, adapters and merged models as immutable artifacts, plus aliases and
the history of every move of an alias (the promotion gate in registry_service/ decides the moves)."""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from safetensors import safe_open
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ftcommon.artifacts import Artifact, ArtifactStore
from ftcommon.db import Database, utcnow
from ftcommon.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ftcommon.ids import new_id
from services.trainer import tables

logger = logging.getLogger(__name__)

BASE, ADAPTER, MERGED = 1, 2, 3  # finetune.v1.ModelKind
PROMOTE, FORCE, ROLLBACK, IMPORTED, REMOVED = 1, 2, 3, tables.IMPORTED_ALIAS, 5  # finetune.v1.AliasAction
JOB_MODEL_SUFFIXES = {ADAPTER: "adapter", MERGED: "merged"}


def job_model_name(job_id: str, kind: int) -> str:
    """The registry name of what a training job registers: its adapter and its merged model."""
    return f"{job_id}-{JOB_MODEL_SUFFIXES[kind]}"


def checkpoint_model_name(job_id: str, step: int) -> str:
    """The registry name of a job's intermediate checkpoint merged into a servable model."""
    return f"{job_id}-step-{step}-merged"


@dataclass(frozen=True)
class ModelRecord:
    id: str
    name: str
    kind: int
    artifact: Artifact
    lineage: dict[str, str]
    metrics: dict[str, float]
    chat_template: str
    eos_token: str
    max_context: int
    parameters: int
    created_at: datetime
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AliasRecord:
    alias: str
    model_id: str
    revision: int
    updated_at: datetime


@dataclass(frozen=True)
class AliasChange:
    """Why an alias moves; recorded with the revision the move creates."""

    action: int
    actor: str = ""
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    gate_refusal: str = ""
    rolled_back_to: int = 0


# Moves made in this process without the promotion gate (tests, maintenance scripts); never over gRPC.
UNGATED = AliasChange(FORCE, reason="moved in the registry directly, without the promotion gate")


@dataclass(frozen=True)
class AliasRevisionRecord:
    alias: str
    revision: int
    model_id: str
    previous_model_id: str
    change: AliasChange
    created_at: datetime


class _AnyCurrentModel:
    """set_alias's default: move the alias whatever it points at now."""


ANY_CURRENT_MODEL = _AnyCurrentModel()


@dataclass(frozen=True)
class ModelFolderInfo:
    chat_template: str
    eos_token: str
    max_context: int
    parameters: int


def inspect_model_folder(folder: Path) -> ModelFolderInfo:
    """Reads what serving and templating need from a Hugging Face model folder, without loading weights."""
    from transformers import AutoTokenizer  # heavy import, only where a folder is registered

    if not folder.is_dir():
        raise InvalidArgument(f"{folder} is not a folder", field="path")
    config_path = folder / "config.json"
    if not config_path.exists():
        raise InvalidArgument(f"{folder} has no config.json: not a Hugging Face model folder", field="path")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise InvalidArgument(f"{folder} has no .safetensors weights", field="path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise InvalidArgument(f"{folder} has no loadable tokenizer: {exc}", field="path") from exc
    if not tokenizer.chat_template:
        raise InvalidArgument(f"{folder}'s tokenizer has no chat template", field="path")
    config = json.loads(config_path.read_text())
    eos_token = tokenizer.eos_token or ""
    generation_config = folder / "generation_config.json"
    if generation_config.exists():
        eos_id = json.loads(generation_config.read_text()).get("eos_token_id")
        if isinstance(eos_id, list):
            eos_id = eos_id[0]
        if isinstance(eos_id, int):
            eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    parameters = 0
    for path in weights:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= dim
                parameters += count
    return ModelFolderInfo(
        chat_template=str(tokenizer.chat_template),
        eos_token=eos_token,
        max_context=int(config.get("max_position_embeddings") or 2048),
        parameters=parameters,
    )


class ModelRegistry:
    def __init__(self, db: Database, store: ArtifactStore) -> None:
        self.db = db
        self.store = store

    def register_folder(
        self,
        *,
        name: str,
        kind: int,
        folder: Path,
        lineage: dict[str, str],
        metrics: dict[str, float] | None = None,
        info: ModelFolderInfo | None = None,
    ) -> ModelRecord:
        """Stores the folder as an artifact and records it. Re-registering the same name with the
        same bytes returns the existing record (setup runs twice); other bytes are refused."""
        _check_name(name)
        info = info or inspect_model_folder(folder)
        artifact = self.store.put_dir(folder)
        existing = self._find(name)
        if existing:
            if existing.artifact.sha256 == artifact.sha256:
                return existing
            raise AlreadyExists(f"a different model is already registered as '{name}'", field="name")
        model_id = new_id("model")
        try:
            with self.db.begin() as conn:
                conn.execute(
                    tables.models.insert().values(
                        id=model_id,
                        name=name,
                        kind=kind,
                        artifact_uri=artifact.uri,
                        artifact_sha256=artifact.sha256,
                        size_bytes=artifact.size_bytes,
                        lineage=json.dumps(lineage),
                        metrics=json.dumps(metrics or {}),
                        chat_template=info.chat_template,
                        eos_token=info.eos_token,
                        max_context=info.max_context,
                        parameters=info.parameters,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError as exc:
            raise AlreadyExists(f"model '{name}' was registered concurrently", field="name") from exc
        logger.info("model registered", extra={"fields": {"model_id": model_id, "model_name": name}})
        return self.get(model_id)

    def get(self, ref: str, field: str = "name") -> ModelRecord:
        """By id, name or alias, in that order; `field` names the request field an unknown `ref` came in."""
        record = self._find(ref)
        if record is None:
            alias = self._alias_row(ref)
            if alias is not None:
                record = self._find(alias["model_id"])
        if record is None:
            raise NotFound(f"no model, name or alias '{ref}'", field=field)
        return record

    def job_model(self, job_id: str, kind: int) -> ModelRecord | None:
        """The adapter or merged model a training job registered; None when it registered none."""
        return self._find(job_model_name(job_id, kind))

    def checkpoint_model(self, job_id: str, step: int) -> ModelRecord | None:
        return self._find(checkpoint_model_name(job_id, step))

    def list_models(self, kind: int | None, offset: int, limit: int) -> list[ModelRecord]:
        query = select(tables.models).order_by(tables.models.c.created_at, tables.models.c.id)
        if kind:
            query = query.where(tables.models.c.kind == kind)
        with self.db.begin() as conn:
            rows = conn.execute(query.offset(offset).limit(limit)).mappings().all()
        return [self._record(row) for row in rows]

    def update_metrics(self, model_id: str, metrics: dict[str, float]) -> None:
        record = self.get(model_id)
        merged = {**record.metrics, **metrics}
        with self.db.begin() as conn:
            conn.execute(
                update(tables.models)
                .where(tables.models.c.id == record.id)
                .values(metrics=json.dumps(merged))
            )

    def delete_model(self, ref: str, with_aliases: Sequence[str], change: AliasChange) -> list[str]:
        """Deletes the model's record and the aliases in `with_aliases` (each with a REMOVED revision), in one
        transaction; refused while another alias points at it or an adapter needs it as its base. Returns
        the aliases removed."""
        model = self._find(ref)
        if model is None:
            raise NotFound(f"no model with id or name '{ref}'", field="model")
        others = sorted(set(model.aliases) - set(with_aliases))
        if others:
            raise FailedPrecondition(
                f"'{model.name}' is what alias(es) {', '.join(others)} point at; move or roll back "
                "those aliases first",
                field="model",
            )
        if dependants := self._adapters_based_on(model.id):
            raise FailedPrecondition(
                f"'{model.name}' is the base of adapter(s) {', '.join(dependants)}, which need it to load",
                field="model",
            )
        removed = sorted(set(with_aliases) & set(model.aliases))
        now = utcnow()
        with self.db.begin() as conn:
            for alias in removed:
                revision = _next_revision(conn)
                deleted = conn.execute(
                    delete(tables.aliases).where(
                        tables.aliases.c.alias == alias, tables.aliases.c.model_id == model.id
                    )
                ).rowcount
                if deleted != 1:
                    raise FailedPrecondition(f"'{alias}' moved while the model was deleted; try again")
                conn.execute(
                    tables.alias_revisions.insert().values(
                        alias=alias,
                        revision=revision,
                        model_id="",
                        previous_model_id=model.id,
                        action=REMOVED,
                        actor=change.actor,
                        reason=change.reason,
                        evidence="{}",
                        gate_refusal="",
                        rolled_back_to=0,
                        created_at=now,
                    )
                )
            # An alias set meanwhile would point at nothing: the delete only happens if none did.
            pointing = conn.execute(
                select(func.count()).select_from(tables.aliases).where(tables.aliases.c.model_id == model.id)
            ).scalar()
            if pointing:
                raise FailedPrecondition(f"an alias was set on '{model.name}' meanwhile; try again")
            conn.execute(delete(tables.models).where(tables.models.c.id == model.id))
        logger.info(
            "model deleted",
            extra={"fields": {"model_id": model.id, "model_name": model.name, "aliases": removed}},
        )
        return removed

    def _adapters_based_on(self, model_id: str) -> list[str]:
        query = select(tables.models.c.name, tables.models.c.lineage).where(tables.models.c.kind == ADAPTER)
        with self.db.begin() as conn:
            rows = conn.execute(query).all()
        return [name for name, lineage in rows if json.loads(lineage).get("base_model_id") == model_id]

    # Aliases

    def check_alias(self, alias: str) -> None:
        _check_name(alias, field_name="alias")
        if self._find(alias) is not None:
            raise InvalidArgument(f"'{alias}' is a model name or id, not usable as an alias", field="alias")

    def set_alias(
        self,
        alias: str,
        model_ref: str,
        change: AliasChange = UNGATED,
        expected_model_id: str | None | _AnyCurrentModel = ANY_CURRENT_MODEL,
    ) -> AliasRecord:
        """Moves the alias and records the revision. With `expected_model_id` (None: the alias is unset) the
        move happens only if the alias still points there, so a check made before it cannot go stale."""
        self.check_alias(alias)
        model = self.get(model_ref)
        now = utcnow()
        try:
            with self.db.begin() as conn:
                current = conn.execute(
                    select(tables.aliases.c.model_id).where(tables.aliases.c.alias == alias)
                ).scalar()
                if not isinstance(expected_model_id, _AnyCurrentModel) and current != expected_model_id:
                    raise FailedPrecondition(
                        f"'{alias}' moved to {current or 'nothing'} while this change was checked; try again",
                        field="alias",
                    )
                revision = _next_revision(conn)
                values = {"model_id": model.id, "revision": revision, "updated_at": now}
                if current is None:
                    conn.execute(tables.aliases.insert().values(alias=alias, **values))
                else:
                    conn.execute(
                        update(tables.aliases).where(tables.aliases.c.alias == alias).values(**values)
                    )
                conn.execute(
                    tables.alias_revisions.insert().values(
                        alias=alias,
                        revision=revision,
                        model_id=model.id,
                        previous_model_id=current or "",
                        action=change.action,
                        actor=change.actor,
                        reason=change.reason,
                        evidence=json.dumps(change.evidence),
                        gate_refusal=change.gate_refusal,
                        rolled_back_to=change.rolled_back_to,
                        created_at=now,
                    )
                )
        except IntegrityError as exc:
            raise FailedPrecondition(f"'{alias}' was changed concurrently; try again", field="alias") from exc
        logger.info(
            "alias moved",
            extra={"fields": {"alias": alias, "model_id": model.id, "action": change.action}},
        )
        return self.get_alias(alias)

    def current_model_id(self, alias: str) -> str | None:
        row = self._alias_row(alias)
        return row["model_id"] if row is not None else None

    def alias_history(self, alias: str, offset: int, limit: int) -> list[AliasRevisionRecord]:
        """Newest first."""
        revisions = tables.alias_revisions
        query = (
            select(revisions)
            .where(revisions.c.alias == alias)
            .order_by(revisions.c.revision.desc())
            .offset(offset)
            .limit(limit)
        )
        with self.db.begin() as conn:
            rows = conn.execute(query).mappings().all()
        return [_revision_record(row) for row in rows]

    def alias_revision(self, alias: str, revision: int) -> AliasRevisionRecord:
        revisions = tables.alias_revisions
        query = select(revisions).where(revisions.c.alias == alias, revisions.c.revision == revision)
        with self.db.begin() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"alias '{alias}' has no revision {revision}", field="revision")
        return _revision_record(row)

    def get_alias(self, alias: str) -> AliasRecord:
        row = self._alias_row(alias)
        if row is None:
            raise NotFound(f"alias '{alias}' is not set", field="alias")
        return AliasRecord(row["alias"], row["model_id"], row["revision"], row["updated_at"])

    def aliases_after(self, revision: int, alias: str = "") -> Sequence[AliasRecord]:
        query = select(tables.aliases).where(tables.aliases.c.revision > revision)
        if alias:
            query = query.where(tables.aliases.c.alias == alias)
        with self.db.begin() as conn:
            rows = conn.execute(query.order_by(tables.aliases.c.revision)).mappings().all()
        return [AliasRecord(r["alias"], r["model_id"], r["revision"], r["updated_at"]) for r in rows]

    # Internals

    def _alias_row(self, alias: str) -> Any:
        with self.db.begin() as conn:
            return (
                conn.execute(select(tables.aliases).where(tables.aliases.c.alias == alias)).mappings().first()
            )

    def _find(self, ref: str) -> ModelRecord | None:
        with self.db.begin() as conn:
            row = (
                conn.execute(
                    select(tables.models).where(or_(tables.models.c.id == ref, tables.models.c.name == ref))
                )
                .mappings()
                .first()
            )
        return self._record(row) if row else None

    def _record(self, row: Any) -> ModelRecord:
        with self.db.begin() as conn:
            names = conn.execute(
                select(tables.aliases.c.alias).where(tables.aliases.c.model_id == row["id"])
            ).scalars()
            alias_names = sorted(names)
        return ModelRecord(
            id=row["id"],
            name=row["name"],
            kind=row["kind"],
            artifact=Artifact(row["artifact_uri"], row["artifact_sha256"], row["size_bytes"]),
            lineage=json.loads(row["lineage"]),
            metrics=json.loads(row["metrics"]),
            chat_template=row["chat_template"],
            eos_token=row["eos_token"],
            max_context=row["max_context"],
            parameters=row["parameters"],
            created_at=row["created_at"],
            aliases=alias_names,
        )


def _revision_record(row: Any) -> AliasRevisionRecord:
    change = AliasChange(
        action=row["action"],
        actor=row["actor"],
        reason=row["reason"],
        evidence=json.loads(row["evidence"]),
        gate_refusal=row["gate_refusal"],
        rolled_back_to=row["rolled_back_to"],
    )
    return AliasRevisionRecord(
        row["alias"], row["revision"], row["model_id"], row["previous_model_id"], change, row["created_at"]
    )


def _next_revision(conn: Any) -> int:
    """Revisions count every alias move, removals too, so WatchAliases' cursor never sees a number twice."""
    current = conn.execute(select(func.max(tables.aliases.c.revision))).scalar() or 0
    recorded = conn.execute(select(func.max(tables.alias_revisions.c.revision))).scalar() or 0
    return max(current, recorded) + 1


def _check_name(name: str, field_name: str = "name") -> None:
    if not name or len(name) > 200 or not all(c.isalnum() or c in "-_.:" for c in name):
        raise InvalidArgument("use 1-200 letters, digits, '-', '_', '.' or ':'", field=field_name)
