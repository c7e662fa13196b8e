"""Attention for packed rows that stays inside each example instead of masking one big square.

A packed micro-batch is one row of several examples. SDPA with a block-diagonal mask still computes
every query against every key of the row, so attention cost grows with the square of the row; on CPU
that was a quarter of a training step (torch.profiler, 8 examples of ~85 tokens). Running SDPA once
per example, causal and unmasked, does only the diagonal blocks: the same numbers, a fraction of the
work. This is what flash-attention's varlen kernels do on GPU, where transformers' own
`flash_attention_2` already accepts the same `cu_seq_lens_q` boundaries.

Two CPU details, measured with torch.profiler on a Xeon with AMX (docs/architecture.md, training precision):
- the examples are taken apart with `split`, whose backward is one `cat`; a slice's backward fills a
  row-sized zero tensor and adds it into the gradient, once per example;
- bf16 attention runs in fp32: PyTorch's CPU flash-attention backward is 2-3x slower in bf16 than in fp32
  at these lengths (~100-200 tokens), and attention is a small share of the FLOPs, so the upcast costs less
  than it saves. GPUs keep their own dtype.

Registered under its own attention-implementation name with the standard SDPA mask, so batches
without boundaries (padded ones, evaluation) take the ordinary SDPA path unchanged.
"""

from contextlib import nullcontext

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PACKED_ATTENTION = "packed_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    if cu_seq_lens_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds = cu_seq_lens_q.tolist()
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    grouped_heads = query.shape[1] != key.shape[1]
    dtype = query.dtype
    half = dtype in (torch.bfloat16, torch.float16)
    upcast = query.device.type == "cpu" and (half or torch.is_autocast_enabled("cpu"))
    if upcast:
        query, key, value = query.float(), key.float(), value.float()
    # Autocast would cast the fp32 inputs straight back to half precision.
    with torch.autocast("cpu", enabled=False) if upcast else nullcontext():
        outputs = [
            torch.nn.functional.scaled_dot_product_attention(
                example_query,
                example_key,
                example_value,
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=grouped_heads,
            )
            for example_query, example_key, example_value in zip(
                query.split(lengths, dim=2),
                key.split(lengths, dim=2),
                value.split(lengths, dim=2),
                strict=True,
            )
            if example_query.shape[2]
        ]
    # (batch, heads, tokens, head_dim) -> (batch, tokens, heads, head_dim), as the SDPA path returns.
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous().to(dtype), None


def register_packed_attention() -> str:
    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION
