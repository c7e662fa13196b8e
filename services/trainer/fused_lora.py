"""LoRA's up-projection, scaling and add in one matmul.

peft computes a LoRA layer as `result + lora_B(lora_A(x)) * scaling`: the up-projection writes a
(tokens x features) tensor, the scaling reads and writes it again, the add a third time, and backward
repeats the scaling. `torch.addmm(result, h, B^T, alpha=scaling)` does the same sum inside the matmul's
accumulation. On a Xeon with AMX (bf16 frozen weights, 2 threads, three interleaved rounds of 10 steps on
the same examples) a training step ran 1.07x faster (435 vs 407 tokens/s, docs/architecture.md, training
precision); elementwise passes over every adapted layer's output were a sixth of a bf16 step.

The layer is peft's own `lora.Linear` (same weights, state-dict keys, merge and unload), registered through
peft's custom-module mapping; anything but one plain LoRA adapter on the forward (adapters disabled or
merged, mixed adapter batches, DoRA and other variants, a LoRA bias) takes peft's forward unchanged.
"""

from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear


class FusedLoraLinear(LoraLinear):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._single_plain_adapter(args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
        hidden = lora_a(self.lora_dropout[adapter](x))
        fused = torch.addmm(
            result.reshape(-1, result.shape[-1]),
            hidden.reshape(-1, hidden.shape[-1]),
            lora_b.weight.t(),
            alpha=self.scaling[adapter],
        )
        return fused.view(result.shape).to(result.dtype)

    def _single_plain_adapter(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The one active adapter when it is plain LoRA on a plain call, else None (peft's forward handles
        the rest, extra arguments such as mixed-batch adapter names included)."""
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        if self.lora_B[active[0]].bias is not None:
            return None
        return active[0]


def fuse_lora_linear_layers(config: LoraConfig) -> None:
    """Makes `get_peft_model` build FusedLoraLinear for every targeted nn.Linear. Not for 4-bit bases:
    bitsandbytes' Linear4bit is an nn.Linear too and needs peft's own 4-bit layer."""
    config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
