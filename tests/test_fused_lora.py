"""FusedLoraLinear computes peft's LoRA layer: same output and gradients, peft's path for everything else."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from services.trainer.fused_lora import FusedLoraLinear, fuse_lora_linear_layers


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(12, 20)
        self.down = torch.nn.Linear(20, 12, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def adapted(fused: bool, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"])
    if fused:
        fuse_lora_linear_layers(config)
    model = get_peft_model(TwoLayers().double(), config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would hide a wrong scale
            torch.nn.init.normal_(parameter)
    return model


def output_and_gradients(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(11)  # the same dropout masks in both models
    out = model(x)
    out.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_layer_gives_peft_output_and_gradients(dropout: float) -> None:
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    plain, fused = adapted(False, dropout), adapted(True, dropout)
    assert {type(m) for m in fused.modules() if isinstance(m, LoraLinear)} == {FusedLoraLinear}
    plain_out, plain_grads = output_and_gradients(plain, x)
    fused_out, fused_grads = output_and_gradients(fused, x)
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-12, atol=1e-12)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-12, atol=1e-12, msg=name)


def test_disabled_or_merged_adapters_take_peft_path() -> None:
    x = torch.randn(3, 12, dtype=torch.float64)
    fused = adapted(True)
    torch.manual_seed(3)
    base = TwoLayers().double()  # the weights `adapted` started from
    with fused.disable_adapter():
        torch.testing.assert_close(fused(x), base(x))
    assert not torch.allclose(fused(x), base(x))
    with_adapter = fused(x).detach()
    merged = fused.merge_and_unload()
    torch.testing.assert_close(merged(x), with_adapter)
