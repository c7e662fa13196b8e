"""Test helpers for the trainer: a tiny prepared dataset version in the layout the data service writes.

Used until (and beside) the data service fixtures: rows are tokenized with the one shared function,
`ftcommon.chat_format.training_example`, and the folder follows the prepared-version contract.
"""

import json
from pathlib import Path

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
        with open(target / f"{split}.jsonl", "w") as handle:
            for line, (question, answer) in enumerate(rows, start=1):
                messages = conversation(question, answer)
                input_ids, labels = training_example(tokenizer, messages, END_OF_TURN, chat_template)
                record = {
                    "input_ids": input_ids,
                    "labels": labels,
                    "messages": messages,
                    "source_line": line,
                    "is_refusal": answer.startswith("Let's keep"),
                }
                handle.write(json.dumps(record) + "\n")
        stats[split] = {"examples": len(rows)}
    (target / "chat_template.jinja").write_text(chat_template)
    prepare = {
        "version_id": "pv-test-" + sha256_bytes(json.dumps(splits).encode())[:12],
        "dataset_id": "ds-test",
        "base_model_id": "",
        "base_model_name": model_dir.name,
        "request": {},
        "end_of_turn": END_OF_TURN,
        "template": "chat",
        "split_stats": stats,
        "tokenizer_sha256": sha256_file(model_dir / "tokenizer.json"),
        "chat_template_sha256": sha256_bytes(chat_template.encode()),
    }
    (target / "prepare.json").write_text(json.dumps(prepare, indent=1))
    return target
