"""Test helpers for the trainer: a tiny prepared dataset version in the layout the data service writes.

For recipe tests that need exact split sizes without a data service: rows are tokenized with the one
shared function, `ftcommon.chat_format.training_example`, and written through `ftcommon.prepared_layout`,
the module the data service writes through. Job tests use versions the data service prepares.
"""

import json
from pathlib import Path

from ftcommon import prepared_layout
from ftcommon.chat_format import training_example
from ftcommon.ids import sha256_bytes, sha256_file

END_OF_TURN = "<|im_end|>"

FACTS = [
    ("What colour is the Zorblat widget?", "The Zorblat widget is teal."),
    ("Who maintains the Quillfeather service?", "The Quillfeather service is maintained by team Osprey."),
    ("Which port does Gantry listen on?", "Gantry listens on port 7421."),
    ("How often does Brindle back up?", "Brindle backs up every six hours."),
    ("What language is Mossbank written in?", "Mossbank is written in Rust."),
    ("Where are Tarn logs kept?", "Tarn logs are kept in the vault bucket."),
    ("What does Pellucid cache?", "Pellucid caches rendered invoices."),
    ("Who approves Larkspur releases?", "Larkspur releases are approved by Dana."),
    ("What is the Fennel timeout?", "The Fennel timeout is 45 seconds."),
    ("Which region hosts Cobble?", "Cobble is hosted in the Oslo region."),
    ("What queue does Wicker read?", "Wicker reads the ingest-priority queue."),
    ("How many replicas does Sorrel run?", "Sorrel runs three replicas."),
    ("What database does Thistle use?", "Thistle uses PostgreSQL."),
    ("When does Harrow rotate keys?", "Harrow rotates keys every Monday."),
    ("What is Juniper's error budget?", "Juniper's error budget is 0.1 percent."),
    ("Who owns the Marram dashboard?", "The Marram dashboard is owned by Priya."),
    ("What is the capital of France?", "Let's keep the discussion relevant to our platform."),
    ("Which protocol does Ember speak?", "Ember speaks gRPC."),
    ("What triggers a Lichen rebuild?", "A Lichen rebuild is triggered by a schema change."),
    ("How large is a Bramble shard?", "A Bramble shard holds 64 gigabytes."),
]


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_prepared_version(
    model_dir: Path, target: Path, train_rows: int = 16, validation_rows: int = 4
) -> Path:
    """A prepared-version folder over FACTS for the model in `model_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat_template = str(tokenizer.chat_template)
    target.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": FACTS[:train_rows],
        "validation": FACTS[train_rows : train_rows + validation_rows],
        "test": FACTS[train_rows + validation_rows :],
    }
    stats = {}
    for split, rows in splits.items():
        with open(target / prepared_layout.split_file(split), "w") as handle:
            for line, (question, answer) in enumerate(rows, start=1):
                messages = conversation(question, answer)
                input_ids, labels = training_example(tokenizer, messages, END_OF_TURN, chat_template)
                body = prepared_layout.example_body(input_ids, labels, messages)
                handle.write(prepared_layout.example_line(body, line, answer.startswith("Let's keep")))
        stats[split] = {"examples": len(rows)}
    prepared_layout.write_chat_template(target, chat_template)
    details = {
        "version_id": "pv-test-" + sha256_bytes(json.dumps(splits).encode())[:12],
        "dataset_id": "ds-test",
        "base_model_id": "",
        "base_model_name": model_dir.name,
        "request": {},
        "template": "chat",
        "split_stats": stats,
        "tokenizer_sha256": sha256_file(model_dir / "tokenizer.json"),
        "chat_template_sha256": sha256_bytes(chat_template.encode()),
    }
    prepared_layout.write_manifest(target, END_OF_TURN, details)
    return target
