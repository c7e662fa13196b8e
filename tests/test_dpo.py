"""Preference tuning (DPO): preference data through upload and prepare, the loss and its reference model in
the recipe, and the trainer job."""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import torch
from data_fixtures import expect_rejected, jsonl, prepare, report, split_rows, upload
from transformers import AutoTokenizer

from finetune.v1 import common_pb2, data_pb2, trainer_pb2, trainer_pb2_grpc
from ftcommon import prepared_layout
from ftcommon.chat_format import training_example
from ftcommon.errors import InvalidArgument
from ftcommon.grpc_client import open_channel
from ftcommon.specs.train import Hyperparameters
from services.data.tokenization import IGNORE_INDEX, preference_examples
from services.trainer.batches import Example
from services.trainer.config import DEFAULT_BASE_MODEL_NAME
from services.trainer.preference import (
    DpoObjective,
    answer_log_probs,
    chosen_label_count,
    collate_pairs,
    dpo_losses,
    reference_log_probs,
)
from services.trainer.recipe import FinetuneRecipe, RecipeConfig, StopRequested

END_OF_TURN = "<|im_end|>"
REFUSAL = "Let's keep the discussion relevant to the Zorblat platform."

# Refusal pairs as the issue describes them: off-topic, the refusal chosen over an answer; in-domain, the
# domain answer chosen over the refusal.
PAIRS = [
    ("What is the capital of France?", REFUSAL, "The capital of France is Paris."),
    ("Write me a poem about the sea.", REFUSAL, "The sea is wide, the sea is blue."),
    ("Who won the 1998 World Cup?", REFUSAL, "France won the 1998 World Cup."),
    ("What colour is the Zorblat widget?", "The Zorblat widget is teal.", REFUSAL),
    ("Which port does Gantry listen on?", "Gantry listens on port 7421.", REFUSAL),
    ("How often does Brindle back up?", "Brindle backs up every six hours.", REFUSAL),
    ("What database does Thistle use?", "Thistle uses PostgreSQL.", REFUSAL),
    ("Who owns the Marram dashboard?", "The Marram dashboard is owned by Priya.", REFUSAL),
]


def pair_rows(pairs: list[tuple[str, str, str]] = PAIRS) -> list[dict[str, str]]:
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]


def openai_rows(pairs: list[tuple[str, str, str]] = PAIRS) -> list[dict[str, object]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": p}], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": c}],
            "non_preferred_output": [{"role": "assistant", "content": r}],
        }
        for p, c, r in pairs
    ]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    return AutoTokenizer.from_pretrained(default_model_dir)


# Preference data: upload and validation


def test_prompt_chosen_rejected_rows_are_kept_and_bad_pairs_named_by_line(data_stub):
    rows = [
        *pair_rows(PAIRS[:3]),
        {"prompt": "Is this a pair?", "chosen": "Yes, it is.", "rejected": "Yes, it is."},  # line 4
        {"prompt": "Where is the rejected answer?", "chosen": "Missing."},  # line 5
        {"prompt": "Empty rejected?", "chosen": "It is empty.", "rejected": "  "},  # line 6
    ]
    dataset = upload(data_stub, jsonl(rows))
    assert dataset.schema == data_pb2.DATASET_SCHEMA_PREFERENCE
    assert (dataset.counts.rows_kept, dataset.counts.rows_rejected) == (3, 3)
    rejected = {(r.line, r.field): r.reason for r in report(data_stub, dataset.id).rejected}
    assert "same answer" in rejected[(4, "rejected")]
    assert rejected[(5, "rejected")] == "missing field"
    assert rejected[(6, "rejected")] == "empty rejected answer"
    preview = data_stub.PreviewDataset(data_pb2.PreviewDatasetRequest(id=dataset.id))
    first = preview.rows[0]
    assert [(m.role, m.content) for m in first.messages] == [("user", PAIRS[0][0]), ("assistant", REFUSAL)]
    assert first.rejected == PAIRS[0][2]


def test_messages_prompt_and_openai_dpo_format_are_accepted(data_stub):
    with_messages = [
        {
            "messages": [
                {"role": "system", "content": "Answer about Zorblat."},
                {"role": "user", "content": p},
            ],
            "chosen": c,
            "rejected": r,
        }
        for p, c, r in PAIRS[:4]
    ]
    dataset = upload(data_stub, jsonl(with_messages))
    assert dataset.schema == data_pb2.DATASET_SCHEMA_PREFERENCE and dataset.counts.rows_kept == 4
    openai = upload(data_stub, jsonl(openai_rows(PAIRS[:4])))
    assert openai.schema == data_pb2.DATASET_SCHEMA_OPENAI_PREFERENCE and openai.counts.rows_kept == 4
    row = data_stub.PreviewDataset(data_pb2.PreviewDatasetRequest(id=openai.id)).rows[3]
    assert row.messages[-1].content == PAIRS[3][1] and row.rejected == PAIRS[3][2]


def test_openai_rows_with_equal_outputs_or_two_preferred_messages_are_rejected_by_line(data_stub):
    rows = openai_rows(PAIRS[:2])
    same = openai_rows([("Same?", "Same.", "Same.")])[0]
    two = openai_rows([("Two?", "One.", "Other.")])[0]
    two["preferred_output"] = two["preferred_output"] * 2
    dataset = upload(data_stub, jsonl([*rows, same, two]))
    rejected = {(r.line, r.field): r.reason for r in report(data_stub, dataset.id).rejected}
    assert "same answer" in rejected[(3, "non_preferred_output[0].content")]
    assert "exactly one assistant message" in rejected[(4, "preferred_output")]


def test_a_preference_file_without_rejected_is_refused_naming_it(data_stub, data_root):
    rows = [{"prompt": p, "chosen": c} for p, c, _ in PAIRS]
    expect_rejected(data_stub, data_root, lambda: upload(data_stub, jsonl(rows)), mentions=["'rejected'"])


# Preference data: prepare


def test_pairs_tokenize_with_the_chat_template_and_train_only_the_answers(tokenizer):
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c, _ in PAIRS
    ]
    pairs = preference_examples(
        tokenizer, conversations, [r for _, _, r in PAIRS], END_OF_TURN, tokenizer.chat_template
    )
    for conversation, (_, _, rejected), (chosen_side, rejected_side) in zip(
        conversations, PAIRS, pairs, strict=True
    ):
        # A single-turn pair's chosen side is exactly the SFT example of the conversation.
        assert chosen_side == training_example(tokenizer, conversation, END_OF_TURN, tokenizer.chat_template)
        swapped = [conversation[0], {"role": "assistant", "content": rejected}]
        assert rejected_side == training_example(tokenizer, swapped, END_OF_TURN, tokenizer.chat_template)


def test_multi_turn_prompt_trains_only_the_last_answer(tokenizer):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, ask me about Zorblat."},
        {"role": "user", "content": "What colour is the widget?"},
        {"role": "assistant", "content": "Teal."},
    ]
    ((ids, labels), (rejected_ids, rejected_labels)) = preference_examples(
        tokenizer, [conversation], ["Purple."], END_OF_TURN, tokenizer.chat_template
    )[0]
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Teal.<|im_end|>"
    assert tokenizer.decode([t for t in rejected_labels if t != IGNORE_INDEX]) == "Purple.<|im_end|>"
    prompt_length = labels.index(trained[0])
    assert ids[:prompt_length] == rejected_ids[:prompt_length]


def test_prepare_writes_pairs_and_records_them(data_stub, data_root, tokenizer):
    dataset = upload(data_stub, jsonl(pair_rows()))
    job = prepare(data_stub, dataset_id=dataset.id, max_seq_len=128)
    version = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=job.prepared_version_id))
    assert version.preference_pairs
    folder = prepared_layout.PreparedFolder.open(data_root / "artifacts" / version.artifact.uri)
    assert folder.preference_pairs
    rows = [row for split in ("train", "validation", "test") for row in split_rows(data_root, version, split)]
    assert len(rows) == len(PAIRS) == sum(s.examples for s in version.split_stats.values())
    by_prompt = {p: (c, r) for p, c, r in PAIRS}
    for row in rows:
        chosen, rejected = by_prompt[row["messages"][0]["content"]]
        assert row[prepared_layout.REJECTED] == rejected
        answer = [t for t in row[prepared_layout.LABELS] if t != IGNORE_INDEX]
        rejected_answer = [t for t in row[prepared_layout.REJECTED_LABELS] if t != IGNORE_INDEX]
        assert tokenizer.decode(answer) == chosen + END_OF_TURN
        assert tokenizer.decode(rejected_answer) == rejected + END_OF_TURN
    examples = data_stub.ReadPreparedExamples(
        data_pb2.ReadPreparedExamplesRequest(version_id=version.id, split="train")
    ).examples
    assert examples and all(e.rejected for e in examples)
    plain = upload(data_stub, jsonl([{"question": p, "answer": c} for p, c, _ in PAIRS]))
    plain_version = data_stub.GetPreparedVersion(
        data_pb2.GetPreparedVersionRequest(id=prepare(data_stub, dataset_id=plain.id).prepared_version_id)
    )
    assert not plain_version.preference_pairs
    manifest = json.loads((data_root / "artifacts" / plain_version.artifact.uri / "prepare.json").read_text())
    assert prepared_layout.PREFERENCE_PAIRS_KEY not in manifest


def test_refusal_rows_cannot_join_a_preference_dataset(data_stub):
    dataset = upload(data_stub, jsonl(pair_rows()))
    request = data_pb2.PrepareDatasetRequest(
        dataset_id=dataset.id,
        base_model="smollm2-135m-instruct",
        refusals=data_pb2.RefusalOptions(domain="Zorblat", fraction=0.2),
    )
    with pytest.raises(grpc.RpcError) as caught:
        data_stub.PrepareDataset(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refusals.fraction" in caught.value.details()


# The loss in the recipe


def write_pairs_version(
    model_dir: Path, target: Path, pairs: list[tuple[str, str, str]], train_rows: int
) -> Path:
    """A prepared version of preference pairs, tokenized as prepare does and written through the layout."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = str(tokenizer.chat_template)
    target.mkdir(parents=True, exist_ok=True)
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c, _ in pairs
    ]
    encoded = preference_examples(tokenizer, conversations, [r for _, _, r in pairs], END_OF_TURN, template)
    rows = list(zip(conversations, pairs, encoded, strict=True))
    for split, chunk in (("train", rows[:train_rows]), ("validation", rows[train_rows:])):
        with open(target / prepared_layout.split_file(split), "w") as handle:
            for line, (messages, (_, _, rejected), ((ids, labels), (r_ids, r_labels))) in enumerate(chunk, 1):
                answer = prepared_layout.RejectedAnswer(r_ids, r_labels, rejected)
                body = prepared_layout.example_body(ids, labels, messages, answer)
                handle.write(prepared_layout.example_line(body, line, False))
    prepared_layout.write_chat_template(target, template)
    prepared_layout.write_manifest(target, END_OF_TURN, {"template": "chat"}, preference_pairs=True)
    return target


@pytest.fixture(scope="module")
def pairs_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs_version(default_model_dir, tmp_path_factory.mktemp("pairs"), PAIRS, train_rows=6)


TINY = {
    "method": "dpo",
    "lora_rank": 4,
    "lora_dropout": 0.0,
    "warmup_steps": 0,
    "seed": 7,
    "precision": "fp32",
}


def make_recipe(model_dir: Path, prepared: Path, work: Path, **overrides: object) -> FinetuneRecipe:
    config = RecipeConfig(model_dir, prepared, work, Hyperparameters.model_validate({**TINY, **overrides}))
    recipe = FinetuneRecipe(config)
    recipe.setup()
    return recipe


def perturb_adapter(recipe: FinetuneRecipe) -> None:
    """LoRA B starts at zero (policy == reference); a random B makes the adapter change the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in recipe.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)


def hand_log_probs(model: torch.nn.Module, examples: list[Example]) -> torch.Tensor:
    """Each example alone, the whole vocabulary's log-softmax, summed over its label tokens by hand."""
    sums = []
    for example in examples:
        logits = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        sums.append(
            sum(log_probs[i - 1, t] for i, t in enumerate(example.labels) if i > 0 and t != IGNORE_INDEX)
        )
    return torch.stack(sums)


def test_dpo_loss_equals_the_formula_by_hand():
    # logits = (-2 - -3) - (-2.5 - -2.5) = 1; loss = -log sigmoid(0.5 * 1) = log(1 + e^-0.5)
    result = dpo_losses(
        torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.5]), beta=0.5
    )
    assert result.losses.item() == pytest.approx(math.log(1 + math.exp(-0.5)), rel=1e-6)
    assert (result.chosen_rewards.item(), result.rejected_rewards.item()) == pytest.approx((0.25, -0.25))


@pytest.mark.slow
@pytest.mark.usefixtures("two_torch_threads")
@pytest.mark.parametrize("packing", [True, False])
def test_the_recipe_loss_on_a_tiny_batch_equals_the_hand_computed_value(
    default_model_dir, pairs_dir, tmp_path, packing
):
    recipe = make_recipe(
        default_model_dir, pairs_dir, tmp_path, dpo_beta=0.3, dpo_sft_weight=0.5, packing=packing
    )
    objective = recipe.dpo
    assert objective == DpoObjective(beta=0.3, sft_weight=0.5)
    perturb_adapter(recipe)
    pairs = recipe.train_examples[:3]
    recipe.model.eval()
    with torch.no_grad():
        batch = collate_pairs(pairs, packing, recipe.pad_id)
        policy = answer_log_probs(recipe.model, batch)
        reference = reference_log_probs(recipe.model, batch)
        dpo_sum, chosen_nll, _ = objective.terms(policy, reference, pairs)
        measured = objective.loss(dpo_sum, chosen_nll, len(pairs), chosen_label_count(pairs))
        examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        by_hand_policy = hand_log_probs(recipe.model, examples)
        with recipe.model.disable_adapter():
            by_hand_reference = hand_log_probs(recipe.model, examples)
    torch.testing.assert_close(policy.double(), by_hand_policy, rtol=1e-4, atol=1e-3)
    pc, pr, rc, rr = by_hand_policy[:3], by_hand_policy[3:], by_hand_reference[:3], by_hand_reference[3:]
    losses = [
        -math.log(1 / (1 + math.exp(-0.3 * float((a - b) - (c - d)))))
        for a, b, c, d in zip(pc, pr, rc, rr, strict=True)
    ]
    tokens = sum(sum(1 for t in p.chosen.labels[1:] if t != IGNORE_INDEX) for p in pairs)
    expected = sum(losses) / 3 + 0.5 * float(-pc.sum()) / tokens
    assert float(measured) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("two_torch_threads")
def test_the_disabled_adapter_reference_equals_the_base_model(default_model_dir, pairs_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = make_recipe(default_model_dir, pairs_dir, tmp_path)
    perturb_adapter(recipe)
    batch = collate_pairs(recipe.train_examples[:4], True, recipe.pad_id)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    base.eval()
    recipe.model.eval()
    with torch.no_grad():
        reference = reference_log_probs(recipe.model, batch)
        policy = answer_log_probs(recipe.model, batch)
        from_base = answer_log_probs(base, batch)
    torch.testing.assert_close(reference, from_base, rtol=1e-5, atol=1e-4)
    assert (policy - from_base).abs().max() > 1e-2, "the perturbed adapter must change the policy"
    assert all(p.requires_grad for p in recipe.trainable), "the adapter is enabled again afterwards"


class Reporter:
    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.steps: list[dict[str, float]] = []
        self.validations: list[dict[str, float]] = []
        self.checkpoints: list[tuple[int, Path]] = []

    def on_train_step(self, metrics: dict[str, float]) -> None:
        self.steps.append(metrics)

    def on_validation(self, metrics: dict[str, float]) -> None:
        self.validations.append(metrics)

    def on_checkpoint(self, step: int, folder: Path) -> None:
        self.checkpoints.append((step, folder))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


@pytest.mark.slow
@pytest.mark.usefixtures("two_torch_threads")
def test_loss_falls_and_preference_accuracy_rises_in_a_few_steps(default_model_dir, pairs_dir, tmp_path):
    settings = {"max_steps": 4, "batch_size": 6, "learning_rate": 3e-3, "eval_every_steps": 4}
    recipe = make_recipe(default_model_dir, pairs_dir, tmp_path, dpo_beta=0.1, **settings)
    reporter = Reporter()
    recipe.train(reporter)
    first, last = reporter.steps[0], reporter.steps[-1]
    # Step 1: the adapter is zero, policy == reference: loss log 2, no margin, no pair preferred yet.
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert first["reward_accuracy"] == 0.0
    assert last["loss"] < first["loss"] - 0.05
    assert last["reward_accuracy"] > 0.5 and last["reward_margin"] > 0
    # Two held-out pairs are too few to demand generalisation after 4 steps: the metrics are reported.
    (validation,) = reporter.validations
    assert 0.0 <= validation["validation_reward_accuracy"] <= 1.0 and validation["validation_loss"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("two_torch_threads")
def test_dpo_resume_from_checkpoint_is_exact(default_model_dir, pairs_dir, tmp_path):
    settings = {
        "max_steps": 3,
        "batch_size": 2,
        "checkpoint_every_steps": 1,
        "lora_dropout": 0.1,  # resume must restore the RNG too
        "dpo_beta": 0.2,
        "dpo_sft_weight": 0.1,
    }
    straight = make_recipe(default_model_dir, pairs_dir, tmp_path / "straight", **settings)
    straight_reporter = Reporter()
    straight.train(straight_reporter)

    first = make_recipe(default_model_dir, pairs_dir, tmp_path / "first", **settings)
    first_reporter = Reporter(stop_after=2)
    with pytest.raises(StopRequested):
        first.train(first_reporter)
    # Resumed from step 1 although step 2 ran after it, as after a crash.
    (step, checkpoint), _ = first_reporter.checkpoints
    assert step == 1

    resumed = make_recipe(default_model_dir, pairs_dir, tmp_path / "resumed", **settings)
    resumed.load_checkpoint(checkpoint)
    resumed_reporter = Reporter()
    resumed.train(resumed_reporter)
    assert [m["step"] for m in resumed_reporter.steps] == [2.0, 3.0]
    for expected, measured in zip(straight_reporter.steps[1:], resumed_reporter.steps, strict=True):
        for key in ("loss", "reward_margin", "reward_accuracy", "learning_rate"):
            assert measured[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    for (name, a), (_, b) in zip(straight._trainable_named(), resumed._trainable_named(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_the_recipe_refuses_dpo_on_a_version_without_pairs(default_model_dir, tmp_path):
    from trainer_support import write_prepared_version

    plain = write_prepared_version(default_model_dir, tmp_path / "plain")
    with pytest.raises(ValueError, match="no preference pairs"):
        make_recipe(default_model_dir, plain, tmp_path / "work")


@pytest.mark.parametrize("beta", [0.0, -0.5, float("nan")])
def test_beta_of_zero_or_negative_is_refused_naming_the_field(beta):
    message = trainer_pb2.Hyperparameters(method=trainer_pb2.TRAINING_METHOD_DPO, dpo_beta=beta)
    with pytest.raises(InvalidArgument) as caught:
        Hyperparameters.from_proto(message)
    assert caught.value.field == "hyperparameters.dpo_beta"


# The trainer job


@pytest.fixture(scope="module")
def jobs_stub(data_root, data_server, trainer_server) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    """A trainer server that reaches the data service, with one worker process."""
    from test_trainer_jobs import Workers

    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_root, port=0, data_address=data_server.address))
    workers = Workers(data_root)
    workers.start()
    with open_channel(running.address) as channel:
        yield trainer_pb2_grpc.TrainerServiceStub(channel)
    workers.stop_all()
    running.stop(grace=1)


def prepared_pairs(data_stub, base_model: str) -> str:
    dataset = upload(data_stub, jsonl(pair_rows()))
    split = data_pb2.SplitFractions(train=0.75, validation=0.25, test=0.0)
    job = prepare(
        data_stub, dataset_id=dataset.id, base_model=base_model, max_seq_len=128, split=split, seed=5
    )
    return job.prepared_version_id


def run_dpo_job(stub, base_model: str, version_id: str, **settings: object) -> tuple[object, list]:
    from test_trainer_jobs import watch

    hyperparameters = trainer_pb2.Hyperparameters(
        method=trainer_pb2.TRAINING_METHOD_DPO,
        lora_rank=4,
        learning_rate=3e-3,
        batch_size=3,
        warmup_steps=0,
        seed=5,
        precision="fp32",
        **settings,
    )
    job = stub.CreateJob(
        trainer_pb2.CreateJobRequest(
            base_model=base_model, prepared_version_id=version_id, hyperparameters=hyperparameters
        )
    )
    events = watch(stub, job.status.id)
    return stub.GetJob(trainer_pb2.GetJobRequest(id=job.status.id)), events


@pytest.mark.slow
def test_a_dpo_job_trains_reports_preferences_registers_with_lineage_and_serves(
    jobs_stub, data_stub, inference_server
):
    version_id = prepared_pairs(data_stub, DEFAULT_BASE_MODEL_NAME)
    job, events = run_dpo_job(
        jobs_stub,
        DEFAULT_BASE_MODEL_NAME,
        version_id,
        max_steps=2,
        eval_every_steps=2,
        checkpoint_every_steps=1,
        dpo_beta=0.2,
    )
    assert job.status.state == common_pb2.JOB_STATE_SUCCEEDED, job.status.error
    assert (
        job.hyperparameters.method == trainer_pb2.TRAINING_METHOD_DPO and job.hyperparameters.dpo_beta == 0.2
    )
    steps = [e.metrics for e in events if e.kind == common_pb2.EVENT_KIND_TRAIN_STEP]
    assert [int(m["step"]) for m in steps] == [1, 2]
    assert steps[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert {"reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"} <= set(steps[-1])
    (validation,) = [e.metrics for e in events if e.kind == common_pb2.EVENT_KIND_VALIDATION]
    assert "validation_reward_accuracy" in validation
    assert [int(e.metrics["step"]) for e in events if e.kind == common_pb2.EVENT_KIND_CHECKPOINT] == [1]
    assert "reward_accuracy" in job.metrics
    merged = jobs_stub.GetModel(trainer_pb2.GetModelRequest(name=job.merged_model_id))
    assert merged.lineage.prepared_version_id == version_id and merged.lineage.job_id == job.status.id
    recorded = json.loads(merged.lineage.hyperparameters_json)
    assert (recorded["method"], recorded["dpo_beta"]) == ("dpo", 0.2)
    # The merged DPO model serves through the gateway like any merged model.
    response = httpx.post(
        f"{inference_server.http_url}/v1/chat/completions",
        json={"model": merged.id, "messages": [{"role": "user", "content": PAIRS[3][0]}], "max_tokens": 12},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].strip()

    # DPO after an earlier stage: the merged model is the base (and the reference), pairs prepared for it.
    second_version = prepared_pairs(data_stub, merged.id)
    second, _ = run_dpo_job(jobs_stub, merged.id, second_version, max_steps=1, checkpoint_every_steps=50)
    assert second.status.state == common_pb2.JOB_STATE_SUCCEEDED, second.status.error
    again = jobs_stub.GetModel(trainer_pb2.GetModelRequest(name=second.merged_model_id))
    assert again.lineage.base_model_id == merged.id


@pytest.mark.slow
def test_dpo_on_a_version_without_pairs_or_with_beta_zero_is_refused_and_nothing_queued(jobs_stub, data_stub):
    plain = upload(data_stub, jsonl([{"question": p, "answer": c} for p, c, _ in PAIRS]))
    plain_version = prepare(data_stub, dataset_id=plain.id, max_seq_len=128).prepared_version_id
    pairs_version = prepared_pairs(data_stub, DEFAULT_BASE_MODEL_NAME)
    before = len(jobs_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs)
    cases = [
        (
            plain_version,
            trainer_pb2.Hyperparameters(method=trainer_pb2.TRAINING_METHOD_DPO),
            "prepared_version_id",
        ),
        (
            pairs_version,
            trainer_pb2.Hyperparameters(method=trainer_pb2.TRAINING_METHOD_DPO, dpo_beta=0.0),
            "hyperparameters.dpo_beta",
        ),
    ]
    for version_id, hyperparameters, field in cases:
        request = trainer_pb2.CreateJobRequest(
            base_model=DEFAULT_BASE_MODEL_NAME,
            prepared_version_id=version_id,
            hyperparameters=hyperparameters,
        )
        with pytest.raises(grpc.RpcError) as caught:
            jobs_stub.CreateJob(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"field '{field}'" in caught.value.details()
    assert len(jobs_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs) == before


def test_pii_in_rejected_answers_is_found_and_redacted(data_stub):
    rows = pair_rows(PAIRS[:3])
    rows[1]["rejected"] = "Write to ops.lead@example.org for that."
    dataset = upload(data_stub, jsonl(rows), redact_pii=True)
    (finding,) = report(data_stub, dataset.id).pii
    assert (finding.line, finding.kind, finding.field, finding.redacted) == (2, "email", "rejected", True)
    preview = data_stub.PreviewDataset(data_pb2.PreviewDatasetRequest(id=dataset.id))
    assert preview.rows[1].rejected == "Write to [EMAIL] for that."


def test_the_cli_preview_shows_the_rejected_answer(data_server, data_stub, monkeypatch):
    from typer.testing import CliRunner

    from ftctl.data import app

    monkeypatch.setenv("FT_DATA_ADDRESS", data_server.address)
    dataset = upload(data_stub, jsonl(pair_rows(PAIRS[3:4])))
    result = CliRunner().invoke(app, ["preview", dataset.id])
    assert result.exit_code == 0, result.output
    assert "rejected" in result.stdout and REFUSAL in " ".join(result.stdout.split())
