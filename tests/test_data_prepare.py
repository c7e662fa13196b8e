"""PrepareDataset over real gRPC with the real default tokenizer: determinism, masking, splits, options."""

import json
from pathlib import Path

import grpc
import pytest
from data_fixtures import jsonl, prepare, qa_rows, split_rows, upload
from transformers import AutoTokenizer

from finetune.v1 import common_pb2, data_pb2
from ftcommon.chat_format import ALPACA_TEMPLATE, QUESTION_ANSWER_TEMPLATE, training_example
from services.data.splitting import SPLITS
from services.data.tokenization import (
    IGNORE_INDEX,
    PieceIds,
    cuts_at_special_tokens,
    encode_rendered,
    training_examples,
)

END_OF_TURN = "<|im_end|>"

MULTI_TURN = [
    {
        "messages": [
            {"role": "system", "content": "You answer questions about the fine-tuning platform."},
            {"role": "user", "content": f"How do I start job {i}?"},
            {"role": "assistant", "content": f"Run ftctl train create for job {i}."},
            {"role": "user", "content": "And how do I watch it?"},
            {"role": "assistant", "content": f"Run ftctl train watch on job {i}; it streams the loss."},
        ]
    }
    for i in range(12)
]
# The same conversations with their first answer of weight 0 (OpenAI's chat format): context, not trained on.
FIRST_ANSWER_UNWEIGHTED = [
    {"messages": [{**m, "weight": 0} if turn == 2 else m for turn, m in enumerate(row["messages"])]}
    for row in MULTI_TURN
]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    return AutoTokenizer.from_pretrained(default_model_dir)


def version_of(stub, job: data_pb2.PrepareJob) -> data_pb2.PreparedVersion:
    return stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))


def all_rows(data_root: Path, version: data_pb2.PreparedVersion) -> dict[str, list[dict]]:
    return {split: split_rows(data_root, version, split) for split in SPLITS}


@pytest.mark.parametrize("template", [None, ALPACA_TEMPLATE, QUESTION_ANSWER_TEMPLATE])
def test_batched_tokenization_equals_the_shared_training_example(tokenizer, template):
    # A conversation and its copy with an answer of weight 0 encode differently, in one batch.
    conversations = [row["messages"] for row in MULTI_TURN[:3] + FIRST_ANSWER_UNWEIGHTED[:2]] + [
        [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        for r in qa_rows(3)
    ]
    chat_template = template or tokenizer.chat_template
    end_of_turn = tokenizer.eos_token
    batched = training_examples(tokenizer, conversations, end_of_turn, chat_template)
    assert batched == [training_example(tokenizer, c, end_of_turn, chat_template) for c in conversations]


def test_same_inputs_give_the_same_version_and_bytes(data_stub, data_root):
    data = jsonl(qa_rows(40, "determinism"))
    first_dataset, second_dataset = upload(data_stub, data), upload(data_stub, data)
    settings = {"max_seq_len": 256, "seed": 7}
    first = prepare(data_stub, dataset_id=first_dataset.id, **settings)
    again = prepare(data_stub, dataset_id=first_dataset.id, **settings)
    assert again.prepared_version_id == first.prepared_version_id
    other_seed = prepare(data_stub, dataset_id=first_dataset.id, max_seq_len=256, seed=8)
    assert other_seed.prepared_version_id != first.prepared_version_id
    # An independent build from the same content: the data files are byte for byte the same.
    twin = prepare(data_stub, dataset_id=second_dataset.id, **settings)
    first_dir = data_root / "artifacts" / version_of(data_stub, first).artifact.uri
    twin_dir = data_root / "artifacts" / version_of(data_stub, twin).artifact.uri
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "chat_template.jinja"):
        assert (first_dir / name).read_bytes() == (twin_dir / name).read_bytes()
    manifest = json.loads((first_dir / "prepare.json").read_text())
    assert manifest["version_id"] == first.prepared_version_id
    assert manifest["end_of_turn"] == END_OF_TURN and manifest["template"] == "chat"


def test_labels_train_every_assistant_turn_but_those_of_weight_0_and_nothing_else(
    data_stub, data_root, tokenizer
):
    dataset = upload(data_stub, jsonl(MULTI_TURN + FIRST_ANSWER_UNWEIGHTED))
    version = version_of(data_stub, prepare(data_stub, dataset_id=dataset.id, max_seq_len=512))
    rows = [row for split in all_rows(data_root, version).values() for row in split]
    assert len(rows) == 2 * len(MULTI_TURN)
    assert sum(any(m.get("weight") == 0 for m in row["messages"]) for row in rows) == len(MULTI_TURN)
    for row in rows:
        runs, current = [], []
        for token, label in zip(row["input_ids"], row["labels"], strict=True):
            if label == IGNORE_INDEX:
                if current:
                    runs.append(current)
                current = []
            else:
                assert label == token
                current.append(label)
        if current:
            runs.append(current)
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant" and m.get("weight") != 0]
        assert [tokenizer.decode(run) for run in runs] == [answer + END_OF_TURN for answer in answers]


def test_duplicate_groups_never_cross_splits(data_stub, data_root):
    rows = []
    for group in range(30):
        answer = (
            f"Group {group} explains how the scheduler places job {group} on a worker with enough memory."
        )
        rows.append({"question": f"Where does job {group} run?", "answer": answer})
        rows.append({"question": f"where does JOB {group} run", "answer": answer})  # exact duplicate
        rows.append(
            {"question": f"Where does job {group} run?", "answer": answer.replace("enough", "plenty of")}
        )
    dataset = upload(data_stub, jsonl(rows))
    report = data_stub.GetValidationReport(data_pb2.GetDatasetRequest(id=dataset.id))
    assert report.counts.exact_duplicates == 30 and report.counts.near_duplicates == 30
    version = version_of(
        data_stub,
        prepare(
            data_stub,
            dataset_id=dataset.id,
            split=data_pb2.SplitFractions(train=0.5, validation=0.25, test=0.25),
            max_seq_len=256,
        ),
    )
    split_of_line = {
        row["source_line"]: split for split, rows in all_rows(data_root, version).items() for row in rows
    }
    assert len(split_of_line) == 90
    for group in range(30):
        lines = {3 * group + 1, 3 * group + 2, 3 * group + 3}
        assert len({split_of_line[line] for line in lines}) == 1
    sizes = [version.split_stats[split].examples for split in SPLITS]
    assert sum(sizes) == 90 and all(size > 0 and size % 3 == 0 for size in sizes)


def test_refusal_rows_are_mixed_in_and_counted(data_stub, data_root):
    dataset = upload(data_stub, jsonl(qa_rows(40, "refusal")))
    refusals = data_pb2.RefusalOptions(domain="the platform", fraction=0.5)
    version = version_of(
        data_stub, prepare(data_stub, dataset_id=dataset.id, refusals=refusals, max_seq_len=256, seed=3)
    )
    assert version.refusal_rows == 20
    rows = [row for split in all_rows(data_root, version).values() for row in split]
    refusal_rows = [row for row in rows if row["is_refusal"]]
    assert len(refusal_rows) == 20 and len(rows) == 60
    assert {row["messages"][-1]["content"] for row in refusal_rows} == {
        "Let's keep the discussion relevant to the platform."
    }
    assert len({row["messages"][0]["content"] for row in refusal_rows}) == 20
    assert sum(version.split_stats[s].examples for s in SPLITS) == 60


def test_truncation_policies_are_counted(data_stub, data_root):
    rows = qa_rows(10, "short") + [{"question": "Tell me everything.", "answer": "word " * 200}] * 2
    dataset = upload(data_stub, jsonl(rows))
    dropped = version_of(data_stub, prepare(data_stub, dataset_id=dataset.id, max_seq_len=64))
    assert dropped.dropped_too_long == 2 and dropped.truncated == 0
    assert sum(dropped.split_stats[s].examples for s in SPLITS) == 10
    kept = version_of(
        data_stub,
        prepare(
            data_stub, dataset_id=dataset.id, max_seq_len=64, truncation=data_pb2.TRUNCATION_POLICY_TRUNCATE
        ),
    )
    assert kept.truncated == 2 and kept.dropped_too_long == 0
    assert max(kept.split_stats[s].max for s in SPLITS) == 64
    assert all(len(row["input_ids"]) <= 64 for rows in all_rows(data_root, kept).values() for row in rows)


def test_alpaca_template_and_system_prompt(data_stub, data_root, tokenizer):
    dataset = upload(data_stub, jsonl(qa_rows(8, "alpaca")))
    version = version_of(
        data_stub,
        prepare(
            data_stub,
            dataset_id=dataset.id,
            template=data_pb2.PROMPT_TEMPLATE_ALPACA,
            system_prompt="You are the platform's assistant.",
            max_seq_len=256,
        ),
    )
    folder = data_root / "artifacts" / version.artifact.uri
    assert (folder / "chat_template.jinja").read_text() == ALPACA_TEMPLATE
    assert json.loads((folder / "prepare.json").read_text())["template"] == "alpaca"
    row = split_rows(data_root, version, "train")[0]
    assert row["messages"][0] == {"role": "system", "content": "You are the platform's assistant."}
    text = tokenizer.decode(row["input_ids"])
    assert text.startswith("You are the platform's assistant.\n\n### Instruction:\n")


def test_versions_are_listed_read_and_watched(data_stub):
    dataset = upload(data_stub, jsonl(qa_rows(30, "reading")))
    job = data_stub.PrepareDataset(
        data_pb2.PrepareDatasetRequest(
            dataset_id=dataset.id, base_model="smollm2-135m-instruct", max_seq_len=128
        )
    )
    events = list(data_stub.WatchPrepareJob(common_pb2.WatchRequest(id=job.status.id), timeout=120))
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert any(e.kind == common_pb2.EVENT_KIND_PROGRESS for e in events)
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    done = data_stub.GetPrepareJob(data_pb2.GetPrepareJobRequest(id=job.status.id))
    listed = data_stub.ListPreparedVersions(data_pb2.ListPreparedVersionsRequest(dataset_id=dataset.id))
    assert [v.id for v in listed.versions] == [done.prepared_version_id]
    version = listed.versions[0]
    assert (
        version.request.max_seq_len == 128 and version.request.truncation == data_pb2.TRUNCATION_POLICY_DROP
    )
    page = data_stub.ReadPreparedExamples(
        data_pb2.ReadPreparedExamplesRequest(
            version_id=version.id, split="train", page=common_pb2.PageRequest(page_size=10)
        )
    )
    rest = data_stub.ReadPreparedExamples(
        data_pb2.ReadPreparedExamplesRequest(
            version_id=version.id,
            split="train",
            page=common_pb2.PageRequest(page_size=100, page_token=page.next_page_token),
        )
    )
    assert len(page.examples) + len(rest.examples) == version.split_stats["train"].examples
    assert page.examples[0].messages[-1].role == "assistant"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"split": data_pb2.SplitFractions(train=0.5, validation=0.1, test=0.1)}, "split"),
        ({"refusals": data_pb2.RefusalOptions(fraction=0.2)}, "refusals.domain"),
        ({"max_seq_len": 10**6}, "max_seq_len"),
    ],
)
def test_bad_prepare_requests_name_their_field(data_stub, fields, field):
    dataset = upload(data_stub, jsonl(qa_rows(3, "bad-request")))
    with pytest.raises(grpc.RpcError) as err:
        data_stub.PrepareDataset(
            data_pb2.PrepareDatasetRequest(
                dataset_id=dataset.id, base_model="smollm2-135m-instruct", **fields
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"field '{field}'" in err.value.details()


def test_texts_cut_at_special_tokens_tokenize_as_they_do_whole(tokenizer):
    """encode_rendered cuts texts at their special tokens and tokenizes each distinct piece once: whatever
    the text around a cut (inside a special token, at its end, spaces and newlines after it, no special
    token at all, two in a row, a piece shared by several texts), every text's ids are those the tokenizer
    gives it whole."""
    assert cuts_at_special_tokens(tokenizer), "the default tokenizer must take the cutting path tested here"
    conversation = [{"role": "user", "content": "Where are the logs?"}]
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    texts = []
    for answer in ["Under /var/log.", " Under /var/log.", "  Two spaces.", "\n\nBlank lines first.", ""]:
        full = prompt + answer + "<|im_end|>\n"
        cuts = {len(prompt), len(prompt) - 1, len(prompt) - 3, len(prompt) + len(answer), len(full), 5, 0}
        texts += [full, *(full[:cut] for cut in sorted(cuts))]
    texts += [
        ALPACA_TEMPLATE[:40] + " no special token here",
        "<|im_start|><|im_end|>twice in a row<|im_end|>",
        "Ünïcödé → outside the twin's blocks<|im_end|>Where are the logs?",
    ]
    whole = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    assert encode_rendered(tokenizer, texts) == [e.ids for e in whole]


def test_pieces_kept_from_the_previous_batch_give_the_ids_of_texts_tokenized_whole(tokenizer):
    """A PieceIds hands one batch's pieces to the next (prepare's batches share system prompts and answers):
    texts of batches that share pieces with the batch before, and with the one before that only, still get
    the ids the tokenizer gives them whole, and the same ids as without it."""
    answers = ["Under /var/log.", " Leading space.", "Shared by all.", "Only in the first and third."]

    def chat(question: str, answer: str) -> str:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    batches = [
        [chat("Where?", answers[0]), chat("Which?", answers[2]), chat("Why?", answers[3])],
        [chat("Where?", answers[1]), chat("What?", answers[2]), "<|im_start|>no end"],
        [chat("Where?", answers[3]), chat("When?", answers[2]), chat("Where?", answers[0])],
    ]
    pieces = PieceIds()
    for texts in batches:
        whole = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        assert encode_rendered(tokenizer, texts, pieces) == whole == encode_rendered(tokenizer, texts)
