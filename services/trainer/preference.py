"""Direct preference optimisation (DPO) as a loss of the platform's own recipe (recipe.py).

Written here rather than run through TRL's DPOTrainer because a job must keep what the recipe gives every
method: the durable job with its events and stop checks between steps, checkpoints that are artifacts with
the data position, exact resume on another worker, DDP/FSDP, then merge and registration. DPOTrainer
brings its own loop (transformers.Trainer) and checkpoint format. The loss is TRL's `sigmoid` loss
(Rafailov et al. 2023) with TRL's `rpo_alpha` SFT term:

    logits  = (log pi(chosen) - log pi(rejected)) - (log ref(chosen) - log ref(rejected))
    loss    = -log sigmoid(beta * logits)  [+ sft_weight * NLL of the chosen answer per token]
    rewards = beta * (log pi(answer) - log ref(answer))

log pi(answer) is the sum of the answer tokens' log-probabilities. The reference model is the same model
with its LoRA adapter disabled (peft's `disable_adapter()`), so no second copy of the weights exists; after
an SFT stage the base model is the merged SFT model, and it is the reference.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from ftcommon.prepared_layout import (
    INPUT_IDS,
    LABELS,
    REJECTED_INPUT_IDS,
    REJECTED_LABELS,
    PreparedLayoutError,
    read_examples,
    split_file,
)
from services.trainer.batches import IGNORE_INDEX, Batch, Example, collate, label_count


@dataclass(frozen=True)
class PreferencePair:
    chosen: Example
    rejected: Example


@dataclass(frozen=True)
class PairLosses:
    """Per pair: the DPO loss and the implicit rewards of both answers."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def load_pairs(prepared_dir: Path, split: str) -> list[PreferencePair]:
    pairs = []
    for number, row in enumerate(read_examples(prepared_dir, split), start=1):
        if REJECTED_INPUT_IDS not in row or REJECTED_LABELS not in row:
            raise PreparedLayoutError(
                f"{prepared_dir / split_file(split)}, line {number}: a preference pair needs "
                f"{REJECTED_INPUT_IDS!r} and {REJECTED_LABELS!r}"
            )
        pairs.append(
            PreferencePair(
                Example(row[INPUT_IDS], row[LABELS]), Example(row[REJECTED_INPUT_IDS], row[REJECTED_LABELS])
            )
        )
    return pairs


def collate_pairs(pairs: Sequence[PreferencePair], packing: bool, pad_id: int) -> Batch:
    """Every chosen answer, then every rejected one, in one batch: one forward pass for both."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], packing, pad_id)


def chosen_label_count(pairs: Sequence[PreferencePair]) -> int:
    return sum(label_count(p.chosen) for p in pairs)


def answer_log_probs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Per example of the batch (row, or document of a packed row): the sum of its label tokens'
    log-probabilities. Logits are computed only where some row predicts a label, as in summed_loss."""
    targets = batch.labels[:, 1:]
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    bounds = {} if batch.document_bounds is None else {"cu_seq_lens_q": torch.tensor(batch.document_bounds)}
    logits = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
        logits_to_keep=positions.to(batch.input_ids.device),
        **bounds,
    ).logits
    kept_logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    kept_labels = targets[:, positions].to(kept_logits.device)
    token_log_probs = -F.cross_entropy(
        kept_logits.transpose(1, 2), kept_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    if batch.document_bounds is None:
        return token_log_probs.sum(dim=-1)
    # Packed: the logit at position p predicts token p + 1, which belongs to the document holding p + 1.
    starts = torch.tensor(batch.document_bounds, device=positions.device)
    documents = torch.searchsorted(starts, positions + 1, right=True) - 1
    summed = torch.zeros(
        len(batch.document_bounds) - 1, dtype=token_log_probs.dtype, device=kept_logits.device
    )
    return summed.index_add(0, documents.to(kept_logits.device), token_log_probs[0])


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> PairLosses:
    """The sigmoid DPO loss per pair (see the module's docstring)."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return PairLosses(
        losses=-F.logsigmoid(beta * logits),
        chosen_rewards=beta * (policy_chosen - reference_chosen).detach(),
        rejected_rewards=beta * (policy_rejected - reference_rejected).detach(),
    )


@dataclass(frozen=True)
class DpoObjective:
    """What a DPO job minimises: the sigmoid loss with `beta`, plus `sft_weight` times the chosen answers'
    mean token NLL (0: none)."""

    beta: float = 0.1
    sft_weight: float = 0.0

    def terms(
        self, policy: torch.Tensor, reference: torch.Tensor, pairs: Sequence[PreferencePair]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a batch from collate_pairs: the summed DPO loss and the summed chosen NLL (both
        differentiable), and the batch's detached totals (see `metrics`)."""
        count = len(pairs)
        result = dpo_losses(policy[:count], policy[count:], reference[:count], reference[count:], self.beta)
        dpo_sum, chosen_nll = result.losses.sum(), -policy[:count].sum()
        margins = result.chosen_rewards - result.rejected_rewards
        totals = torch.stack(
            [
                dpo_sum.detach(),
                chosen_nll.detach(),
                torch.tensor(float(chosen_label_count(pairs)), device=policy.device),
                (margins > 0).sum().to(policy.dtype),
                margins.sum(),
                result.chosen_rewards.sum(),
                result.rejected_rewards.sum(),
                torch.tensor(float(count), device=policy.device),
            ]
        ).to(torch.float64)
        return dpo_sum, chosen_nll, totals

    def loss(
        self,
        dpo_sum: torch.Tensor | float,
        chosen_nll: torch.Tensor | float,
        pairs: float,
        chosen_tokens: float,
    ) -> torch.Tensor | float:
        """The objective over pairs whose sums these are: mean DPO loss, plus the weighted SFT term. Linear
        in the sums, so micro-batches normalised by the whole step's counts add up to the step's loss."""
        return dpo_sum / max(pairs, 1) + self.sft_weight * chosen_nll / max(chosen_tokens, 1)

    def metrics(self, totals: torch.Tensor, prefix: str = "") -> dict[str, float]:
        """Loss, reward margin, preference accuracy (chosen rewarded over rejected) and both rewards' means."""
        dpo_sum, chosen_nll, chosen_tokens, correct, margin, chosen, rejected, pairs = totals.tolist()
        pairs = max(pairs, 1.0)
        return {
            f"{prefix}loss": float(self.loss(dpo_sum, chosen_nll, pairs, chosen_tokens)),
            f"{prefix}reward_margin": margin / pairs,
            f"{prefix}reward_accuracy": correct / pairs,
            f"{prefix}chosen_reward": chosen / pairs,
            f"{prefix}rejected_reward": rejected / pairs,
        }


def reference_log_probs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The answers' log-probabilities under the reference: the same model with its adapter disabled."""
    with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
        return answer_log_probs(model, batch)
