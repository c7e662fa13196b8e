"""The prepared-version layout: the folder one prepare publishes to the artifact store, which the data
service writes and the trainer's job process reads (as files, through the artifact store; only the
examples' messages also travel over gRPC, in ReadPreparedExamples). Both sides go through this module.

    prepare.json          the manifest: FORMAT_VERSION, END_OF_TURN and what the prepare did
    chat_template.jinja   the template the rows were rendered with (it is stored with the trained model)
    train.jsonl, validation.jsonl, test.jsonl
                          one tokenized example per line: input_ids, labels (-100 where no loss),
                          messages, source_line (its line in the dataset, 0 for added rows), is_refusal;
                          in a version of preference pairs (manifest "preference_pairs": true) also
                          rejected_input_ids, rejected_labels and rejected (the rejected answer's text):
                          input_ids/labels then hold the chosen answer, so SFT readers train on it

Versions written before the manifest recorded its format are format 1; they have the same files. Pairs
added keys without a format bump: a version without them reads as before, and a reader that ignores them
reads a pairs version as SFT data on the chosen answers.
"""

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

# Bump when the files change for the same inputs; readers say so clearly instead of misreading a newer one.
FORMAT_VERSION = 2
FIRST_FORMAT_VERSION = 1  # manifests without a format_version key

MANIFEST_FILE = "prepare.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPLITS = ("train", "validation", "test")

# Manifest keys a reader relies on; the rest of the manifest describes the prepare for people and tools.
FORMAT_VERSION_KEY = "format_version"
END_OF_TURN_KEY = "end_of_turn"
PREFERENCE_PAIRS_KEY = "preference_pairs"  # absent (older versions) means false

# Keys of one example line.
INPUT_IDS = "input_ids"
LABELS = "labels"
MESSAGES = "messages"
SOURCE_LINE = "source_line"
IS_REFUSAL = "is_refusal"
REJECTED_INPUT_IDS = "rejected_input_ids"
REJECTED_LABELS = "rejected_labels"
REJECTED = "rejected"

_JSON_ENCODER = msgspec.json.Encoder()


class PreparedLayoutError(ValueError):
    """A prepared-version folder this code cannot read; the message names the file and what is wrong."""


def split_file(split: str) -> str:
    """The split's file name, also its path under the version's artifact uri."""
    if split not in SPLITS:
        raise PreparedLayoutError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    return f"{split}.jsonl"


# Writing (the data service)


def write_chat_template(folder: Path, template: str) -> None:
    (folder / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")


def write_manifest(
    folder: Path, end_of_turn: str, details: Mapping[str, Any], preference_pairs: bool = False
) -> dict[str, Any]:
    """Writes prepare.json: `details` (what the prepare did) plus the keys readers rely on."""
    manifest = {**details, FORMAT_VERSION_KEY: FORMAT_VERSION, END_OF_TURN_KEY: end_of_turn}
    if preference_pairs:
        manifest[PREFERENCE_PAIRS_KEY] = True
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    return manifest


@dataclass(frozen=True)
class RejectedAnswer:
    """A preference pair's rejected side: the prompt with the rejected answer, tokenized and labelled."""

    input_ids: list[int]
    labels: list[int]
    content: str


def example_body(
    input_ids: list[int],
    labels: list[int],
    messages: list[dict[str, str]],
    rejected: RejectedAnswer | None = None,
) -> str:
    """The start of an example line, which exact duplicates share: writers encode it once per copy set."""
    fields: dict[str, Any] = {INPUT_IDS: input_ids, LABELS: labels, MESSAGES: messages}
    if rejected is not None:
        fields |= {
            REJECTED_INPUT_IDS: rejected.input_ids,
            REJECTED_LABELS: rejected.labels,
            REJECTED: rejected.content,
        }
    # msgspec writes a list of token ids 15x faster than json.dumps (1.5 vs 23 us for 117 ids; 100,000
    # examples: ~5 s of a prepare). The object is left open for example_line's keys.
    return _JSON_ENCODER.encode(fields)[:-1].decode() + ","


def example_line(body: str, source_line: int, is_refusal: bool) -> str:
    """One line of a split file: `example_body(...)` and where the example came from."""
    return f'{body}"{SOURCE_LINE}":{source_line},"{IS_REFUSAL}":{"true" if is_refusal else "false"}}}\n'


# Reading (the trainer, tools, tests)


@dataclass(frozen=True)
class PreparedFolder:
    """A prepared version on local disk (e.g. `ArtifactStore.local_dir(version uri)`)."""

    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, folder: Path) -> "PreparedFolder":
        path = folder / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PreparedLayoutError(f"{path}: missing; this is not a prepared version") from None
        except json.JSONDecodeError as err:
            raise PreparedLayoutError(f"{path}: not JSON ({err})") from None
        version = manifest.get(FORMAT_VERSION_KEY, FIRST_FORMAT_VERSION)
        if not isinstance(version, int) or not FIRST_FORMAT_VERSION <= version <= FORMAT_VERSION:
            raise PreparedLayoutError(
                f"{path}: {FORMAT_VERSION_KEY} {version!r} is not one this code reads "
                f"({FIRST_FORMAT_VERSION} to {FORMAT_VERSION}); it was written by newer code"
            )
        if not isinstance(manifest.get(END_OF_TURN_KEY), str):
            raise PreparedLayoutError(f"{path}: no {END_OF_TURN_KEY!r}")
        return cls(folder, manifest)

    @property
    def format_version(self) -> int:
        return self.manifest.get(FORMAT_VERSION_KEY, FIRST_FORMAT_VERSION)

    @property
    def end_of_turn(self) -> str:
        return self.manifest[END_OF_TURN_KEY]

    @property
    def preference_pairs(self) -> bool:
        return bool(self.manifest.get(PREFERENCE_PAIRS_KEY, False))

    def chat_template(self) -> str:
        path = self.folder / CHAT_TEMPLATE_FILE
        if not path.exists():
            raise PreparedLayoutError(f"{path}: missing")
        return path.read_text(encoding="utf-8")

    def split_path(self, split: str) -> Path:
        return self.folder / split_file(split)


def read_examples(folder: Path, split: str) -> Iterator[dict[str, Any]]:
    """The split's examples in file order; none when the split was left empty (no file)."""
    path = folder / split_file(split)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as err:
                raise PreparedLayoutError(f"{path}, line {number}: not JSON ({err})") from None
            if INPUT_IDS not in example or LABELS not in example:
                raise PreparedLayoutError(f"{path}, line {number}: needs {INPUT_IDS!r} and {LABELS!r}")
            yield example
