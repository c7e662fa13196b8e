"""The supervised fine-tuning recipe: setup, train, save_checkpoint, load_checkpoint (torchtune-style).

A lean loop over transformers + peft rather than `transformers.Trainer`, because the job contract needs
three things Trainer makes awkward: (1) a step's loss normalised by the label tokens of the whole
optimizer step, so batch 8 equals batch 1 x 8 accumulation and N processes equal one (Trainer's
normalisation depends on its own loss path and the model's `num_items_in_batch` support);
(2) checkpoints that are artifacts with an exact data position derived from the step, restored
bit-for-bit on another worker; (3) per-step events and a stop check between steps. Everything else
(model, LoRA, schedulers, DDP) is the libraries' own.

Runs the same way in one process or under torchrun (DDP, gloo on CPU, nccl on GPU): every process
knows the whole step's examples and takes its contiguous share.
"""

import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from services.trainer.batches import collate, example_indices, label_count, load_split, summed_loss
from services.trainer.hyperparameters import ALL_LINEAR, Hyperparameters
from services.trainer.packed_attention import register_packed_attention

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
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = self._device()
        self.precision = self.hp.resolved_precision(self.device.type == "cuda")
        _seed_everything(self.hp.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.base_model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Master weights stay fp32; bf16/fp16 run through autocast (CPU has no fast bf16, see STACK.md).
        model = AutoModelForCausalLM.from_pretrained(
            self.config.base_model_dir, dtype=torch.float32, attn_implementation=register_packed_attention()
        )
        model.config.use_cache = False
        self.model = self._adapt(model).to(self.device)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.world_size > 1:
            self.ddp_model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp_model = self.model
        self.train_examples = load_split(self.config.prepared_dir, "train")
        self.validation_examples = load_split(self.config.prepared_dir, "validation")
        if not self.train_examples:
            raise ValueError(f"{self.config.prepared_dir} has no training examples")
        self.state.total_steps = self.total_steps()
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay
        )
        self.scheduler = get_scheduler(
            SCHEDULER_NAMES[self.hp.schedule],
            optimizer=self.optimizer,
            num_warmup_steps=self.hp.warmup_for(self.state.total_steps),
            num_training_steps=self.state.total_steps,
        )

    def _device(self) -> torch.device:
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")

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
        return get_peft_model(model, lora)

    @property
    def examples_per_step(self) -> int:
        return self.hp.batch_size * self.hp.gradient_accumulation_steps * self.world_size

    def total_steps(self) -> int:
        if self.hp.max_steps:
            return self.hp.max_steps
        return max(1, math.ceil(self.hp.epochs * len(self.train_examples) / self.examples_per_step))

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
            }
            self.state.history.append({"event": "train", **metrics})
            if self.is_main:
                reporter.on_train_step(metrics)
            last_step = self.state.step == self.state.total_steps
            if self.validation_examples and (last_step or self.state.step % self.hp.eval_every_steps == 0):
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
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(accumulated.loss, float(grad_norm), accumulated.tokens)

    def accumulate_gradients(self) -> StepResult:
        """Backward over the next step's examples; leaves the step's gradient in `.grad`."""
        indices = example_indices(
            len(self.train_examples), self.hp.seed, self.state.examples_seen, self.examples_per_step
        )
        step_examples = [self.train_examples[i] for i in indices]
        # Every process knows the step's examples, so the normaliser needs no communication.
        label_tokens = max(1, sum(label_count(e) for e in step_examples))
        share = len(step_examples) // self.world_size
        mine = step_examples[self.rank * share : (self.rank + 1) * share]
        micro_batches = [mine[i : i + self.hp.batch_size] for i in range(0, len(mine), self.hp.batch_size)]
        loss_sum = torch.zeros((), device=self.device)
        for index, examples in enumerate(micro_batches):
            batch = self._to_device(collate(examples, self.hp.packing, self.pad_id))
            with self._no_sync(index < len(micro_batches) - 1), self._autocast():
                summed = summed_loss(self.ddp_model, batch)
            # DDP averages gradients over processes; scaling by world size turns that into a sum.
            (summed * self.world_size / label_tokens).backward()
            loss_sum += summed.detach()
        if self.world_size > 1:
            dist.all_reduce(loss_sum)
        tokens = sum(len(e.input_ids) for e in step_examples)
        return StepResult(float(loss_sum) / label_tokens, 0.0, tokens)

    def validation_loss(self) -> float:
        examples = self.validation_examples
        share = math.ceil(len(examples) / self.world_size)
        mine = examples[self.rank * share : (self.rank + 1) * share]
        totals = torch.zeros(2, device=self.device)
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for i in range(0, len(mine), self.hp.batch_size):
                batch = collate(mine[i : i + self.hp.batch_size], self.hp.packing, self.pad_id)
                totals[0] += summed_loss(self.model, self._to_device(batch))
                totals[1] += batch.label_tokens
        self.model.train()
        if self.world_size > 1:
            dist.all_reduce(totals)
        return float(totals[0] / totals[1].clamp(min=1))

    def _validate(self, reporter: Reporter) -> None:
        loss = self.validation_loss()
        if loss < self.state.best_validation_loss:
            self.state.best_validation_loss = loss
            self.state.evaluations_without_improvement = 0
        else:
            self.state.evaluations_without_improvement += 1
        patience = self.hp.early_stopping_patience
        if patience and self.state.evaluations_without_improvement >= patience:
            self.state.stopped_early = True
        metrics = {"step": float(self.state.step), "validation_loss": loss}
        self.state.history.append({"event": "validation", **metrics})
        if self.is_main:
            reporter.on_validation(metrics)

    # Checkpoints

    def save_checkpoint(self) -> Path:
        """Trainable weights, optimizer, scheduler, every process's RNG states and the data position."""
        folder = self.config.work_dir / "checkpoints" / f"step-{self.state.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), folder / f"rng-rank{self.rank}.pt")
        if self.is_main:
            trainable = {name: p.detach().cpu().contiguous() for name, p in self._trainable_named()}
            save_file(trainable, str(folder / TRAINABLE_WEIGHTS))
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            state = {**self.state.__dict__, "world_size": self.world_size}
            (folder / STATE_FILE).write_text(json.dumps(state))
        if self.world_size > 1:
            dist.barrier()
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text())
        if state.pop("world_size") != self.world_size:
            raise ValueError("a checkpoint resumes with the number of processes that wrote it")
        state["best_validation_loss"] = float(state["best_validation_loss"])
        self.state = TrainingState(**state)
        weights = load_file(str(folder / TRAINABLE_WEIGHTS))
        named = dict(self._trainable_named())
        if set(weights) != set(named):
            raise ValueError(f"{folder} holds weights for another model or adapter configuration")
        with torch.no_grad():
            for name, tensor in weights.items():
                named[name].copy_(tensor)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
        _restore_rng(torch.load(folder / f"rng-rank{self.rank}.pt", weights_only=False))

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
        # Gradients are all-reduced once per optimizer step, not once per micro-batch.
        if skip and isinstance(self.ddp_model, torch.nn.parallel.DistributedDataParallel):
            with self.ddp_model.no_sync():
                yield
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
