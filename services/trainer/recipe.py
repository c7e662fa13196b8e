"""The supervised fine-tuning recipe: setup, train, save_checkpoint, load_checkpoint (torchtune-style).

A lean loop over transformers + peft rather than `transformers.Trainer`, because the job contract needs
three things Trainer makes awkward: (1) a step's loss normalised by the label tokens of the whole
optimizer step, so batch 8 equals batch 1 x 8 accumulation and N processes equal one (Trainer's
normalisation depends on its own loss path and the model's `num_items_in_batch` support);
(2) checkpoints that are artifacts with an exact data position derived from the step, restored
bit-for-bit on another worker; (3) per-step events and a stop check between steps. Everything else
(model, LoRA, schedulers, DDP) is the libraries' own.

The objective is next-token cross-entropy on the answers (SFT), or with method `dpo` the DPO loss on
preference pairs (preference.py) in the same loop, with the same checkpoints, resume and export.

Runs the same way in one process or under torchrun (DDP, or FSDP2's `fully_shard` per decoder layer;
gloo on CPU, nccl on GPU): every process knows the whole step's examples and takes its contiguous share.
"""

import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ftcommon.prepared_layout import PreparedFolder
from ftcommon.specs.train import ALL_LINEAR, Hyperparameters
from services.trainer.batches import (
    CrossEntropy,
    Example,
    collate,
    example_indices,
    label_count,
    load_split,
    summed_cross_entropy,
    summed_loss_and_hits,
)
from services.trainer.compiled_layers import (
    compile_norms_and_mlps,
    compiled_cross_entropy,
    cpu_compiler_available,
)
from services.trainer.fused_lora import fuse_lora_linear_layers
from services.trainer.packed_attention import register_packed_attention
from services.trainer.preference import (
    DpoObjective,
    PreferencePair,
    answer_log_probs,
    collate_pairs,
    load_pairs,
    reference_log_probs,
)
from services.trainer.schedule import examples_per_step, plan

SCHEDULER_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
TRAINABLE_WEIGHTS = "trainable.safetensors"
STATE_FILE = "trainer_state.json"


class Reporter(Protocol):
    """Where the recipe sends progress; only the first process reports."""

    def on_train_step(self, metrics: dict[str, float]) -> None: ...

    def on_validation(self, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, folder: Path) -> None: ...

    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class RecipeConfig:
    base_model_dir: Path
    prepared_dir: Path
    work_dir: Path
    hyperparameters: Hyperparameters


@dataclass
class TrainingState:
    """What a checkpoint restores besides weights, optimizer, scheduler and RNG states."""

    step: int = 0
    total_steps: int = 0
    examples_seen: int = 0  # the data position: the next step starts at this global example
    tokens_seen: int = 0
    best_validation_loss: float = math.inf
    evaluations_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's own (DPO: rewards, accuracy)


class FinetuneRecipe:
    def __init__(self, config: RecipeConfig) -> None:
        self.config = config
        self.hp = config.hyperparameters
        self.state = TrainingState()
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0

    # Setup

    def setup(self) -> None:
        from transformers import AutoTokenizer, get_scheduler

        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = self._device()
        self.precision = self.hp.resolved_precision(self.device.type == "cuda")
        _seed_everything(self.hp.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.base_model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.hp.method == "qlora":
            self.model = self._load_model(quantized=True)  # placed on the GPU while loading
        else:
            self.model = self._load_model().to(self.device)
        self.model.train()
        if self.bf16_weights:
            _adapters_take_bf16_inputs(self.model)
        if self.sharded:
            _fully_shard(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.world_size > 1 and not self.sharded:
            self.ddp_model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp_model = self.model
        self.dpo = DpoObjective(self.hp.dpo_beta, self.hp.dpo_sft_weight) if self.hp.method == "dpo" else None
        self.train_examples: list[Example] | list[PreferencePair]
        if self.dpo:
            if not PreparedFolder.open(self.config.prepared_dir).preference_pairs:
                raise ValueError(f"{self.config.prepared_dir} holds no preference pairs; DPO trains on pairs")
            self.train_examples = load_pairs(self.config.prepared_dir, "train")
            self.validation_examples = load_pairs(self.config.prepared_dir, "validation")
        else:
            self.train_examples = load_split(self.config.prepared_dir, "train")
            self.validation_examples = load_split(self.config.prepared_dir, "validation")
        if not self.train_examples:
            raise ValueError(f"{self.config.prepared_dir} has no training examples")
        # Jobs arrive with the schedule decided by CreateJob; a recipe built directly decides it the same way.
        schedule = plan(self.hp, len(self.train_examples), self.world_size)
        self.hp = schedule.hyperparameters
        self.state.total_steps = schedule.total_steps
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay
        )
        self.scheduler = get_scheduler(
            SCHEDULER_NAMES[self.hp.schedule],
            optimizer=self.optimizer,
            num_warmup_steps=self.hp.warmup_for(self.state.total_steps),
            num_training_steps=self.state.total_steps,
        )
        on_gpu = self.device.type == "cuda"
        self.torch_compile = self.hp.resolved_torch_compile(
            self.precision, on_gpu, self.planned_tokens, cpu_compiler=on_gpu or cpu_compiler_available()
        )
        self.cross_entropy: CrossEntropy = summed_cross_entropy
        if self.torch_compile:
            compile_norms_and_mlps(self.model)
            self.cross_entropy = compiled_cross_entropy()

    @property
    def bf16_weights(self) -> bool:
        """bf16 on a CPU stores the frozen weights in bf16 instead of autocasting fp32 ones: autocast casts
        every frozen weight again at each forward, and on a Xeon with AMX it trained no faster than fp32,
        where bf16 frozen weights gave 1.4-1.65x fp32's tokens per CPU-second (docs/architecture.md,
        training precision). The step still runs under bf16 autocast, so LoRA's fp32 weights (their own
        master weights) are cast to bf16 at each forward (r x features, small) and the adapters compute in
        bf16 on their bf16 inputs (`_adapters_take_bf16_inputs`). Full fine-tuning trains every weight, so
        it keeps fp32 master weights under autocast; so do GPUs (bf16 weights not measured there) and FSDP
        shards (one dtype per shard group)."""
        cpu_lora = self.device.type == "cpu" and self.hp.method != "full" and not self.sharded
        return self.precision == "bf16" and cpu_lora

    @property
    def resolved_hyperparameters(self) -> Hyperparameters:
        """The hyperparameters as this process runs them: the schedule's choices, and the precision and
        compilation it resolved from the hardware."""
        return self.hp.model_copy(update={"precision": self.precision, "torch_compile": self.torch_compile})

    @property
    def planned_tokens(self) -> int:
        """About how many tokens the run trains on: its steps times the examples' mean length."""
        lengths = [
            len(e.chosen.input_ids) + len(e.rejected.input_ids)
            if isinstance(e, PreferencePair)
            else len(e.input_ids)
            for e in self.train_examples
        ]
        return round(self.state.total_steps * self.examples_per_step * sum(lengths) / max(1, len(lengths)))

    @property
    def precision_mode(self) -> str:
        """What the precision means in this run, for the job's log."""
        if self.precision == "fp32":
            return "fp32"
        if self.bf16_weights:
            return "bf16 frozen weights and compute, fp32 trainable weights"
        return f"{self.precision} autocast, fp32 weights"

    @property
    def sharded(self) -> bool:
        return self.world_size > 1 and self.hp.strategy == "fsdp"

    def _device(self) -> torch.device:
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")

    def _load_model(self, quantized: bool = False, full_precision: bool = False) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        options: dict[str, Any] = {"attn_implementation": register_packed_attention()}
        if quantized:
            options.update(_quantized_loading(self.device))
        else:
            # LoRA's trainable weights are fp32 either way: peft keeps an adapter on a bf16 base in fp32
            # (`autocast_adapter_dtype`), so they are the optimizer's master weights.
            options["dtype"] = torch.bfloat16 if self.bf16_weights and not full_precision else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.config.base_model_dir, **options)
        model.config.use_cache = False
        if quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return self._adapt(model)

    def _adapt(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.hp.method == "full":
            return model
        from peft import LoraConfig, get_peft_model

        targets: str | list[str] = (
            ALL_LINEAR if self.hp.target_modules == [ALL_LINEAR] else self.hp.target_modules
        )
        lora = LoraConfig(
            r=self.hp.lora_rank,
            lora_alpha=self.hp.lora_alpha,
            lora_dropout=self.hp.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        if self.hp.method != "qlora":
            fuse_lora_linear_layers(lora)
        return get_peft_model(model, lora)

    @property
    def examples_per_step(self) -> int:
        return examples_per_step(self.hp, self.world_size)

    # Training

    def train(self, reporter: Reporter) -> TrainingState:
        step_seconds: list[float] = []
        while self.state.step < self.state.total_steps and not self.state.stopped_early:
            if self._agree(reporter.should_stop() if self.is_main else False):
                raise StopRequested(f"stopped at step {self.state.step}")
            started = time.perf_counter()
            result = self.train_step()
            elapsed = time.perf_counter() - started
            step_seconds.append(elapsed)
            self.state.step += 1
            self.state.examples_seen += self.examples_per_step
            self.state.tokens_seen += result.tokens
            recent = step_seconds[-10:]
            metrics = {
                "step": float(self.state.step),
                "total_steps": float(self.state.total_steps),
                "loss": result.loss,
                "learning_rate": self.scheduler.get_last_lr()[0],
                "grad_norm": result.grad_norm,
                "tokens_per_second": result.tokens / elapsed,
                "eta_seconds": (self.state.total_steps - self.state.step) * sum(recent) / len(recent),
                "epoch": self.state.examples_seen / len(self.train_examples),
                **result.metrics,
            }
            self.state.history.append({"event": "train", **metrics})
            if self.is_main:
                reporter.on_train_step(metrics)
            last_step = self.state.step == self.state.total_steps
            every = self.hp.eval_every_steps or 1  # decided by plan() in setup
            if self.validation_examples and (last_step or self.state.step % every == 0):
                self._validate(reporter)
            if self.hp.checkpoint_every_steps and self.state.step % self.hp.checkpoint_every_steps == 0:
                if not last_step:
                    folder = self.save_checkpoint()
                    if self.is_main:
                        reporter.on_checkpoint(self.state.step, folder)
        return self.state

    def train_step(self) -> StepResult:
        """One optimizer step over `examples_per_step` examples, split into micro-batches."""
        accumulated = self.accumulate_gradients()
        clip = self.hp.max_grad_norm if self.hp.max_grad_norm > 0 else math.inf
        grad_norm = _local(torch.nn.utils.clip_grad_norm_(self.trainable, clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return replace(accumulated, grad_norm=float(grad_norm))

    def accumulate_gradients(self) -> StepResult:
        """Backward over the next step's examples; leaves the step's gradient in `.grad`."""
        indices = example_indices(
            len(self.train_examples), self.hp.seed, self.state.examples_seen, self.examples_per_step
        )
        step_examples = [self.train_examples[i] for i in indices]
        if self.dpo:
            return self._accumulate_preference_gradients(step_examples, self.dpo)
        # Every process knows the step's examples, so the normaliser needs no communication.
        label_tokens = max(1, sum(label_count(e) for e in step_examples))
        share = len(step_examples) // self.world_size
        mine = step_examples[self.rank * share : (self.rank + 1) * share]
        micro_batches = [mine[i : i + self.hp.batch_size] for i in range(0, len(mine), self.hp.batch_size)]
        loss_sum = torch.zeros((), device=self.device)
        hits_sum = torch.zeros((), device=self.device)  # label tokens the most likely token got right
        for index, examples in enumerate(micro_batches):
            batch = self._to_device(collate(examples, self.hp.packing, self.pad_id))
            with self._no_sync(index < len(micro_batches) - 1), self._autocast():
                summed, hits = summed_loss_and_hits(self.ddp_model, batch, self.cross_entropy)
            # DDP averages gradients over processes; scaling by world size turns that into a sum.
            (summed * self.world_size / label_tokens).backward()
            loss_sum += summed.detach()
            hits_sum += hits
        if self.world_size > 1:
            dist.all_reduce(loss_sum)
            dist.all_reduce(hits_sum)
        tokens = sum(len(e.input_ids) for e in step_examples)
        accuracy = {"mean_token_accuracy": float(hits_sum) / label_tokens}
        return StepResult(float(loss_sum) / label_tokens, 0.0, tokens, accuracy)

    def _accumulate_preference_gradients(
        self, step_pairs: list[PreferencePair], objective: DpoObjective
    ) -> StepResult:
        """DPO's accumulate_gradients: the reference log-probabilities come from the same weights with the
        adapter disabled (no gradient), the policy's from the trained model; the loss is normalised by the
        whole step's pairs and chosen tokens, so the step does not depend on how it is split."""
        pairs_in_step = len(step_pairs)
        chosen_tokens = sum(label_count(p.chosen) for p in step_pairs)
        share = pairs_in_step // self.world_size
        mine = step_pairs[self.rank * share : (self.rank + 1) * share]
        micro_batches = [mine[i : i + self.hp.batch_size] for i in range(0, len(mine), self.hp.batch_size)]
        totals = torch.zeros(8, dtype=torch.float64, device=self.device)
        for index, pairs in enumerate(micro_batches):
            batch = self._to_device(collate_pairs(pairs, self.hp.packing, self.pad_id))
            with self._autocast():
                reference = reference_log_probs(self.model, batch)
            with self._no_sync(index < len(micro_batches) - 1), self._autocast():
                policy = answer_log_probs(self.ddp_model, batch)
            dpo_sum, chosen_nll, batch_totals = objective.terms(policy, reference, pairs)
            # DDP averages gradients over processes; scaling by world size turns that into a sum.
            (objective.loss(dpo_sum, chosen_nll, pairs_in_step, chosen_tokens) * self.world_size).backward()
            totals += batch_totals
        if self.world_size > 1:
            dist.all_reduce(totals)
        metrics = objective.metrics(totals)
        tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in step_pairs)
        return StepResult(metrics.pop("loss"), 0.0, tokens, metrics)

    def preference_validation(self, objective: DpoObjective) -> dict[str, float]:
        """validation_loss (DPO's), reward margin and preference accuracy on the validation pairs."""
        pairs = self.validation_examples
        share = math.ceil(len(pairs) / self.world_size)
        mine = pairs[self.rank * share : (self.rank + 1) * share]
        batches = [mine[i : i + self.hp.batch_size] for i in range(0, len(mine), self.hp.batch_size)]
        rounds = math.ceil(share / self.hp.batch_size) if self.sharded else len(batches)
        totals = torch.zeros(8, dtype=torch.float64, device=self.device)
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for index in range(rounds):
                chunk = batches[index] if index < len(batches) else pairs[:1]
                batch = self._to_device(collate_pairs(chunk, self.hp.packing, self.pad_id))
                reference = reference_log_probs(self.model, batch)
                policy = answer_log_probs(self.model, batch)
                if index < len(batches):
                    totals += objective.terms(policy, reference, chunk)[2]
        self.model.train()
        if self.world_size > 1:
            dist.all_reduce(totals)
        return objective.metrics(totals, prefix="validation_")

    def validation_loss(self) -> float:
        return self.validation_metrics()["validation_loss"]

    def validation_metrics(self) -> dict[str, float]:
        """The loss and mean token accuracy over the validation split's label tokens."""
        examples = self.validation_examples
        share = math.ceil(len(examples) / self.world_size)
        mine = examples[self.rank * share : (self.rank + 1) * share]
        totals = torch.zeros(3, device=self.device)  # summed loss, label tokens, label tokens predicted right
        batches = [mine[i : i + self.hp.batch_size] for i in range(0, len(mine), self.hp.batch_size)]
        # Sharded forwards are collectives: every process runs as many as the busiest one, counting only
        # its own examples.
        rounds = math.ceil(share / self.hp.batch_size) if self.sharded else len(batches)
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for index in range(rounds):
                batch = collate(
                    batches[index] if index < len(batches) else examples[:1], self.hp.packing, self.pad_id
                )
                loss, hits = summed_loss_and_hits(self.model, self._to_device(batch), self.cross_entropy)
                if index < len(batches):
                    totals[0] += loss
                    totals[1] += batch.label_tokens
                    totals[2] += hits
        self.model.train()
        if self.world_size > 1:
            dist.all_reduce(totals)
        label_tokens = totals[1].clamp(min=1)
        return {
            "validation_loss": float(totals[0] / label_tokens),
            "validation_mean_token_accuracy": float(totals[2] / label_tokens),
        }

    def _validate(self, reporter: Reporter) -> None:
        measured = self.preference_validation(self.dpo) if self.dpo else self.validation_metrics()
        loss = measured["validation_loss"]
        if loss < self.state.best_validation_loss:
            self.state.best_validation_loss = loss
            self.state.evaluations_without_improvement = 0
        else:
            self.state.evaluations_without_improvement += 1
        patience = self.hp.early_stopping_patience
        if patience and self.state.evaluations_without_improvement >= patience:
            self.state.stopped_early = True
        metrics = {"step": float(self.state.step), **measured}
        self.state.history.append({"event": "validation", **metrics})
        if self.is_main:
            reporter.on_validation(metrics)

    # Checkpoints

    def save_checkpoint(self) -> Path:
        """Trainable weights, optimizer, scheduler, every process's RNG states and the data position."""
        folder = self.config.work_dir / "checkpoints" / f"step-{self.state.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), folder / f"rng-rank{self.rank}.pt")
        # Gathering sharded weights is a collective; unsharded, only the writer needs a copy.
        trainable = self.full_trainable_weights() if self.sharded or self.is_main else {}
        if self.sharded:
            torch.save(self.optimizer.state_dict(), folder / f"optimizer-rank{self.rank}.pt")
        if self.is_main:
            save_file(trainable, str(folder / TRAINABLE_WEIGHTS))
            if not self.sharded:
                torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            state = {**self.state.__dict__, "world_size": self.world_size}
            (folder / STATE_FILE).write_text(json.dumps(state))
        if self.world_size > 1:
            dist.barrier()
        return folder

    def checkpoint_to_pause(self, pause_asked: bool) -> Path | None:
        """After StopRequested: when the first process says the job pauses, every process saves the
        checkpoint it resumes from (a collective under torchrun); None when it does not pause."""
        if not self._agree(pause_asked):
            return None
        return self.save_checkpoint()

    def load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text())
        if state.pop("world_size") != self.world_size:
            raise ValueError("a checkpoint resumes with the number of processes that wrote it")
        state["best_validation_loss"] = float(state["best_validation_loss"])
        self.state = TrainingState(**state)
        self._assign_trainable(load_file(str(folder / TRAINABLE_WEIGHTS)), str(folder))
        optimizer_file = f"optimizer-rank{self.rank}.pt" if self.sharded else "optimizer.pt"
        self.optimizer.load_state_dict(
            torch.load(folder / optimizer_file, map_location=self.device, weights_only=False)
        )
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
        _restore_rng(torch.load(folder / f"rng-rank{self.rank}.pt", weights_only=False))

    def full_trainable_weights(self) -> dict[str, torch.Tensor]:
        """Every trainable weight, whole and on the CPU; a collective when the weights are sharded."""
        return {name: _local(p.detach()).cpu().contiguous() for name, p in self._trainable_named()}

    def gather_for_export(self) -> None:
        """After FSDP or QLoRA training, the first process rebuilds a whole full-precision model holding the
        trained weights, so exporting (save, merge into the base dtype) works as after plain LoRA: sharded
        weights cannot be saved by one process, and 4-bit weights cannot take a merged adapter. After
        training on bf16 frozen weights the base is reloaded in fp32 too, so the merge adds the fp32 LoRA
        delta to the base's own fp32 weights, not to their bf16 rounding. Every process must call it."""
        if not self.sharded and self.hp.method != "qlora" and not self.bf16_weights:
            return
        trained = self.full_trainable_weights()
        if self.is_main:
            self.model = self._load_model(full_precision=True)
            self._assign_trainable(trained, "the trained weights")

    @contextmanager
    def checkpoint_weights(self, folder: Path) -> Iterator[None]:
        """Inside the block the model holds a checkpoint's trainable weights, its own again after (the first
        process, after gather_for_export)."""
        own = self.full_trainable_weights()
        self._assign_trainable(load_file(str(folder / TRAINABLE_WEIGHTS)), str(folder))
        try:
            yield
        finally:
            self._assign_trainable(own, "the trained weights")

    def _assign_trainable(self, weights: dict[str, torch.Tensor], source: str) -> None:
        named = dict(self._trainable_named())
        if set(weights) != set(named):
            raise ValueError(f"{source} holds weights for another model or adapter configuration")
        with torch.no_grad():
            for name, tensor in weights.items():
                named[name].copy_(_like(named[name], tensor.to(named[name].device)))

    def _trainable_named(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return ((name, p) for name, p in self.model.named_parameters() if p.requires_grad)

    # Internals

    def _to_device(self, batch: Any) -> Any:
        if self.device.type == "cpu":
            return batch
        return type(batch)(
            **{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.__dict__.items()}
        )

    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @contextmanager
    def _no_sync(self, skip: bool) -> Iterator[None]:
        # Gradients are reduced once per optimizer step, not once per micro-batch.
        if skip and isinstance(self.ddp_model, torch.nn.parallel.DistributedDataParallel):
            with self.ddp_model.no_sync():
                yield
        elif skip and self.sharded:
            self.model.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)  # type: ignore[operator]
        else:
            yield

    def _agree(self, flag: bool) -> bool:
        """The first process's decision, shared with the others so they stop together."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


class StopRequested(Exception):
    """The job was cancelled or taken away from this worker between two steps."""


def _adapters_take_bf16_inputs(model: torch.nn.Module) -> None:
    """peft casts each adapter's input to its weights' dtype: with bf16 frozen weights and fp32 LoRA weights
    that copies every adapted layer's input to fp32 and adds an fp32 result back into the bf16 one, forward
    and backward, 7 layers x 30 blocks (copies were the second-largest cost of a step after matmuls,
    torch.profiler). Under bf16 autocast the adapter takes its input as it is; tokens/s rose 1.24x on a Xeon
    with AMX (386 -> 480, docs/architecture.md, training precision). peft's own switch for this is a context
    manager (`peft.helpers.disable_input_dtype_casting`); a training run keeps it off for its whole life."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fully_shard(model: torch.nn.Module) -> None:
    """FSDP2: each decoder layer is its own shard group (transformers names them in `_no_split_modules`),
    then the root holds the rest. Gradients are averaged over processes, as DDP's are."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a possibly sharded (DTensor) tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _like(parameter: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`whole` laid out like `parameter`: sharded the same way when the parameter is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(parameter, DTensor):
        return distribute_tensor(whole, parameter.device_mesh, parameter.placements)
    return whole


def _quantized_loading(device: torch.device) -> dict[str, Any]:
    """from_pretrained options for QLoRA: 4-bit NF4 base weights with double quantization, bf16 compute."""
    import importlib.util

    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("method qlora needs a CUDA GPU and the bitsandbytes package (the qlora extra)")
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {
        "quantization_config": quantization,
        "dtype": torch.bfloat16,
        "device_map": {"": device.index or 0},
    }
