"""Examples of a prepared version, their deterministic order, and collation (packed or padded).

Packing puts a micro-batch's examples end to end in one row with `position_ids` restarting at 0 for
each example and no padding at all. The model must run with `use_cache=False`: with transformers
5.19 the cache path ignores the position-id document boundaries and lets examples attend to each
other (STACK.md). The first label of every example is masked so no example learns to predict the
next one's first token.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import torch

from ftcommon.prepared_layout import INPUT_IDS, LABELS, read_examples

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None  # packed rows
    attention_mask: torch.Tensor | None  # padded rows
    document_bounds: tuple[int, ...] | None  # packed rows: where each example starts, then the row's end
    real_tokens: int  # tokens that are not padding
    label_tokens: int  # tokens the loss counts (after the shift)


def load_split(prepared_dir: Path, split: str) -> list[Example]:
    return [Example(row[INPUT_IDS], row[LABELS]) for row in read_examples(prepared_dir, split)]


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The same permutation for the same (seed, epoch) on every process and every resume."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


def example_indices(count: int, seed: int, start: int, size: int) -> list[int]:
    """`size` indices starting at global position `start` of the endless sequence of shuffled epochs."""
    indices: list[int] = []
    position = start
    while len(indices) < size:
        epoch, offset = divmod(position, count)
        order = epoch_order(count, seed, epoch)
        take = min(size - len(indices), count - offset)
        indices.extend(order[offset : offset + take])
        position += take
    return indices


def label_count(example: Example) -> int:
    """Tokens of the example the loss counts. Position 0 predicts nothing after the shift."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


def collate_packed(examples: Sequence[Example]) -> Batch:
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        input_ids.extend(example.input_ids)
        labels.append(IGNORE_INDEX)
        labels.extend(example.labels[1:])
        positions.extend(range(len(example.input_ids)))
    return Batch(
        input_ids=torch.tensor([input_ids]),
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([positions]),
        attention_mask=None,
        document_bounds=(0, *accumulate(len(e.input_ids) for e in examples)),
        real_tokens=len(input_ids),
        label_tokens=sum(label_count(e) for e in examples),
    )


def collate_padded(examples: Sequence[Example], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention_mask[row, :length] = 1
    return Batch(
        input_ids=input_ids,
        labels=labels,
        position_ids=None,
        attention_mask=attention_mask,
        document_bounds=None,
        real_tokens=int(attention_mask.sum()),
        label_tokens=sum(label_count(e) for e in examples),
    )


def collate(examples: Sequence[Example], packing: bool, pad_id: int) -> Batch:
    return collate_packed(examples) if packing else collate_padded(examples, pad_id)


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy of (tokens, vocabulary) logits against their labels, ignored labels left out.
    Half-precision logits are upcast for a stable softmax; float64 (the invariant tests' reference) stays."""
    upcast = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.nn.functional.cross_entropy(upcast, labels, ignore_index=IGNORE_INDEX, reduction="sum")


CrossEntropy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def summed_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Sum of the next-token cross-entropy over the batch's label tokens. Callers divide by the label
    count of the whole optimizer step, so a step's loss does not depend on how it is split into
    micro-batches or processes."""
    return summed_loss_and_hits(model, batch)[0]


def summed_loss_and_hits(
    model: torch.nn.Module, batch: Batch, cross_entropy: CrossEntropy = summed_cross_entropy
) -> tuple[torch.Tensor, torch.Tensor]:
    """summed_loss, and how many label tokens the model's most likely next token got right (divided by
    the label tokens: OpenAI's mean token accuracy)."""
    # Logit rows exist only where some row predicts a label: prompts and packing seams are skipped,
    # which saves the vocabulary-wide projection and softmax (a fifth of the model's FLOPs) there.
    targets = batch.labels[:, 1:]
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    # Packed rows name their examples' bounds so services.trainer.packed_attention attends per example.
    bounds = {} if batch.document_bounds is None else {"cu_seq_lens_q": torch.tensor(batch.document_bounds)}
    logits = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
        logits_to_keep=positions.to(batch.input_ids.device),
        **bounds,
    ).logits
    kept_logits = logits.reshape(-1, logits.size(-1))
    kept_labels = targets[:, positions].reshape(-1).to(kept_logits.device)
    loss = cross_entropy(kept_logits, kept_labels)
    with torch.no_grad():
        # A label whose logit is the row's highest is a hit: the same as argmax == label but for exact ties,
        # and a max reduction is vectorised where argmax is not (CPU, 300 x 49,152 fp32 logits: 2.4 ms vs 19).
        # On the logits as the model returned them: upcasting bf16 is exact, so no comparison changes.
        labelled = kept_labels != IGNORE_INDEX
        label_logits = kept_logits.gather(1, kept_labels.clamp_min(0).unsqueeze(1)).squeeze(1)
        hits = ((label_logits >= kept_logits.amax(dim=-1)) & labelled).sum()
    return loss, hits
