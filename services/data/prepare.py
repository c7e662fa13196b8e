"""Preparing a dataset for one base model: template, tokenize, mask, split, and store an immutable version.

The version id is derived from every input (the dataset's content, the base model's artifact, the
template and the request's settings, this code's format version), so the same inputs give the same
id, and a version that exists is returned instead of being built again. Files are built in scratch
space and published with ArtifactStore.put_dir; the version row is inserted last, so a process killed
half way leaves no version behind and the job can simply run again.
"""

import contextlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
from google.protobuf.json_format import MessageToDict, ParseDict

from finetune.v1 import data_pb2
from ftcommon import prepared_layout
from ftcommon.artifacts import ArtifactStore
from ftcommon.chat_format import ALPACA_TEMPLATE, QUESTION_ANSWER_TEMPLATE
from ftcommon.db import utcnow
from ftcommon.errors import InvalidArgument
from ftcommon.hardware import usable_cpu_count
from ftcommon.ids import sha256_bytes, sha256_file, sha256_json
from ftcommon.job_runtime import JobFailed
from ftcommon.specs.prepare import DEFAULT_MAX_SEQ_LEN, PrepareSpec
from services.data.base_models import BaseModel, BaseModels
from services.data.catalog import Catalog, DatasetRecord, VersionRecord
from services.data.collection_pause import collection_paused
from services.data.duplicates import DuplicateGroup, line_groups
from services.data.fact_split import fact_line_groups, split_by_fact_phrasing
from services.data.pii import PiiAllowList, PiiFinding, pii_counts, scan_conversations
from services.data.records import Conversation
from services.data.refusal_pairs import (
    AnswerGenerator,
    InferenceAccess,
    PairCounts,
    build_pairs,
    is_refusal_row,
    refusal_text_of,
)
from services.data.refusals import off_topic_questions, refusal_answer
from services.data.row_encoding import EncodingHelper, EncodingRecipe, Outcome, RowEncoding, encode_batches
from services.data.split_advice import small_test_split_warning
from services.data.splitting import SPLITS, assign_splits, shuffled
from services.data.stats import token_stats
from services.data.tokenization import ConversationKey, conversation_key

logger = logging.getLogger(__name__)
# msgspec reads a stored row in about half json.loads's time (100,000 rows: 0.5 vs 0.9-1.1 s).
_JSON_DECODER = msgspec.json.Decoder()
SPEC_KEY = "spec"
TOKENIZE_BATCH = 2048
TEMPLATE_NAMES = {
    data_pb2.PROMPT_TEMPLATE_CHAT: "chat",
    data_pb2.PROMPT_TEMPLATE_ALPACA: "alpaca",
    data_pb2.PROMPT_TEMPLATE_QUESTION_ANSWER: "question_answer",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)

_VALIDATION_DATASET_GROUP = "validation-dataset:"


def fit_to_model(spec: PrepareSpec, model: BaseModel) -> PrepareSpec:
    """The spec for the model it resolved to: max_seq_len within the model's context (an unset one is the
    default capped there); InvalidArgument naming the first bad field."""
    context = model.max_context or DEFAULT_MAX_SEQ_LEN
    if "max_seq_len" not in spec.model_fields_set:
        spec = spec.model_copy(update={"max_seq_len": min(spec.max_seq_len, context)})
    elif spec.max_seq_len > context:
        raise InvalidArgument(f"exceeds the model's context of {context} tokens", field="max_seq_len")
    PiiAllowList.parse(spec.pii.allow, "pii.allow")
    return spec.model_copy(update={"base_model": model.name})


def stored_request(payload: dict[str, Any]) -> data_pb2.PrepareDatasetRequest:
    """A prepare job's request, read back through its stored spec, with every default filled in."""
    if SPEC_KEY in payload:
        return PrepareSpec.model_validate(payload[SPEC_KEY]).to_request(include_defaults=True)
    return request_from_json(payload["request"])  # a job queued before the spec was stored


def load_conversations(store: ArtifactStore, dataset: DatasetRecord) -> list[Conversation]:
    """The dataset's kept rows, as stored at upload."""
    with store.open(dataset.normalized.uri, "rb") as handle:
        return [Conversation.from_json(_JSON_DECODER.decode(line)) for line in handle if line.strip()]


def request_to_json(request: data_pb2.PrepareDatasetRequest) -> dict[str, Any]:
    return MessageToDict(request, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def request_from_json(value: dict[str, Any]) -> data_pb2.PrepareDatasetRequest:
    return ParseDict(value, data_pb2.PrepareDatasetRequest())


def chat_template_for(request: data_pb2.PrepareDatasetRequest, model: BaseModel) -> str:
    if request.template == data_pb2.PROMPT_TEMPLATE_ALPACA:
        return ALPACA_TEMPLATE
    if request.template == data_pb2.PROMPT_TEMPLATE_QUESTION_ANSWER:
        return QUESTION_ANSWER_TEMPLATE
    return model.chat_template


def version_id(dataset: DatasetRecord, model: BaseModel, request: data_pb2.PrepareDatasetRequest) -> str:
    settings = request_to_json(request)
    settings.pop("base_model")  # the resolved model's artifact stands for it, whatever name or alias was used
    if not request.preference_pairs.from_refusals:
        settings.pop("preference_pairs", None)  # versions prepared before the option keep their ids
    inputs = {
        # Versions written in an older layout keep their ids; the same inputs in a newer one get new ids.
        "format_version": prepared_layout.FORMAT_VERSION,
        "dataset_id": dataset.id,
        "dataset_sha256": dataset.normalized.sha256,
        "report_uri": dataset.report_uri,
        "base_model_id": model.id,
        "base_model_sha256": model.artifact_sha256,
        "chat_template_sha256": sha256_bytes(chat_template_for(request, model).encode()),
        "request": settings,
    }
    return "pv-" + sha256_json(inputs)[:20]


@dataclass
class _Example:
    conversation: Conversation
    group: str
    encoding: RowEncoding  # shared by exact duplicates


def check_pairs_request(
    request: data_pb2.PrepareDatasetRequest, pairs: bool, validation_pairs: bool | None
) -> None:
    """InvalidArgument naming the field a request sets that a preference (or plain) dataset cannot use."""
    if pairs and request.refusals.fraction > 0:
        raise InvalidArgument(
            "adds refusal rows, which have no rejected answer; a preference dataset holds its refusals "
            "as pairs (the refusal chosen over an answer)",
            field="refusals.fraction",
        )
    if validation_pairs is not None and validation_pairs != pairs:
        raise InvalidArgument(
            "must be a preference dataset too" if pairs else "is a preference dataset; this one is not",
            field="validation_dataset_id",
        )


def split_by_fact(request: data_pb2.PrepareDatasetRequest, conversations: list[Conversation]) -> bool:
    """Whether to split by phrasing within a fact (split_by), or InvalidArgument when asked of rows that name
    no fact."""
    has_facts = any(c.fact_id for c in conversations)
    if request.split_by == data_pb2.SPLIT_BY_FACT_PHRASING and not has_facts:
        raise InvalidArgument(
            "is fact_phrasing, but no row of the dataset has a fact_id (GenerateDataset's rows do); "
            "use row or auto",
            field="split_by",
        )
    return has_facts and request.split_by != data_pb2.SPLIT_BY_ROW


def check_refusal_pairs_request(
    request: data_pb2.PrepareDatasetRequest, conversations: list[Conversation], pairs: bool
) -> None:
    """InvalidArgument naming preference_pairs.from_refusals when the dataset gives no pairs to build."""
    if not request.preference_pairs.from_refusals:
        return
    field = "preference_pairs.from_refusals"
    if pairs:
        raise InvalidArgument(
            "cannot build pairs from a dataset of preference pairs; leave it unset", field=field
        )
    refusal_text = refusal_text_of(conversations, request.refusals.domain, request.refusals.refusal_text)
    if request.refusals.fraction > 0:
        return
    if not refusal_text or not any(is_refusal_row(c, refusal_text) for c in conversations):
        raise InvalidArgument(
            "needs refusal rows, and the dataset has none (rows answered \"Let's keep the discussion relevant "
            'to ..." or with refusals.refusal_text) and no refusals.domain adds any; set refusals.domain',
            field=field,
        )


class PrepareRunner:
    def __init__(
        self,
        store: ArtifactStore,
        catalog: Catalog,
        base_models: BaseModels,
        scratch_dir: Path,
        inference: InferenceAccess,
        encoding_helper_min_rows: int,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.base_models = base_models
        self.scratch_dir = scratch_dir
        self.inference = inference
        self.encoding_helper_min_rows = encoding_helper_min_rows

    def run(
        self,
        payload: dict[str, Any],
        progress: Callable[[float, str, dict[str, float]], None],
        stop_if_asked: Callable[[], None],
    ) -> VersionRecord:
        target_id = payload["version_id"]
        if existing := self.catalog.find_version(target_id):
            progress(1.0, "already prepared", {})
            return existing
        request = stored_request(payload)
        model = BaseModel(**payload["model"])
        dataset = self.catalog.get_dataset(request.dataset_id)
        # Loading, scanning, grouping, encoding and writing build objects per row that stay alive to the end
        # (collection_pause.py). One pause for the whole job, ended once _prepare's rows are freed: a pause
        # per stage made the collector walk every row still alive as each stage ended.
        with self._encoding_helper(dataset, model) as helper, collection_paused():
            return self._prepare(target_id, request, model, dataset, helper, progress, stop_if_asked)

    def _encoding_helper(
        self, dataset: DatasetRecord, model: BaseModel
    ) -> contextlib.AbstractContextManager[EncodingHelper | None]:
        """A helper process for the rows' encoding (row_encoding.py) when the dataset is large enough to
        repay starting one (~2 s of CPU) and a second CPU is there for it. Started before the rows are loaded,
        so that it is ready when they are."""
        rows = dataset.counts.get("rows_kept", 0)
        if (
            not self.encoding_helper_min_rows
            or rows < self.encoding_helper_min_rows
            or usable_cpu_count() < 2
        ):
            return contextlib.nullcontext()
        tokenizer = self.base_models.tokenizer(model)
        try:
            return EncodingHelper(tokenizer, str(self.store.local_dir(model.artifact_uri)))
        except OSError as error:  # no process or semaphore to be had (a sandbox, a full /dev/shm): one core
            logger.warning("prepare encodes on one core: no helper process (%s)", error)
            return contextlib.nullcontext()

    def _prepare(
        self,
        target_id: str,
        request: data_pb2.PrepareDatasetRequest,
        model: BaseModel,
        dataset: DatasetRecord,
        helper: EncodingHelper | None,
        progress: Callable[[float, str, dict[str, float]], None],
        stop_if_asked: Callable[[], None],
    ) -> VersionRecord:
        progress(0.01, "loading the dataset and the tokenizer", {})
        conversations = load_conversations(self.store, dataset)
        validation_rows = self._validation_rows(request)
        pairs = any(c.rejected is not None for c in conversations)
        check_pairs_request(
            request,
            pairs,
            any(c.rejected is not None for c in validation_rows) if validation_rows else None,
        )
        # Only the dataset's rows are scanned: the system prompt and refusal rows are the operator's own text.
        allow = PiiAllowList.parse(request.pii.allow, "pii.allow")
        pii_of = {
            id(conversations[i]): found
            for i, found in scan_conversations(conversations, request.pii.redact, allow).items()
        }
        by_fact = split_by_fact(request, conversations)
        groups, cross_fact_near_groups = self._group_keys(dataset, conversations, by_fact)
        # Only this dataset's rows are phrasings of its facts; a validation dataset's rows are validation.
        fact_of_row = {id(c): c.fact_id for c in conversations if c.fact_id}
        pii_of |= {
            id(validation_rows[i]): found
            for i, found in scan_conversations(validation_rows, request.pii.redact, allow).items()
        }
        conversations += validation_rows
        groups += [f"{_VALIDATION_DATASET_GROUP}{c.line}" for c in validation_rows]
        refusal_rows = self._refusal_rows(request, len(conversations))
        conversations += refusal_rows
        groups += [f"refusal:{c.messages[0]['content']}" for c in refusal_rows]
        if request.system_prompt:
            for conversation in conversations:
                if conversation.messages[0]["role"] != "system":
                    conversation.messages.insert(0, {"role": "system", "content": request.system_prompt})
        pair_counts = None
        if request.preference_pairs.from_refusals:
            check_refusal_pairs_request(request, conversations, pairs)
            conversations, groups, pair_counts = self._refusal_pairs(
                request, model, conversations, groups, progress, stop_if_asked
            )
            pairs = True
        tokenizer = self.base_models.tokenizer(model)
        template = chat_template_for(request, model)
        end_of_turn = (
            model.eos_token or tokenizer.eos_token
            if request.template == data_pb2.PROMPT_TEMPLATE_CHAT
            else tokenizer.eos_token
        )
        examples, dropped, truncated = self._tokenize(
            request,
            conversations,
            groups,
            tokenizer,
            template,
            end_of_turn,
            helper,
            progress,
            stop_if_asked,
        )
        if not examples:
            raise InvalidArgument(
                f"every example is longer than max_seq_len {request.max_seq_len}", field="max_seq_len"
            )
        progress(0.92, "splitting and writing", {"examples": len(examples)})
        fractions = (request.split.train, request.split.validation, request.split.test)
        split_summary: dict[str, Any] = {"mode": "row"}
        fact_note = ""
        if by_fact:
            fact_split = split_by_fact_phrasing(
                [e.group for e in examples],
                [fact_of_row.get(id(e.conversation), "") for e in examples],
                fractions,
                request.seed,
            )
            splits, fact_note = fact_split.assignment, fact_split.note()
            split_summary = {**fact_split.summary, "cross_fact_near_duplicate_groups": cross_fact_near_groups}
        else:
            splits = assign_splits([e.group for e in examples], fractions, request.seed)
        # Rows of a separate validation dataset are the validation split, whatever the seed says.
        splits = [
            "validation" if e.group.startswith(_VALIDATION_DATASET_GROUP) else split
            for e, split in zip(examples, splits, strict=True)
        ]
        advice = small_test_split_warning(len(splits), splits.count("test"), fractions)
        pair_note = pair_counts.warning() if pair_counts else ""
        warnings = [warning for warning in (fact_note, advice, pair_note) if warning]
        for warning in warnings:
            progress(0.93, f"warning: {warning}", {})
        with tempfile.TemporaryDirectory(dir=self.scratch_dir) as scratch:
            folder = Path(scratch)
            split_stats = self._write_splits(folder, examples, splits, request.seed)
            split_pii = self._split_pii(examples, splits, pii_of)
            tokenizer_sha = self._tokenizer_sha(model)
            prepared_layout.write_chat_template(folder, template)
            manifest = prepared_layout.write_manifest(
                folder,
                end_of_turn,
                {
                    "version_id": target_id,
                    "dataset_id": dataset.id,
                    "base_model_id": model.id,
                    "base_model_name": model.name,
                    "request": request_to_json(request),
                    "template": TEMPLATE_NAMES[request.template],
                    "split_stats": split_stats,
                    "dropped_too_long": dropped,
                    "truncated": truncated,
                    "refusal_rows": len(refusal_rows),
                    "split_pii": split_pii,
                    "warnings": warnings,
                    "split_by": split_summary,
                    "tokenizer_sha256": tokenizer_sha,
                    "chat_template_sha256": sha256_bytes(template.encode()),
                    **({"refusal_pairs": asdict(pair_counts)} if pair_counts else {}),
                },
                preference_pairs=pairs,
            )
            stop_if_asked()
            artifact = self.store.put_dir(folder, move_files=True)
        record = VersionRecord(
            id=target_id,
            dataset_id=dataset.id,
            base_model_id=model.id,
            request=request_to_json(request),
            artifact=artifact,
            split_stats=split_stats,
            dropped_too_long=dropped,
            truncated=truncated,
            refusal_rows=len(refusal_rows),
            tokenizer_sha256=tokenizer_sha,
            chat_template_sha256=manifest["chat_template_sha256"],
            created_at=utcnow(),
            split_pii=split_pii,
            warnings=warnings,
            preference_pairs=pairs,
        )
        return self.catalog.add_version(record)

    def _refusal_pairs(
        self,
        request: data_pb2.PrepareDatasetRequest,
        model: BaseModel,
        conversations: list[Conversation],
        groups: list[str],
        progress: Callable[[float, str, dict[str, float]], None],
        stop_if_asked: Callable[[], None],
    ) -> tuple[list[Conversation], list[str], PairCounts]:
        """The rows as refusal preference pairs (refusal_pairs.py), and what was kept and skipped."""
        options = request.preference_pairs
        refusal_text = refusal_text_of(conversations, request.refusals.domain, request.refusals.refusal_text)
        off_topic = [i for i, c in enumerate(conversations) if is_refusal_row(c, refusal_text)]
        generator = AnswerGenerator(self.inference, options.generator or model.name, options.max_new_tokens)

        def generated(done: int) -> None:
            progress(
                0.02 + 0.03 * done / len(off_topic),
                "generating the rejected answers",
                {"answers_done": float(done), "answers_total": float(len(off_topic))},
            )

        prompts = [conversations[i].messages[:-1] for i in off_topic]
        answers = generator.answers(prompts, generated, stop_if_asked)
        counts = PairCounts(generator=generator.model)
        keep = build_pairs(conversations, refusal_text, dict(zip(off_topic, answers, strict=True)), counts)
        if not counts.off_topic_pairs:
            raise JobFailed(
                f"no off-topic pair was kept: {counts.warning()}; nothing to prefer the refusal over",
            )
        kept = [(c, g) for c, g, k in zip(conversations, groups, keep, strict=True) if k]
        return [c for c, _ in kept], [g for _, g in kept], counts

    def _validation_rows(self, request: data_pb2.PrepareDatasetRequest) -> list[Conversation]:
        if not request.validation_dataset_id:
            return []
        return load_conversations(self.store, self.catalog.get_dataset(request.validation_dataset_id))

    def _group_keys(
        self, dataset: DatasetRecord, conversations: list[Conversation], by_fact: bool
    ) -> tuple[list[str], int]:
        """Each row's duplicate group (exact or near, transitively), so a group lands in one split; split by
        fact, near duplicates among rows with fact ids do not group (see fact_split.py). Also the number of
        near-duplicate groups spanning different facts."""
        report = json.loads(self.store.read_bytes(dataset.report_uri))
        duplicates = [DuplicateGroup(**g) for g in report["duplicates"]]
        cross_fact = 0
        if by_fact:
            fact_groups = fact_line_groups(duplicates, {c.line: c.fact_id for c in conversations})
            groups, cross_fact = fact_groups.line_group, fact_groups.cross_fact_near_groups
        else:
            groups = line_groups(duplicates)
        return [f"line:{groups.get(c.line, c.line)}" for c in conversations], cross_fact

    @staticmethod
    def _split_pii(
        examples: list[_Example], splits: list[str], pii_of: dict[int, list[PiiFinding]]
    ) -> dict[str, dict[str, Any]]:
        # Rows without findings add nothing to the counts: only the others are gathered, in one pass.
        rows: dict[str, list[tuple[int, list[PiiFinding]]]] = {split: [] for split in SPLITS}
        for example, assigned in zip(examples, splits, strict=True):
            if findings := pii_of.get(id(example.conversation)):
                rows[assigned].append((example.conversation.line, findings))
        return {split: pii_counts(rows[split]) for split in SPLITS}

    @staticmethod
    def _refusal_rows(request: data_pb2.PrepareDatasetRequest, kept_rows: int) -> list[Conversation]:
        options = request.refusals
        count = round(options.fraction * kept_rows)
        if count == 0:
            return []
        answer = refusal_answer(options.domain, options.refusal_text or None)
        return [
            Conversation(
                0, [{"role": "user", "content": q}, {"role": "assistant", "content": answer}], is_refusal=True
            )
            for q in off_topic_questions(count, request.seed)
        ]

    @staticmethod
    def _tokenize(
        request: data_pb2.PrepareDatasetRequest,
        conversations: list[Conversation],
        groups: list[str],
        tokenizer: Any,
        template: str,
        end_of_turn: str,
        helper: EncodingHelper | None,
        progress: Callable[[float, str, dict[str, float]], None],
        stop_if_asked: Callable[[], None],
    ) -> tuple[list[_Example], int, int]:
        # Exact duplicates are encoded once for the whole data set, not once per batch: each row's slot is the
        # place of its (conversation_key, rejected answer) among the distinct ones, and each slot is encoded
        # from its last row (all of a slot's rows encode alike).
        keys = [(conversation_key(c.messages), c.rejected) for c in conversations]
        slot_of: dict[tuple[ConversationKey, str | None], int] = {}
        slots = [slot_of.setdefault(key, len(slot_of)) for key in keys]
        rows = [(c.messages, c.rejected) for c in dict(zip(slots, conversations, strict=True)).values()]
        batches = [rows[start : start + TOKENIZE_BATCH] for start in range(0, len(rows), TOKENIZE_BATCH)]
        done = 0

        def batch_done(count: int) -> None:
            nonlocal done
            done += count
            stop_if_asked()
            progress(
                0.05 + 0.85 * done / len(rows),
                "tokenizing",
                {"distinct_rows_done": float(done), "distinct_rows_total": float(len(rows))},
            )

        recipe = EncodingRecipe(
            template,
            end_of_turn,
            request.max_seq_len,
            request.truncation == data_pb2.TRUNCATION_POLICY_TRUNCATE,
        )
        encoded = [
            row for batch in encode_batches(tokenizer, recipe, batches, helper, batch_done) for row in batch
        ]
        examples: list[_Example] = []
        dropped = truncated = 0
        for conversation, group, slot in zip(conversations, groups, slots, strict=True):
            encoding = encoded[slot]
            if encoding.outcome == Outcome.DROPPED:
                dropped += 1
                continue
            truncated += encoding.outcome == Outcome.TRUNCATED
            examples.append(_Example(conversation, group, encoding))
        return examples, dropped, truncated

    @staticmethod
    def _write_splits(
        folder: Path, examples: list[_Example], splits: list[str], seed: int
    ) -> dict[str, dict[str, float]]:
        # A pair counts as one example whose tokens are both sides' (RowEncoding): what it costs the trainer.
        stats = {}
        for split in SPLITS:
            indexes = [i for i, s in enumerate(splits) if s == split]
            if split == "train":
                indexes = shuffled(indexes, seed)
            chosen = [examples[index] for index in indexes]
            with open(folder / prepared_layout.split_file(split), "w", encoding="utf-8") as handle:
                handle.writelines(
                    prepared_layout.example_line(
                        e.encoding.body, e.conversation.line, e.conversation.is_refusal
                    )
                    for e in chosen
                )
            stats[split] = token_stats(
                [e.encoding.tokens for e in chosen], [e.encoding.trained_tokens for e in chosen]
            )
        return stats

    def _tokenizer_sha(self, model: BaseModel) -> str:
        folder = self.store.local_dir(model.artifact_uri)
        return sha256_json(
            {name: sha256_file(folder / name) for name in TOKENIZER_FILES if (folder / name).exists()}
        )
